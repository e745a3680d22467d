"""Session metadata and states, seen through the Sessions service."""

from __future__ import annotations

from typing import Any

from codegen_ray.client import AsyncClient

WAIT_FOR_GO = (
    "import os, time\n"
    "open('started', 'w').write('yes\\n')\n"
    "deadline = time.monotonic() + 120\n"
    "while not os.path.exists('go') and time.monotonic() < deadline:\n"
    "    time.sleep(0.05)\n"
)


async def test_metadata_get_merge_replace(client: AsyncClient, new_session: Any) -> None:
    sid = await new_session(metadata={"owner": "alice", "purpose": "tests"}, env={"GREETING": "hi"})
    info = await client.get_session(sid)
    assert info["metadata"] == {"owner": "alice", "purpose": "tests"}
    assert info["env"] == {"GREETING": "hi"}

    merged = await client.update_metadata(sid, {"purpose": "merged", "extra": "1"})
    assert merged == {"owner": "alice", "purpose": "merged", "extra": "1"}
    assert (await client.get_session(sid))["metadata"] == merged

    replaced = await client.update_metadata(sid, {"only": "this"}, replace=True)
    assert replaced == {"only": "this"}
    assert (await client.get_session(sid))["metadata"] == {"only": "this"}

    cleared = await client.update_metadata(sid, {}, replace=True)
    assert cleared == {}
    assert (await client.get_session(sid))["metadata"] == {}

    run = await client.call(
        "run.python", {"code": "import os; print(os.environ['GREETING'])"}, session_id=sid
    )
    assert run.structured["stdout"] == "hi\n"


async def test_states_ready_busy_idle(client: AsyncClient, new_session: Any, h: Any) -> None:
    sid = await new_session()
    info = await client.get_session(sid)
    assert info["state"] == "ready"
    assert info["created_ms"] > 0
    listed = {s["session_id"]: s for s in await client.list_sessions()}
    assert listed[sid]["state"] == "ready"

    started = await client.call("run.python", {"code": WAIT_FOR_GO}, session_id=sid, run_async=True)
    await h.wait_for_file(sid, "started")

    async def busy() -> bool:
        return (await client.get_session(sid))["state"] == "busy"

    await h.poll(busy, what="state busy during a call")
    await client.call("fs.write", {"path": "go", "contents": ""}, session_id=sid)

    async def finished() -> bool:
        return (await client.get_task(started.task_id))["state"] == "completed"

    await h.poll(finished, what="the call to finish")
    after = await client.get_session(sid)
    assert after["state"] == "idle"
    assert after["last_activity_ms"] >= info["created_ms"]
