"""The gateway process: Ray driver, router and the gRPC server with health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from codegen_ray.config import Settings
from codegen_ray.proto import codegen_pb2 as pb
from codegen_ray.proto import codegen_pb2_grpc as pb_grpc
from gateway import driver
from gateway.dispatch import Dispatcher
from gateway.grpc_services import ClusterService, SessionsService, ToolsService
from gateway.router import SessionRouter

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["Sessions"].full_name,
    pb.DESCRIPTOR.services_by_name["Tools"].full_name,
    pb.DESCRIPTOR.services_by_name["Cluster"].full_name,
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
        self._housekeeping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.connection = await asyncio.to_thread(driver.connect, self.settings, self.address)
        self.router = SessionRouter(
            self.settings,
            local_node_id=self.connection.node_id if self.connection.embedded else None,
        )
        await self.router.refresh_nodes()
        self.dispatcher = Dispatcher(self.router)
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
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.grpc_port = self.server.add_insecure_port(f"{self.settings.host}:{self.settings.grpc_port}")
        if not self.grpc_port:
            raise OSError(f"cannot listen on {self.settings.host}:{self.settings.grpc_port}")
        await self.server.start()
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._housekeeping = asyncio.ensure_future(self.router.run_housekeeping())
        log.info("gateway serving gRPC on %s:%d", self.settings.host, self.grpc_port)

    async def wait(self) -> None:
        assert self.server is not None
        await self.server.wait_for_termination()

    async def stop(self, grace: float = 2.0) -> None:
        if self.server is not None:
            await self.server.stop(grace)
        if self.router is not None and self.connection is not None and self.connection.embedded:
            # Embedded Ray dies with us: end every session cleanly so no process outlives it.
            for session_id in list(self.router.sessions):
                with contextlib.suppress(Exception):
                    await self.router.destroy(session_id)
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
