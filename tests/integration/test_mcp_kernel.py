"""The kernel, checkpoints, resource links and bad input, over MCP against the shared gateway.

Driven by the official SDK's client (streamable HTTP and SSE) and, for malformed
JSON-RPC, by raw HTTP. Every session a test makes is destroyed after it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
import pytest_asyncio
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from codegen_ray.client import AsyncClient
from codegen_ray.errors import CodegenError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INSTALL_SECONDS = 300.0


class Fronts:
    """MCP connections to the shared gateway; remembers the sessions to destroy."""

    def __init__(self, http_port: int, client: AsyncClient) -> None:
        self.base = f"http://127.0.0.1:{http_port}"
        self.client = client
        self.sessions: set[str] = set()

    @contextlib.asynccontextmanager
    async def connect(self, transport: str = "http") -> AsyncIterator[ClientSession]:
        async with contextlib.AsyncExitStack() as stack:
            if transport == "http":
                streams = streamable_http_client(f"{self.base}/mcp")
            else:
                streams = sse_client(f"{self.base}/sse")
            read, write = await stack.enter_async_context(streams)
            mcp = await stack.enter_async_context(ClientSession(read, write))
            await mcp.initialize()
            yield mcp

    async def session_id(self, mcp: ClientSession) -> str:
        """The connection's own session (made on this first call)."""
        info = await call_ok(mcp, "session.info", {})
        self.sessions.add(info["session_id"])
        return str(info["session_id"])


@pytest_asyncio.fixture
async def fronts(gateway: Any, client: AsyncClient) -> AsyncIterator[Fronts]:
    port = int((gateway.root / "port.http").read_text())  # noqa: ASYNC240 - written once, tiny
    made = Fronts(port, client)
    yield made
    for session_id in made.sessions:
        with contextlib.suppress(CodegenError):
            await client.destroy_session(session_id)


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def call_ok(mcp: ClientSession, tool: str, args: dict[str, Any], **kw: Any) -> Any:
    result = await mcp.call_tool(tool, args, **kw)
    assert not result.is_error, text_of(result)
    return result.structured_content


async def poll(probe: Callable[[], Awaitable[Any]], within: float = 60.0) -> Any:
    deadline = time.monotonic() + within
    while not (value := await probe()):
        assert time.monotonic() < deadline, f"gave up after {within}s"
        await asyncio.sleep(0.1)
    return value


async def read_when_written(mcp: ClientSession, path: str, session_id: str) -> str:
    """A file's text once the code wrote its final newline."""

    async def probe() -> str | None:
        result = await mcp.call_tool("fs.read", {"path": path, "session_id": session_id})
        text = "" if result.is_error else text_of(result)
        return text if text.endswith("\n") else None

    return str(await poll(probe))


def alive(pid: int) -> bool:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")


# --- the kernel ------------------------------------------------------------------------


async def test_kernel_state_plots_and_interrupt(fronts: Fronts) -> None:
    async with fronts.connect() as mcp:
        session_id = await fronts.session_id(mcp)
        first = await call_ok(mcp, "kernel.execute", {"code": "x = 21\nimport math"})
        assert first["error"] is None
        second = await mcp.call_tool("kernel.execute", {"code": "math.floor(x * 2.5) - 10"})
        assert second.structured_content["result"] == "42"
        assert text_of(second).startswith("42")

        failed = await mcp.call_tool("kernel.execute", {"code": "1 / 0"})
        assert failed.structured_content["error"]["ename"] == "ZeroDivisionError"
        assert "[error] ZeroDivisionError: division by zero" in text_of(failed)

        install = await mcp.call_tool(
            "pkg.install", {"packages": ["matplotlib"]}, read_timeout_seconds=INSTALL_SECONDS
        )
        assert not install.is_error, text_of(install)
        plot = await mcp.call_tool(
            "kernel.execute",
            {"code": "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"},
            read_timeout_seconds=INSTALL_SECONDS,
        )
        assert not plot.is_error, text_of(plot)
        images = [c for c in plot.content if isinstance(c, types.ImageContent)]
        assert [i.mime_type for i in images] == ["image/png"], plot.content
        assert base64.b64decode(images[0].data).startswith(PNG_SIGNATURE)
        html = await mcp.call_tool(
            "kernel.execute",
            {"code": "from IPython.display import HTML\nHTML('<b>bold</b>')"},
        )
        assert "<b>bold</b>" in [c.text for c in html.content if isinstance(c, types.TextContent)]

        # An endless loop, started asynchronously; it marks the moment it spins. (CPython
        # checks for signals at a loop's backward jump, which `while True: pass` lacks.)
        code = "n = 0\nopen('spinning', 'w').write('yes\\n')\nwhile True:\n    n += 1"
        started = await call_ok(mcp, "kernel.execute", {"code": code, "async": True})
        await read_when_written(mcp, "spinning", session_id)
        interrupted = await call_ok(mcp, "kernel.interrupt", {})
        assert interrupted["interrupted"] is True

        async def finished() -> bool:
            status = await call_ok(mcp, "task.get_status", {"task_id": started["task_id"]})
            return status["state"] == "completed"

        await poll(finished)
        stopped = await call_ok(mcp, "task.get_result", {"task_id": started["task_id"]})
        assert (stopped["error"] or {}).get("ename") == "KeyboardInterrupt", repr(stopped)
        # The kernel is still usable and kept its variables.
        after = await call_ok(mcp, "kernel.execute", {"code": "(x, n > 0)"})
        assert after["result"] == "(21, True)" and after["state_lost"] is False


