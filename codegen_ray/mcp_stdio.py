"""``codegen-ray mcp``: MCP over stdio, in front of a gateway reached over gRPC.

With ``--target`` it talks to a running gateway; without, it starts one
(``codegen-ray serve`` on free ports) and stops it on exit. The MCP server is
the gateway's own (``gateway.mcp_server``) over a gRPC ``ToolBackend``
(``gateway.grpc_backend``), so stdio and HTTP clients see the same tools, sessions
and errors. Only JSON-RPC goes to stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click

from codegen_ray.embedded import EmbeddedGateway
from codegen_ray.errors import CodegenError


@contextlib.contextmanager
def embedded_gateway() -> Iterator[str]:
    """Start ``codegen-ray serve`` on free ports; yield its gRPC target; stop it on exit."""
    with tempfile.TemporaryDirectory(prefix="codegen-mcp-") as tmp:
        # stdout belongs to JSON-RPC: the gateway writes everything to our stderr.
        gateway = EmbeddedGateway(Path(tmp), log=sys.stderr.buffer)
        try:
            target = gateway.start()
        except CodegenError as exc:
            raise click.ClickException(exc.message) from None
        try:
            yield target
        finally:
            gateway.stop()


@click.command()
@click.option(
    "--target",
    default=None,
    help="Gateway host:port; default: start an embedded gateway for this process.",
)
def mcp(target: str | None) -> None:
    """Serve MCP over stdio (for desktop MCP clients)."""
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("LOG_LEVEL", "warning").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A client that ends us with SIGTERM still gets the embedded gateway stopped.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    with contextlib.ExitStack() as stack:
        if target is None:
            target = stack.enter_context(embedded_gateway())
        from gateway.grpc_backend import serve_stdio  # the MCP SDK: only when serving

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_stdio(target))


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
