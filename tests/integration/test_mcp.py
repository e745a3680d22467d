"""The MCP fronts, driven by the official SDK's client over stdio, streamable HTTP and SSE.

stdio is ``codegen-ray mcp --target`` (MCP onto the gateway's gRPC API); HTTP and SSE
are served by the gateway itself. Each connection makes a session of its own, which
outlives the connection by design, so every test destroys the sessions it made.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import struct
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from codegen_ray.client import AsyncClient
from codegen_ray.errors import CodegenError
from codegen_ray.tools import TOOLS

CLI = str(Path(sys.executable).parent / "codegen-ray")
TRANSPORTS = ["stdio", "http", "sse"]
CONTROLLED = re.compile(
    r"^(GRPC_PORT|MAX_SESSIONS|BASE_WORKSPACE|WORKER_ID|COORDINATOR_ADDR|RAY_ADDRESS|CODEGEN_.*)$"
)


def tiny_png() -> bytes:
    """A valid 1x1 red PNG, built here so the bytes are known."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    body = chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


class Mcp:
    """Connections to the gateway's MCP fronts; remembers the sessions they made."""

    def __init__(self, target: str, http_port: int, client: AsyncClient) -> None:
        self.target = target
        self.base = f"http://127.0.0.1:{http_port}"
        self.client = client
        self.sessions: set[str] = set()

    @contextlib.asynccontextmanager
    async def connect(self, transport: str) -> AsyncIterator[ClientSession]:
        async with contextlib.AsyncExitStack() as stack:
            if transport == "stdio":
                env = {k: v for k, v in os.environ.items() if not k.startswith("CODEGEN_")}
                params = StdioServerParameters(
                    command=CLI, args=["mcp", "--target", self.target], env=env
                )
                read, write = await stack.enter_async_context(stdio_client(params))
            elif transport == "http":
                read, write = await stack.enter_async_context(
                    streamable_http_client(f"{self.base}/mcp")
                )
            else:
                read, write = await stack.enter_async_context(sse_client(f"{self.base}/sse"))
            session = await stack.enter_async_context(ClientSession(read, write))
            await session.initialize()
            yield session

    async def session_id(self, mcp: ClientSession) -> str:
        info = await call_ok(mcp, "session.info", {})
        self.sessions.add(info["session_id"])
        return str(info["session_id"])

    async def cleanup(self) -> None:
        for session_id in self.sessions:
            with contextlib.suppress(CodegenError):
                await self.client.destroy_session(session_id)


@pytest.fixture
async def mcp_fronts(gateway: Any) -> AsyncIterator[Mcp]:
    """The shared gateway's MCP fronts (its HTTP port is in ``<port-file>.http``)."""
    http_port = int((gateway.root / "port.http").read_text())
    async with AsyncClient(gateway.target, timeout=120) as client:
        fronts = Mcp(gateway.target, http_port, client)
        yield fronts
        await fronts.cleanup()


def alive(pid: int) -> bool:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def call_ok(mcp: ClientSession, tool: str, args: dict[str, Any], **kw: Any) -> Any:
    result = await mcp.call_tool(tool, args, **kw)
    assert not result.is_error, text_of(result)
    return result.structured_content


