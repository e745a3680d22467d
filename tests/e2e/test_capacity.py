"""MAX_SESSIONS is enforced per worker node, with an error an agent can act on."""

from __future__ import annotations

from typing import Any

import pytest

from codegen_ray.client import Client
from codegen_ray.errors import CodegenError, ErrorCode

pytestmark = pytest.mark.e2e


def test_max_sessions_per_node_then_a_freed_slot_is_reused(client: Client, sessions: Any) -> None:
    nodes = {n["worker_id"]: n for n in client.status()["nodes"]}
    if len(nodes) < 2:
        pytest.skip(f"needs two worker nodes; the gateway reports {sorted(nodes)}")
    free = {w: n["max_sessions"] - n["live_sessions"] for w, n in nodes.items()}
    created = [sessions.create() for _ in range(sum(free.values()))]
    target_worker = sorted(nodes)[-1]  # node-b on the local cluster
    assert sum(s["worker_id"] == target_worker for s in created) == free[target_worker]

    for status in client.status()["nodes"]:
        assert status["live_sessions"] == status["max_sessions"], status

    with pytest.raises(CodegenError) as everywhere:
        sessions.create()
    assert everywhere.value.code == ErrorCode.RESOURCE_EXHAUSTED
    assert "full" in everywhere.value.message and "destroy a session" in everywhere.value.message

    with pytest.raises(CodegenError) as on_node:
        sessions.create(node=target_worker)
    assert on_node.value.code == ErrorCode.RESOURCE_EXHAUSTED
    assert "full" in on_node.value.message

    # Nothing half-made: the failed creates left the sessions as they were.
    listed = {s["session_id"] for s in client.list_sessions()}
    assert {s["session_id"] for s in created} <= listed
    assert len(listed) == len(created)

    victim = next(s for s in created if s["worker_id"] == target_worker)
    sessions.destroy(victim["session_id"])
    with pytest.raises(CodegenError) as gone:
        client.get_session(victim["session_id"])
    assert gone.value.code == ErrorCode.NOT_FOUND

    again = sessions.create(node=target_worker)
    assert again["worker_id"] == target_worker
    assert again["session_id"] != victim["session_id"]
    write = client.call(
        "fs.write", {"path": "ok.txt", "contents": "ok"}, session_id=again["session_id"]
    )
    assert not write.is_error, write.text

    with pytest.raises(CodegenError) as full_again:
        sessions.create()
    assert full_again.value.code == ErrorCode.RESOURCE_EXHAUSTED
