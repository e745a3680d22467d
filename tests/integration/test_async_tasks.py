"""Asynchronous calls: a task id at once, then status, result and cancel (which kills)."""

from __future__ import annotations

from typing import Any

import pytest

from codegen_ray.client import AsyncClient
from codegen_ray.errors import CodegenError, ErrorCode

WAIT_FOR_GO = (
    "import os, time\n"
    "deadline = time.monotonic() + 120\n"
    "while not os.path.exists('go') and time.monotonic() < deadline:\n"
    "    time.sleep(0.05)\n"
    "print('went' if os.path.exists('go') else 'gave up')\n"
)
SLEEPER = "import os, time\nopen('task.pid', 'w').write(f'{os.getpid()}\\n')\ntime.sleep(300)\n"


async def test_running_then_completed(client: AsyncClient, session: str, h: Any) -> None:
    started = await client.call(
        "run.python", {"code": WAIT_FOR_GO}, session_id=session, run_async=True
    )
    assert started.task_id and not started.structured
    task = await client.get_task(started.task_id)
    assert task["state"] in ("pending", "running")
    assert task["tool"] == "run.python" and task["session_id"] == session

    with pytest.raises(CodegenError) as exc_info:
        await client.call("task.get_result", {"task_id": started.task_id})
    assert exc_info.value.code == ErrorCode.FAILED_PRECONDITION

    await client.call("fs.write", {"path": "go", "contents": ""}, session_id=session)

    async def finished() -> dict[str, Any] | None:
        t = await client.get_task(started.task_id)
        return t if t["state"] not in ("pending", "running") else None

    done = await h.poll(finished, what="the task to finish")
    assert done["state"] == "completed"
    assert done["finished_ms"] >= done["created_ms"]
    assert done["result"]["structured"]["stdout"] == "went\n", done

    status = await client.call("task.get_status", {"task_id": started.task_id})
    assert status.structured["state"] == "completed"
    result = await client.call("task.get_result", {"task_id": started.task_id})
    assert result.structured["stdout"] == "went\n"
    assert result.structured["exit_code"] == 0


async def test_cancel_kills_the_process(client: AsyncClient, session: str, h: Any) -> None:
    started = await client.call(
        "run.python", {"code": SLEEPER, "timeout_seconds": 600}, session_id=session, run_async=True
    )
    pid = int(await h.wait_for_file(session, "task.pid"))
    assert h.alive(pid)

    task = await client.cancel_task(started.task_id)
    assert task["state"] == "cancelled"
    assert await h.wait_dead([pid], within=30) == [], "cancel left the process running"
    assert (await client.get_task(started.task_id))["state"] == "cancelled"
    with pytest.raises(CodegenError) as exc_info:
        await client.call("task.get_result", {"task_id": started.task_id})
    assert exc_info.value.code == ErrorCode.CANCELLED
    again = await client.cancel_task(started.task_id)  # idempotent
    assert again["state"] == "cancelled"
    assert (await h.run(session, "print('ok')"))["stdout"] == "ok\n"


async def test_task_tools_via_call_tool(client: AsyncClient, session: str, h: Any) -> None:
    started = await client.call(
        "run.python", {"code": SLEEPER, "timeout_seconds": 600}, session_id=session, run_async=True
    )
    pid = int(await h.wait_for_file(session, "task.pid"))
    status = await client.call("task.get_status", {"task_id": started.task_id})
    assert status.structured["state"] == "running"
    assert status.structured["tool"] == "run.python"

    cancelled = await client.call("task.cancel", {"task_id": started.task_id})
    assert cancelled.structured == {
        "task_id": started.task_id,
        "cancelled": True,
        "state": "cancelled",
    }
    assert await h.wait_dead([pid], within=30) == []

    quick = await client.call(
        "fs.write", {"path": "a.txt", "contents": "abc"}, session_id=session, run_async=True
    )

    async def done() -> bool:
        s = await client.call("task.get_status", {"task_id": quick.task_id})
        return s.structured["state"] == "completed"

    await h.poll(done, what="fs.write task")
    result = await client.call("task.get_result", {"task_id": quick.task_id})
    assert result.structured == {"path": "a.txt", "bytes_written": 3}

    with pytest.raises(CodegenError) as exc_info:
        await client.call("task.get_status", {"task_id": "no-such-task"})
    assert exc_info.value.code == ErrorCode.NOT_FOUND


async def test_failed_task_reports_its_error(client: AsyncClient, session: str, h: Any) -> None:
    started = await client.call(
        "fs.read", {"path": "missing.txt"}, session_id=session, run_async=True
    )

    async def finished() -> dict[str, Any] | None:
        t = await client.get_task(started.task_id)
        return t if t["state"] not in ("pending", "running") else None

    task = await h.poll(finished, what="the task to fail")
    assert task["state"] == "failed"
    assert task["result"]["is_error"] is True
    assert task["result"]["error"]["code"] == "NOT_FOUND"
    with pytest.raises(CodegenError) as exc_info:
        await client.call("task.get_result", {"task_id": started.task_id})
    assert exc_info.value.code == ErrorCode.NOT_FOUND