async def call_error(mcp: ClientSession, tool: str, args: dict[str, Any]) -> str:
    result = await mcp.call_tool(tool, args)
    assert result.is_error, result
    assert result.structured_content is None
    text = text_of(result)
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_every_tool(transport: str, mcp_fronts: Mcp) -> None:
    async with mcp_fronts.connect(transport) as mcp:
        listed = {t.name: t for t in (await mcp.list_tools()).tools}
        assert set(listed) == set(TOOLS)
        run_schema = listed["run.python"].input_schema
        assert {"code", "file", "module", "session_id", "async"} <= set(run_schema["properties"])
        assert "session_id" not in listed["echo"].input_schema["properties"]
        assert listed["fs.list"].output_schema is not None

        assert await call_ok(mcp, "echo", {"message": "héllo"}) == {"message": "héllo"}
        session_id = await mcp_fronts.session_id(mcp)

        written = await call_ok(mcp, "fs.write", {"path": "d/a.txt", "contents": "one\n"})
        assert written == {"path": "d/a.txt", "bytes_written": 4}
        read = await mcp.call_tool("fs.read", {"path": "d/a.txt"})
        assert text_of(read) == "one\n" and read.structured_content["size_bytes"] == 4
        listing = await call_ok(mcp, "fs.list", {"path": "d"})
        assert [f["path"] for f in listing["files"]] == ["d/a.txt"]

        run = await mcp.call_tool(
            "run.python",
            {
                "code": "import sys; print(open('d/a.txt').read().upper()); "
                "print('warn', file=sys.stderr); sys.exit(3)"
            },
        )
        assert run.structured_content["stdout"] == "ONE\n\n"
        assert run.structured_content["exit_code"] == 3
        assert "[stderr]\nwarn" in text_of(run) and "[exit code 3]" in text_of(run)

        assert await call_ok(mcp, "fs.delete", {"path": "d/a.txt"}) == {"deleted": True}
        assert (await call_ok(mcp, "fs.list", {"path": "d"}))["total_count"] == 0

        # Binary in, an image back: artifact.get and a whole-file base64 fs.read.
        png = tiny_png()
        await call_ok(
            mcp,
            "fs.write",
            {
                "path": "img/dot.png",
                "encoding": "base64",
                "contents": base64.b64encode(png).decode(),
            },
        )
        for tool, args in (
            ("artifact.get", {"path": "img/dot.png"}),
            ("artifact.get", {"artifact_id": "img/dot.png"}),
            ("fs.read", {"path": "img/dot.png", "encoding": "base64"}),
        ):
            result = await mcp.call_tool(tool, args)
            images = [c for c in result.content if isinstance(c, types.ImageContent)]
            assert len(images) == 1, (tool, result.content)
            assert images[0].mime_type == "image/png"
            assert base64.b64decode(images[0].data) == png
        artifact = await call_ok(mcp, "artifact.get", {"path": "img/dot.png"})
        assert artifact["content_type"] == "image/png" and artifact["size_bytes"] == len(png)

        packages = await call_ok(mcp, "pkg.list", {})
        assert isinstance(packages["packages"], list)

        info = await call_ok(mcp, "session.info", {})
        assert info["session_id"] == session_id and info["state"] in ("idle", "ready", "busy")

        # Asynchronous calls and the task tools.
        started = await call_ok(mcp, "run.python", {"code": "print(6 * 7)", "async": True})
        task_id = started["task_id"]

        async def finished() -> bool:
            status = await call_ok(mcp, "task.get_status", {"task_id": task_id})
            return status["state"] == "completed"

        await poll(finished)
        assert (await call_ok(mcp, "task.get_result", {"task_id": task_id}))["stdout"] == "42\n"
        slow = await call_ok(
            mcp, "run.python", {"code": "import time; time.sleep(300)", "async": True}
        )
        cancelled = await call_ok(mcp, "task.cancel", {"task_id": slow["task_id"]})
        assert cancelled["cancelled"] is True and cancelled["state"] == "cancelled"
        text = await call_error(mcp, "task.get_result", {"task_id": slow["task_id"]})
        assert text.startswith("CANCELLED:")

        # Tool failures are isError results that say what to do next.
        text = await call_error(mcp, "run.python", {"code": "1", "file": "x.py"})
        assert text.startswith("INVALID_ARGUMENT:")
        assert "exactly one of code, file or module" in text
        text = await call_error(mcp, "fs.read", {"path": "../../etc/passwd"})
        assert text.startswith("PERMISSION_DENIED:") and "workspace" in text
        text = await call_error(mcp, "fs.read", {"path": "x", "session_id": "no-such-session"})
        assert text.startswith("NOT_FOUND:") and "without session_id" in text
        text = await call_error(mcp, "artifact.get", {})
        assert "exactly one of artifact_id or path" in text
        with pytest.raises(MCPError, match="unknown tool"):
            await mcp.call_tool("no.such.tool", {})
        # ... and the connection still serves.
        assert await call_ok(mcp, "echo", {"message": "still here"}) == {"message": "still here"}


async def test_progress_during_install_and_run(mcp_fronts: Mcp) -> None:
    async with mcp_fronts.connect("http") as mcp:
        await mcp_fronts.session_id(mcp)
        messages: list[str | None] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            messages.append(message)

        install = await mcp.call_tool(
            "pkg.install", {"packages": ["iniconfig"]}, progress_callback=on_progress
        )
        assert not install.is_error, text_of(install)
        assert "iniconfig" in [p["name"] for p in install.structured_content["installed"]]
        assert any(m and m.startswith("installing") for m in messages), messages
        assert len(messages) >= 2, messages
        listed = await call_ok(mcp, "pkg.list", {})
        assert "iniconfig" in [p["name"] for p in listed["packages"]]

        messages.clear()
        run = await mcp.call_tool(
            "run.python",
            {"code": "import time\nfor i in range(3):\n    print('line', i)\n    time.sleep(0.3)"},
            progress_callback=on_progress,
        )
        assert run.structured_content["stdout"] == "line 0\nline 1\nline 2\n"
        assert "line 0" in "".join(m or "" for m in messages)


