"""Bad input gets the right gRPC status and a message an agent can act on."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import pytest_asyncio

from codegen_ray.client import AsyncClient
from codegen_ray.errors import CodegenError, ErrorCode

INVALID = ErrorCode.INVALID_ARGUMENT
DENIED = ErrorCode.PERMISSION_DENIED
NOT_FOUND = ErrorCode.NOT_FOUND
EXHAUSTED = ErrorCode.RESOURCE_EXHAUSTED


@pytest_asyncio.fixture(scope="module")
async def shared(client: AsyncClient) -> Any:
    """One session for the many small cases; each case checks it is still usable."""
    sid = (await client.create_session())["session_id"]
    yield sid
    await client.destroy_session(sid)


async def fails(code: ErrorCode, call: Any) -> CodegenError:
    with pytest.raises(CodegenError) as exc_info:
        await call
    assert exc_info.value.code == code, str(exc_info.value)
    assert exc_info.value.message, "an error must say what went wrong"
    return exc_info.value


async def test_unknown_tool_and_session(client: AsyncClient, session: str) -> None:
    err = await fails(NOT_FOUND, client.call("fs.frobnicate", {}, session_id=session))
    assert "fs.read" in err.message, "the message should list the tools that exist"
    await fails(NOT_FOUND, client.call("nope", {}))
    await fails(NOT_FOUND, client.call("fs.list", {}, session_id="0" * 32))
    await fails(NOT_FOUND, client.call("fs.list", {}, session_id="../../etc"))
    await fails(NOT_FOUND, client.get_session("0" * 32))
    await fails(NOT_FOUND, client.destroy_session("0" * 32))
    await fails(NOT_FOUND, client.update_metadata("0" * 32, {"a": "b"}))
    err = await fails(INVALID, client.call("fs.list", {}))
    assert "session" in err.message
    await fails(NOT_FOUND, client.get_task("0" * 32))
    await fails(NOT_FOUND, client.cancel_task("0" * 32))


@pytest.mark.parametrize(
    ("tool", "args", "mentions"),
    [
        ("fs.read", {}, "path"),
        ("fs.read", {"path": "a.txt", "colour": "blue"}, "colour"),
        ("fs.read", {"path": 7}, "path"),
        ("fs.read", {"path": "a.txt", "offset": -1}, "offset"),
        ("fs.read", {"path": "a.txt", "encoding": "latin-1"}, "encoding"),
        ("fs.write", {"path": "a.txt"}, "contents"),
        ("fs.write", {"path": "a.txt", "contents": ["not", "text"]}, "contents"),
        ("fs.write", {"path": "a.txt", "contents": "@@@", "encoding": "base64"}, "base64"),
        ("fs.list", {"recursive": "maybe"}, "recursive"),
        ("run.python", {}, "code"),
        ("run.python", {"code": "print(1)", "file": "a.py"}, "exactly one"),
        ("run.python", {"code": "print(1)", "module": "this"}, "exactly one"),
        ("run.python", {"code": "print(1)", "timeout_seconds": "soon"}, "timeout_seconds"),
        ("run.python", {"code": "print(1)", "timeout_seconds": -1}, "timeout_seconds"),
        ("run.python", {"code": "print(1)", "timeout_seconds": 10**9}, "timeout"),
        ("run.python", {"code": "print(1)", "args": "--flag"}, "args"),
        ("run.python", {"code": "print(1)", "env": {"A": 1}}, "env"),
        ("pkg.install", {"packages": []}, "package"),
        ("pkg.install", {}, "packages"),
        ("echo", {"message": "hi", "extra": 1}, "extra"),
        ("task.get_status", {}, "task_id"),
    ],
)
async def test_bad_arguments(
    client: AsyncClient, shared: str, tool: str, args: dict[str, Any], mentions: str
) -> None:
    err = await fails(INVALID, client.call(tool, args, session_id=shared))
    assert mentions in err.message, err.message
    # The session is still usable.
    echo = await client.call("fs.list", {}, session_id=shared)
    assert echo.structured["total_count"] >= 0


@pytest.mark.parametrize(
    "path",
    ["..", "../x", "a/../../x", "./../x", "/etc/passwd", "/", "//etc/passwd", "a/b/../../../x"],
)
async def test_paths_that_climb_out(client: AsyncClient, shared: str, path: str) -> None:
    for tool, args in (
        ("fs.read", {"path": path}),
        ("fs.write", {"path": path, "contents": "x"}),
        ("fs.list", {"path": path}),
        ("fs.delete", {"path": path, "recursive": True}),
        ("run.python", {"file": path}),
    ):
        await fails(DENIED, client.call(tool, args, session_id=shared))


async def test_symlink_escape_is_denied(client: AsyncClient, session: str, h: Any) -> None:
    made = await h.run(session, "import os; os.symlink('/etc', 'evil')")
    assert made["exit_code"] == 0, made["stderr"]
    err = await fails(DENIED, client.call("fs.read", {"path": "evil/passwd"}, session_id=session))
    assert "symlink" in err.message.lower() or "link" in err.message.lower()


async def test_size_limits(client: AsyncClient, new_session: Any, h: Any) -> None:
    sid = await new_session(limits={"max_file_bytes": 1024})
    info = await client.get_session(sid)
    assert info["limits"]["max_file_bytes"] == 1024

    big = {"path": "big.txt", "contents": "x" * 2048}
    err = await fails(EXHAUSTED, client.call("fs.write", big, session_id=sid))
    assert "1024" in err.message
    listed = await client.call("fs.list", {}, session_id=sid)
    assert "big.txt" not in [f["path"] for f in listed.structured["files"]], "no partial file"

    await client.call("fs.write", {"path": "log.txt", "contents": "y" * 1000}, session_id=sid)
    await fails(
        EXHAUSTED,
        client.call(
            "fs.write", {"path": "log.txt", "contents": "y" * 100, "append": True}, session_id=sid
        ),
    )
    read = await client.call("fs.read", {"path": "log.txt"}, session_id=sid)
    assert read.structured["contents"] == "y" * 1000, "a refused append must not change the file"

    # A program cannot make a bigger file either (RLIMIT_FSIZE).
    # Python ignores SIGXFSZ, so the write fails with EFBIG (close flushes the buffer).
    run = await h.run(sid, "with open('big.bin', 'wb') as f:\n    f.write(b'z' * 4096)\n")
    assert run["exit_code"] == 1
    assert "File too large" in run["stderr"], run["stderr"]
    size = (await client.call("fs.list", {"pattern": "big.bin"}, session_id=sid)).structured
    assert all(f["size_bytes"] <= 1024 for f in size["files"])


async def test_read_limit(client: AsyncClient, new_session: Any) -> None:
    sid = await new_session(limits={"max_read_bytes": 1024})
    await client.call("fs.write", {"path": "two_kb.txt", "contents": "q" * 2048}, session_id=sid)
    err = await fails(EXHAUSTED, client.call("fs.read", {"path": "two_kb.txt"}, session_id=sid))
    assert "1024" in err.message, err.message
    window = await client.call(
        "fs.read", {"path": "two_kb.txt", "offset": 500, "length": 1000}, session_id=sid
    )
    assert window.structured["contents"] == "q" * 1000
    assert window.structured["size_bytes"] == 2048
    await fails(
        EXHAUSTED, client.call("fs.read", {"path": "two_kb.txt", "length": 1025}, session_id=sid)
    )


async def test_session_limits_cannot_loosen_the_gateway(client: AsyncClient) -> None:
    before = len(await client.list_sessions())
    await fails(INVALID, client.create_session(limits={"max_file_bytes": 10**15}))
    await fails(INVALID, client.create_session(limits={"no_such_limit": 1}))
    await fails(INVALID, client.create_session(limits={"timeout_seconds": -5}))
    assert len(await client.list_sessions()) == before
    status = await client.status()
    assert sum(n["live_sessions"] for n in status["nodes"]) == before, "a refused create leaks"


async def test_binary_file(client: AsyncClient, session: str) -> None:
    data = bytes(range(256)) * 4
    encoded = base64.b64encode(data).decode()
    await client.call(
        "fs.write",
        {"path": "blob.bin", "contents": encoded, "encoding": "base64"},
        session_id=session,
    )
    err = await fails(INVALID, client.call("fs.read", {"path": "blob.bin"}, session_id=session))
    assert "base64" in err.message
    read = await client.call(
        "fs.read", {"path": "blob.bin", "encoding": "base64"}, session_id=session
    )
    assert base64.b64decode(read.structured["contents"]) == data
    assert read.structured["size_bytes"] == len(data)
    assert read.structured["encoding"] == "base64"


async def test_every_node_full(client: AsyncClient, new_session: Any, h: Any) -> None:
    status = await client.status()
    capacity = sum(n["max_sessions"] for n in status["nodes"])
    live = sum(n["live_sessions"] for n in status["nodes"])
    assert capacity - live >= 1, "other tests left sessions behind"
    made = [await new_session() for _ in range(capacity - live)]

    err = await fails(EXHAUSTED, client.create_session())
    assert "destroy a session" in err.message, err.message
    assert "MAX_SESSIONS" in err.message or "full" in err.message
    for sid in made:  # full is not broken: the sessions still work
        assert (await h.run(sid, "print('ok')"))["stdout"] == "ok\n"

    await client.destroy_session(made.pop())
    again = await new_session()
    assert (await h.run(again, "print('ok')"))["stdout"] == "ok\n"
    await fails(EXHAUSTED, client.create_session())
