"""The gateway process: Ray driver, router and the gRPC server with health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from codegen_ray.checkpoint import open_checkpoint_store
from codegen_ray.config import Settings
from codegen_ray.proto import codegen_pb2 as pb
from codegen_ray.proto import codegen_pb2_grpc as pb_grpc
from codegen_ray.proto import mcp_grpc_pb2_grpc
from gateway import driver
from gateway.dispatch import Dispatcher
from gateway.grpc_services import ClusterService, SessionsService, ToolsService
from gateway.http_app import HttpServer, build_app
from gateway.mcp_grpc import SERVICE_NAME as MCP_GRPC_SERVICE
from gateway.mcp_grpc import McpGrpcService
from gateway.mcp_server import DispatcherBackend, McpFront
from gateway.metrics import GatewayMetrics
from gateway.router import SessionRouter

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["Sessions"].full_name,
    pb.DESCRIPTOR.services_by_name["Tools"].full_name,
    pb.DESCRIPTOR.services_by_name["Cluster"].full_name,
    MCP_GRPC_SERVICE,
)


class Gateway:
    def __init__(self, settings: Settings, address: str | None = None) -> None:
        self.settings = settings
        self.address = address
        self.connection: driver.RayConnection | None = None
        self.router: SessionRouter | None = None
        self.dispatcher: Dispatcher | None = None
        self.server: grpc.aio.Server | None = None
        self.grpc_port = 0
        self.http: HttpServer | None = None
        self.http_port = 0
        self._housekeeping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.connection = await asyncio.to_thread(driver.connect, self.settings, self.address)
        store = await asyncio.to_thread(open_checkpoint_store, self.settings)
        self.router = SessionRouter(
            self.settings,
            local_node_id=self.connection.node_id if self.connection.embedded else None,
            store=store,
        )
        await self.router.refresh_nodes()
        await self.router.load_hibernated()
        self.metrics = GatewayMetrics()
        self.dispatcher = Dispatcher(self.router, self.metrics)
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ]
        )
        pb_grpc.add_SessionsServicer_to_server(SessionsService(self.dispatcher), self.server)
        pb_grpc.add_ToolsServicer_to_server(ToolsService(self.dispatcher), self.server)
        pb_grpc.add_ClusterServicer_to_server(
            ClusterService(self.dispatcher, self.connection), self.server
        )
        mcp_grpc_pb2_grpc.add_McpServicer_to_server(
            McpGrpcService(DispatcherBackend(self.dispatcher)), self.server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.grpc_port = self.server.add_insecure_port(
            f"{self.settings.host}:{self.settings.grpc_port}"
        )
        if not self.grpc_port:
            raise OSError(f"cannot listen on {self.settings.host}:{self.settings.grpc_port}")
        await self.server.start()
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._housekeeping = asyncio.ensure_future(
            asyncio.gather(
                self.router.run_housekeeping(),
                self.router.watch_nodes(),
                self.metrics.run(self.router),
            )
        )
        log.info("gateway serving gRPC on %s:%d", self.settings.host, self.grpc_port)
        await self._start_http()

    async def _start_http(self) -> None:
        """MCP over streamable HTTP and SSE, /health and /metrics, on the HTTP port."""
        assert self.dispatcher is not None and self.router is not None
        front = McpFront(DispatcherBackend(self.dispatcher))
        router = self.router
        app = build_app(
            front,
            self.health,
            host=self.settings.host,
            metrics=lambda: self.metrics.render(router),
        )
        self.http = HttpServer(app, self.settings.host, self.settings.http_port)
        await self.http.start()
        self.http_port = self.http.port
        log.info("gateway serving MCP on http://%s:%d/mcp", self.settings.host, self.http_port)

    async def health(self) -> tuple[dict[str, Any], bool]:
        """The /health report, and whether the gateway can take work."""
        assert self.router is not None and self.connection is not None
        report: dict[str, Any] = {
            "gateway": "ok",
            "ray_address": self.connection.address,
            "embedded": self.connection.embedded,
            "dashboard_url": self.connection.dashboard_url,
            "sessions": len(self.router.sessions),
        }
        try:
            nodes = await asyncio.wait_for(self.router.worker_infos(), 5)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            report.update(gateway="degraded", error=f"ray: {type(exc).__name__}: {exc}", nodes=[])
            return report, False
        report["nodes"] = nodes
        report["capacity"] = {
            "max_sessions": sum(n.get("max_sessions", 0) for n in nodes),
            "live_sessions": sum(n.get("live_sessions", 0) for n in nodes),
        }
        if not nodes:
            report.update(gateway="degraded", error="no worker node is reachable")
        return report, bool(nodes)

    async def wait(self) -> None:
        assert self.server is not None
        await self.server.wait_for_termination()

    async def stop(self, grace: float = 2.0) -> None:
        if self.http is not None:
            await self.http.stop(grace)
        if self.server is not None:
            await self.server.stop(grace)
        if self.router is not None and self.connection is not None and self.connection.embedded:
            # Embedded Ray dies with us: end every session cleanly so no process outlives it.
            for session_id in list(self.router.sessions):
                with contextlib.suppress(Exception):
                    await self.router.destroy(session_id)
            # The warm pool too, or its workspaces and venvs stay on disk.
            for worker in list(self.router.workers.values()):
                with contextlib.suppress(Exception):
                    await worker.handle.shutdown_pool.remote()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
