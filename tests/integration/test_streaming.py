"""StreamTool: output and progress arrive while the call runs, then the result."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from codegen_ray.client import AsyncClient
from codegen_ray.errors import CodegenError, ErrorCode
from codegen_ray.protoconv import from_struct

# Prints a line, then waits for a file that the test writes only once it has seen that
# line arrive. Without real streaming the program can only time out.
HANDSHAKE = (
    "import os, sys, time\n"
    "print('first', flush=True)\n"
    "deadline = time.monotonic() + 60\n"
    "while not os.path.exists('go') and time.monotonic() < deadline:\n"
    "    time.sleep(0.05)\n"
    "print('saw go' if os.path.exists('go') else 'no go', flush=True)\n"
    "for i in range(3):\n"
    "    print(f'line {i}', flush=True)\n"
    "    print(f'err {i}', file=sys.stderr, flush=True)\n"
    "    time.sleep(0.1)\n"
)


async def test_output_streams_before_the_result(client: AsyncClient, session: str) -> None:
    kinds: list[str] = []
    stdout = b""
    stderr = b""
    result = None
    async for event in client.stream(
        "run.python", {"code": HANDSHAKE, "timeout_seconds": 120}, session_id=session
    ):
        kind = event.WhichOneof("event")
        kinds.append(kind)
        if kind == "output":
            if event.output.stream == "stdout":
                if not stdout:
                    await client.call(
                        "fs.write", {"path": "go", "contents": ""}, session_id=session
                    )
                stdout += event.output.data
            else:
                stderr += event.output.data
        elif kind == "result":
            result = event.result
    assert result is not None, f"no result event; got {kinds}"
    assert kinds[-1] == "result" and kinds.count("result") == 1
    assert kinds.count("output") >= 2
    assert kinds.index("output") < kinds.index("result")
    assert stdout.decode().startswith("first\nsaw go\n"), stdout
    assert stdout.decode().endswith("line 2\n")
    assert b"err 2" in stderr
    structured = from_struct(result.structured)
    assert structured["timed_out"] is False
    assert structured["stdout"] == stdout.decode(), "the streamed output and the result agree"


async def test_install_reports_progress(client: AsyncClient, session: str) -> None:
    kinds: list[str] = []
    messages: list[str] = []
    final = None
    async for event in client.stream("pkg.install", {"packages": ["six"]}, session_id=session):
        kind = event.WhichOneof("event")
        kinds.append(kind)
        if kind == "progress":
            messages.append(event.progress.message)
        if kind == "result":
            final = event.result
    assert final is not None and not final.is_error
    assert kinds.count("progress") >= 1, kinds
    assert kinds.index("progress") < kinds.index("result")
    names = [p["name"] for p in from_struct(final.structured)["installed"]]
    assert "six" in names
    run = await client.call(
        "run.python", {"code": "import six; print(six.PY3)"}, session_id=session
    )
    assert run.structured["stdout"] == "True\n"


async def test_stream_errors_are_statuses(client: AsyncClient, session: str) -> None:
    cases = [
        ("run.python", {"code": "1", "file": "a.py"}, session, ErrorCode.INVALID_ARGUMENT),
        ("fs.read", {"path": "../x"}, session, ErrorCode.PERMISSION_DENIED),
        ("fs.read", {"path": "missing"}, session, ErrorCode.NOT_FOUND),
        ("fs.list", {}, "0" * 32, ErrorCode.NOT_FOUND),
        ("no.such.tool", {}, session, ErrorCode.NOT_FOUND),
    ]
    for tool, args, sid, code in cases:
        with pytest.raises(CodegenError) as exc_info:
            async for _ in client.stream(tool, args, session_id=sid):
                pass
        assert exc_info.value.code == code, (tool, args, exc_info.value)


async def test_client_going_away_kills_the_run(client: AsyncClient, session: str, h: Any) -> None:
    code = (
        "import os, time\n"
        "open('streamer.pid', 'w').write(f'{os.getpid()}\\n')\n"
        "print('started', flush=True)\n"
        "time.sleep(300)\n"
    )
    stream = client.stream("run.python", {"code": code, "timeout_seconds": 600}, session_id=session)
    first = await asyncio.wait_for(anext(stream), timeout=120)
    assert first.WhichOneof("event") == "output"
    pid = int(await h.wait_for_file(session, "streamer.pid"))
    assert h.alive(pid)
    await stream.aclose()  # cancels the RPC
    assert await h.wait_dead([pid], within=30) == [], "the run outlived its cancelled stream"
    assert (await h.run(session, "print('ok')"))["stdout"] == "ok\n"
