"""The gateway's HTTP port: MCP over streamable HTTP (/mcp) and legacy SSE (/sse), /health and
Prometheus /metrics.

Served by uvicorn on the gateway's own event loop; the SDK's transports do all the
MCP framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvicorn
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from gateway.mcp_server import McpFront
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.request_limits import JsonRpcBodyLimit

log = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[tuple[dict[str, Any], bool]]]
Metrics = Callable[[], Awaitable[bytes]]  # Prometheus text format
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def transport_security(host: str) -> TransportSecuritySettings:
    """On loopback, refuse other Host/Origin headers (DNS rebinding), as the SDK does."""
    if host not in LOOPBACK:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )


def build_app(
    front: McpFront, health: HealthCheck, *, host: str, metrics: Metrics | None = None
) -> Starlette:
    security = transport_security(host)
    server = front.server
    sessions = StreamableHTTPSessionManager(app=server, security_settings=security)
    sse = SseServerTransport("/messages/", security_settings=security)

    async def handle_sse(request: Request) -> Response:
        async with sse.connect_sse(request.scope, request.receive, request._send) as (read, write):
            await server.run(read, write, server.create_initialization_options())
        return Response()

    async def handle_health(request: Request) -> Response:
        report, ok = await health()
        return JSONResponse(report, status_code=200 if ok else 503)

    async def handle_metrics(request: Request) -> Response:
        assert metrics is not None
        return Response(await metrics(), media_type=METRICS_CONTENT_TYPE)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with sessions.run():
            yield

    return Starlette(
        routes=[
            Route("/mcp", endpoint=JsonRpcBodyLimit(StreamableHTTPASGIApp(sessions))),
            Route("/sse", endpoint=handle_sse, methods=["GET"]),
            Mount("/messages/", app=JsonRpcBodyLimit(sse.handle_post_message)),
            Route("/health", endpoint=handle_health, methods=["GET"]),
            *([Route("/metrics", endpoint=handle_metrics, methods=["GET"])] if metrics else []),
        ],
        lifespan=lifespan,
    )


class _Server(uvicorn.Server):
    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # the gateway owns SIGINT/SIGTERM, not uvicorn


class HttpServer:
    """uvicorn on the running event loop, on a socket bound up front so port 0 works."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError as exc:
            self.socket.close()
            raise OSError(
                f"cannot listen for HTTP on {host}:{port} ({exc.strerror}); "
                "set CODEGEN_HTTP_PORT (0 = any free port)"
            ) from None
        self.port: int = self.socket.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", access_log=False, timeout_graceful_shutdown=2
        )
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self.server.serve(sockets=[self.socket]))
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises why it failed
                raise OSError(f"HTTP server on port {self.port} stopped during startup")
            await asyncio.sleep(0.02)

    async def stop(self, grace: float = 2.0) -> None:
        if self._task is None:
            return
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace + 3)
        except TimeoutError:
            self.server.force_exit = True
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.socket.close()
