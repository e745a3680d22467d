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
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import click

log = logging.getLogger(__name__)

GATEWAY_START_TIMEOUT = 120.0


@contextlib.contextmanager
def embedded_gateway() -> Iterator[str]:
    """Start ``codegen-ray serve`` on free ports; yield its gRPC target; stop it on exit."""
    with tempfile.TemporaryDirectory(prefix="codegen-mcp-") as tmp:
        port_file = Path(tmp) / "grpc.port"
        env = dict(os.environ)
        env.setdefault("RAY_AUTH_MODE", "disabled")
        env.setdefault("CODEGEN_HTTP_PORT", "0")
        command = [
            sys.executable,
            "-m",
            "codegen_ray.cli",
            "serve",
            "--grpc-port",
            "0",
            "--port-file",
            str(port_file),
        ]
        # stdout belongs to JSON-RPC: the gateway writes everything to our stderr.
        process = subprocess.Popen(
            command, stdout=sys.stderr, stderr=sys.stderr, env=env, start_new_session=True
        )
        try:
            yield f"127.0.0.1:{_wait_for_port(process, port_file)}"
        finally:
            _stop(process)


def _wait_for_port(process: subprocess.Popen[bytes], port_file: Path) -> int:
    deadline = time.monotonic() + GATEWAY_START_TIMEOUT
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        if process.poll() is not None:
            raise click.ClickException(f"the embedded gateway exited with {process.returncode}")
        time.sleep(0.1)
    raise click.ClickException("the embedded gateway did not start in time")


def _stop(process: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    if process.poll() is not None:
        return
    # The gateway ends its sessions, then Ray. It runs in its own process session, so
    # it finishes that even if our client kills our process group meanwhile.
    process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace)
    # Some of Ray's agents and workers outlive ray.shutdown(); all of them are in the
    # process session the gateway was started in, and nothing else is.
    for pid in _session_members(process.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[3]) == sid:  # fields: state, ppid, pgrp, session, ...
            members.append(int(entry.name))
    return members


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
