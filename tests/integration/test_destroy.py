"""Destroy leaves no workspace, venv, actor or process behind (looked for, not assumed)."""

from __future__ import annotations

from typing import Any

import pytest

from codegen_ray.client import AsyncClient
from codegen_ray.errors import CodegenError, ErrorCode

SLEEPER = (
    "import os, time\n"
    "with open('sleeper.pid', 'w') as f:\n"
    "    f.write(f'{os.getpid()}\\n')\n"
    "time.sleep(300)\n"
)


async def test_destroy_leaves_nothing(
    client: AsyncClient, new_session: Any, h: Any, gateway: Any
) -> None:
    sid = await new_session()
    session_dir = gateway.base_workspace / sid
    assert (session_dir / "workspace").is_dir()
    assert (session_dir / "venv" / "bin" / "python").exists()
    actor_pid = await h.actor_pid(sid)
    assert h.alive(actor_pid)
    bystander = await new_session()

    started = await client.call(
        "run.python", {"code": SLEEPER, "timeout_seconds": 600}, session_id=sid, run_async=True
    )
    assert started.task_id
    sleeper = int(await h.wait_for_file(sid, "sleeper.pid"))
    assert h.alive(sleeper)

    assert await client.destroy_session(sid) is True

    assert await h.wait_dead([sleeper]) == [], "the session's running program outlived destroy"
    assert await h.wait_dead([actor_pid]) == [], "the SessionActor process outlived destroy"
    assert not session_dir.exists(), f"left behind: {sorted(session_dir.rglob('*'))[:10]}"
    # One read-only driver: the destroyed session's actor is gone, a bystander's is not.
    actors = await h.named_actors_alive(f"session:{sid}", f"session:{bystander}")
    assert actors == {f"session:{sid}": False, f"session:{bystander}": True}
    assert (await h.run(bystander, "print('ok')"))["stdout"] == "ok\n"

    task = await client.get_task(started.task_id)
    assert task["state"] in ("cancelled", "failed")

    for call in (
        client.get_session(sid),
        client.destroy_session(sid),
        client.update_metadata(sid, {"k": "v"}),
        client.call("fs.list", {}, session_id=sid),
        client.call("run.python", {"code": "print(1)"}, session_id=sid),
    ):
        with pytest.raises(CodegenError) as exc_info:
            await call
        assert exc_info.value.code == ErrorCode.NOT_FOUND, exc_info.value
    assert sid not in [s["session_id"] for s in await client.list_sessions()]
    with pytest.raises(CodegenError) as exc_info:
        await anext(client.stream("fs.list", {}, session_id=sid))
    assert exc_info.value.code == ErrorCode.NOT_FOUND