# --- checkpoints and files ------------------------------------------------------------------


async def test_checkpoint_and_restore_round_trip(fronts: Fronts) -> None:
    async with fronts.connect() as mcp:
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
        assert "session_id" in tools["session.checkpoint"].input_schema["properties"]
        assert "checkpoint_id" in tools["session.restore"].input_schema["required"]

        session_id = await fronts.session_id(mcp)
        await call_ok(mcp, "fs.write", {"path": "notes/plan.txt", "contents": "v1\n"})
        saved = await call_ok(mcp, "session.checkpoint", {"name": "first"})
        assert saved["session_id"] == session_id and saved["name"] == "first"
        assert saved["file_count"] == 1 and saved["total_bytes"] == 3
        await call_ok(mcp, "fs.write", {"path": "notes/plan.txt", "contents": "v2\n"})

        restored = await mcp.call_tool(
            "session.restore", {"checkpoint_id": saved["checkpoint_id"], "new_session": True}
        )
        assert not restored.is_error, text_of(restored)
        copy = restored.structured_content["session_id"]
        fronts.sessions.add(copy)
        assert copy != session_id and copy in text_of(restored)
        read = await call_ok(mcp, "fs.read", {"path": "notes/plan.txt", "session_id": copy})
        assert read["contents"] == "v1\n"
        assert (await call_ok(mcp, "fs.read", {"path": "notes/plan.txt"}))["contents"] == "v2\n"

        # In place: the connection's own session rolls back.
        back = await call_ok(mcp, "session.restore", {"checkpoint_id": saved["checkpoint_id"]})
        assert back["session_id"] == session_id
        assert (await call_ok(mcp, "fs.read", {"path": "notes/plan.txt"}))["contents"] == "v1\n"

        text = text_of(await mcp.call_tool("session.restore", {"checkpoint_id": "nope"}))
        assert text.startswith("NOT_FOUND:")

    # The same tools through codegen.v1 CallTool (the dispatcher both fronts share).
    client = fronts.client
    listed = {t["name"] for t in await client.list_tools()}
    assert {"session.checkpoint", "session.restore"} <= listed
    saved = (await client.call("session.checkpoint", {}, session_id=session_id)).structured
    again = await client.call(
        "session.restore", {"checkpoint_id": saved["checkpoint_id"], "new_session": True}
    )
    fronts.sessions.add(again.structured["session_id"])
    assert again.structured["session_id"] not in (session_id, copy)


