"""Idle sessions are reaped, busy ones are not; a stopped gateway leaves nothing behind.

Runs against its own small gateway (``reaping_gateway``: two slots, one warm, 2 s idle).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from codegen_ray.client import AsyncClient
from codegen_ray.errors import CodegenError, ErrorCode

IDLE_SECONDS = 2  # conftest.REAPING_ENV


@pytest_asyncio.fixture(scope="module")
async def reaping(reaping_gateway: Any) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(reaping_gateway.target, timeout=300) as c:
        yield c


async def gone(client: AsyncClient, sid: str) -> bool:
    try:
        await client.get_session(sid)
    except CodegenError as exc:
        assert exc.code == ErrorCode.NOT_FOUND, exc
        return True
    return False


async def test_idle_session_is_reaped(reaping: AsyncClient, reaping_gateway: Any, h: Any) -> None:
    sid = (await reaping.create_session())["session_id"]
    await reaping.call("fs.write", {"path": "f.txt", "contents": "x"}, session_id=sid)
    run = await reaping.call(
        "run.python", {"code": "import os; print(os.getppid())"}, session_id=sid
    )
    actor = int(run.structured["stdout"])

    await h.poll(lambda: gone(reaping, sid), within=120, what="the idle session to be reaped")
    assert not (reaping_gateway.base_workspace / sid).exists()
    assert await h.wait_dead([actor]) == []
    with pytest.raises(CodegenError) as exc_info:
        await reaping.call("fs.list", {}, session_id=sid)
    assert exc_info.value.code == ErrorCode.NOT_FOUND
    assert "reaped" in exc_info.value.message


async def test_busy_session_is_not_reaped(reaping: AsyncClient, h: Any) -> None:
    async def create() -> str | None:
        try:
            return str((await reaping.create_session())["session_id"])
        except CodegenError as exc:
            assert exc.code == ErrorCode.RESOURCE_EXHAUSTED, exc
            return None

    sid = await h.poll(create, within=120, what="a free slot")
    run = await reaping.call(
        "run.python",
        {"code": f"import time; time.sleep({IDLE_SECONDS * 3}); print('survived')"},
        session_id=sid,
    )
    assert run.structured["stdout"] == "survived\n"
    assert run.structured["timed_out"] is False
    assert not await gone(reaping, sid), "reaped while busy"
    await h.poll(lambda: gone(reaping, sid), within=120, what="reaping once idle again")


async def test_stopped_gateway_leaves_no_workspace(
    reaping: AsyncClient, reaping_gateway: Any, h: Any
) -> None:
    async def create() -> str | None:
        try:
            return str((await reaping.create_session())["session_id"])
        except CodegenError:
            return None

    sid = await h.poll(create, within=120, what="a free slot")
    # Busy, so the 2 s idle timeout cannot reap it while the pool warms up.
    sleeper = "import os, time\nopen('p', 'w').write(f'{os.getpid()}\\n')\ntime.sleep(300)\n"
    await reaping.call(
        "run.python", {"code": sleeper, "timeout_seconds": 600}, session_id=sid, run_async=True
    )

    async def pid_file() -> str | None:
        try:
            text = (await reaping.call("fs.read", {"path": "p"}, session_id=sid)).structured
        except CodegenError:
            return None
        return text["contents"] if text["contents"].endswith("\n") else None

    pid = int(await h.poll(pid_file, within=120, what="the sleeper's pid"))

    async def warm() -> bool:
        return (await reaping.status())["nodes"][0]["warm_sessions"] == 1

    await h.poll(warm, within=120, what="a warm session in the pool")
    assert len(list(reaping_gateway.base_workspace.iterdir())) == 2
    proc = reaping_gateway.proc
    proc.send_signal(signal.SIGINT)
    code = await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout=120)
    assert code == 0, reaping_gateway.log[-3000:]
    left = sorted(p.name for p in reaping_gateway.base_workspace.iterdir())
    assert left == [], f"session directories outlived the gateway: {left}"
    assert not h.alive(pid), "a running program outlived the gateway"


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


async def test_stopped_gateway_leaves_no_process(reaping_gateway: Any, h: Any) -> None:
    proc = reaping_gateway.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout=120)

    async def all_gone() -> bool:
        return not group_members(proc.pid)

    try:
        await h.poll(all_gone, within=15, what="the gateway's processes to exit")
    finally:
        # The fixture's teardown SIGKILLs the group anyway; report what lingered first.
        print("lingering:", group_members(proc.pid))