@pytest.mark.parametrize(("transport", "progress"), [("http", False), ("stdio", True)])
async def test_cancel_kills_the_process(transport: str, progress: bool, mcp_fronts: Mcp) -> None:
    """MCP cancellation, unary (http) and streamed through gRPC (stdio with progress)."""
    code = "import os, time\nopen('pid', 'w').write(f'{os.getpid()}\\n')\ntime.sleep(300)"
    async with mcp_fronts.connect(transport) as mcp:
        await mcp_fronts.session_id(mcp)

        async def ignore(progress: float, total: float | None, message: str | None) -> None:
            pass

        call = asyncio.ensure_future(
            mcp.call_tool(
                "run.python", {"code": code}, progress_callback=ignore if progress else None
            )
        )

        async def pid_written() -> bool:
            result = await mcp.call_tool("fs.read", {"path": "pid"})
            return not result.is_error and text_of(result).endswith("\n")

        await poll(pid_written)
        pid = int((await call_ok(mcp, "fs.read", {"path": "pid"}))["contents"])
        assert alive(pid)
        call.cancel()  # the SDK client sends notifications/cancelled
        with contextlib.suppress(asyncio.CancelledError):
            await call

        async def dead() -> bool:
            return not alive(pid)

        await poll(dead, within=15)
        # The session stays, and the connection keeps working.
        assert (await call_ok(mcp, "run.python", {"code": "print('after')"}))["stdout"] == "after\n"


async def test_reconnect_with_session_id(mcp_fronts: Mcp) -> None:
    async with mcp_fronts.connect("http") as first:
        session_id = await mcp_fronts.session_id(first)
        await call_ok(first, "fs.write", {"path": "notes.txt", "contents": "kept\n"})
    # The connection closed; the session did not. Attach from another transport.
    async with mcp_fronts.connect("sse") as second:
        read = await call_ok(second, "fs.read", {"path": "notes.txt", "session_id": session_id})
        assert read["contents"] == "kept\n"
        info = await call_ok(second, "session.info", {"session_id": session_id})
        assert info["session_id"] == session_id
        # Without session_id this connection has its own, empty session.
        own = await mcp_fronts.session_id(second)
        assert own != session_id
        text = await call_error(second, "fs.read", {"path": "notes.txt"})
        assert text.startswith("NOT_FOUND:")


def processes_with_env(marker: bytes) -> list[int]:
    """Live processes whose environment holds ``marker`` (ours and their descendants)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(int(entry.name)):
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
    return found


async def test_stdio_starts_and_stops_an_embedded_gateway(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not CONTROLLED.match(k)}
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        CODEGEN_STATE_DIR=str(state),
        BASE_WORKSPACE=str(tmp_path / "ws"),
        CODEGEN_RAY__INCLUDE_DASHBOARD="false",
        CODEGEN_RAY__NUM_CPUS="2",
        CODEGEN_SESSION__WARM_POOL_SIZE="0",
    )
    params = StdioServerParameters(command=CLI, args=["mcp"], env=env)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as mcp:
        await mcp.initialize()
        run = await call_ok(mcp, "run.python", {"code": "print(1 + 1)"})
        assert run["stdout"] == "2\n"
        assert (tmp_path / "ws").is_dir()
    # Closing stdin ends the server, which stops its gateway and the gateway's Ray.
    marker = f"CODEGEN_STATE_DIR={state}\0".encode()

    async def all_gone() -> bool:
        return not processes_with_env(marker)

    await poll(all_gone, within=60)


async def test_health(mcp_fronts: Mcp) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{mcp_fronts.base}/health")
    assert response.status_code == 200
    report = response.json()
    assert report["gateway"] == "ok"
    assert report["ray_address"] and report["embedded"] is True
    assert report["nodes"] and report["nodes"][0]["max_sessions"] >= 1
    assert report["capacity"]["max_sessions"] == sum(n["max_sessions"] for n in report["nodes"])
    assert isinstance(report["sessions"], int)
    json.dumps(report)


async def poll(probe: Any, within: float = 60.0) -> None:
    async with asyncio.timeout(within):
        while not await probe():  # noqa: ASYNC110 - the condition lives in another process
            await asyncio.sleep(0.1)