async def test_run_python_links_the_files_it_wrote(fronts: Fronts) -> None:
    async with fronts.connect() as mcp:
        await fronts.session_id(mcp)
        await call_ok(mcp, "fs.write", {"path": "untouched.txt", "contents": "same\n"})
        await call_ok(mcp, "fs.write", {"path": "edited.txt", "contents": "old\n"})
        code = (
            "import os\nos.makedirs('out', exist_ok=True)\n"
            "open('out/data.csv', 'w').write('a,b\\n1,2\\n')\n"
            "open('edited.txt', 'a').write('new\\n')\nprint('done')"
        )
        run = await mcp.call_tool("run.python", {"code": code})
        assert not run.is_error, text_of(run)
        assert run.structured_content["changed_files"] == ["edited.txt", "out/data.csv"]
        links = {c.name: c for c in run.content if isinstance(c, types.ResourceLink)}
        assert set(links) == {"edited.txt", "out/data.csv"}
        assert links["out/data.csv"].uri == "artifact://out/data.csv"
        artifact = await call_ok(mcp, "artifact.get", {"artifact_id": links["out/data.csv"].uri})
        assert base64.b64decode(artifact["data"]) == b"a,b\n1,2\n"

        quiet = await call_ok(mcp, "run.python", {"code": "print(open('untouched.txt').read())"})
        assert quiet["changed_files"] == []


# --- bad input --------------------------------------------------------------------------


async def test_malformed_json_rpc_and_huge_arguments(fronts: Fronts) -> None:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=fronts.base, timeout=60) as http:
        for body, code in (
            (b"{not json", -32700),
            (b'{"jsonrpc": "2.0", "id": 1}', None),
            (b"[1, 2]", None),
        ):
            response = await http.post("/mcp", content=body, headers=headers)
            assert 400 <= response.status_code < 500, response.text
            error = response.json()["error"]
            assert isinstance(error["code"], int) and error["message"]
            if code is not None:
                assert error["code"] == code
        big = (
            b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"x": "'
            + (b"x" * 6_000_000)
            + b'"}}'
        )
        response = await http.post("/mcp", content=big, headers=headers)
        assert response.status_code == 413
        assert "request too large" in response.json()["error"]["message"]
        assert (await http.get("/health")).status_code == 200

    async with fronts.connect() as mcp:
        await fronts.session_id(mcp)
        with pytest.raises(MCPError, match="request too large.*append=true"):
            await mcp.call_tool("fs.write", {"path": "big.txt", "contents": "x" * 6_000_000})
        # The connection and its session still serve.
        assert await call_ok(mcp, "echo", {"message": "ok"}) == {"message": "ok"}
        written = await call_ok(mcp, "fs.write", {"path": "big.txt", "contents": "x" * 1000})
        assert written["bytes_written"] == 1000


async def test_client_disconnecting_mid_call_kills_the_process(fronts: Fronts) -> None:
    code = "import os, time\nopen('pid', 'w').write(f'{os.getpid()}\\n')\ntime.sleep(300)"
    async with fronts.connect() as watcher:
        session_id = await fronts.session_id(watcher)
        async with fronts.connect() as doomed:
            call = asyncio.ensure_future(
                doomed.call_tool("run.python", {"code": code, "session_id": session_id})
            )
            pid = int(await read_when_written(watcher, "pid", session_id))
            assert alive(pid)
        # The client closed with the call still running.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(call, timeout=30)

        async def dead() -> bool:
            return not alive(pid)

        await poll(dead, within=30)
        run = await call_ok(watcher, "run.python", {"code": "print('still here')"})
        assert run["stdout"] == "still here\n"


async def test_two_connections_drive_one_session_at_once(fronts: Fronts) -> None:
    async with fronts.connect("http") as one, fronts.connect("sse") as two:
        session_id = await fronts.session_id(one)

        def code(name: str) -> str:
            return (
                f"total = sum(range(200_000))\nopen('{name}.txt', 'w').write(str(total))\n"
                f"print('{name}', total)"
            )

        results = await asyncio.gather(
            *(
                mcp.call_tool("run.python", {"code": code(name), "session_id": session_id})
                for mcp, name in ((one, "one"), (two, "two"), (one, "three"), (two, "four"))
            )
        )
        for result, name in zip(results, ("one", "two", "three", "four"), strict=True):
            assert not result.is_error, text_of(result)
            assert result.structured_content["stdout"] == f"{name} 19999900000\n"
        listing = await call_ok(two, "fs.list", {"session_id": session_id})
        assert {f["path"] for f in listing["files"]} == {
            "one.txt",
            "two.txt",
            "three.txt",
            "four.txt",
        }
