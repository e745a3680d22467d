"""A gateway restarted against the same cluster finds the live sessions and serves them."""

from __future__ import annotations

import signal
from typing import Any

import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["graceful", "crash"])
def test_restarted_gateway_serves_live_sessions(
    local_cluster: Any, sessions: Any, sig: signal.Signals
) -> None:
    with local_cluster.client() as client:
        before = {w: sessions.create(node=w, metadata={"k": w}) for w in ("head", "node-b")}
        for worker_id, info in before.items():
            write = client.call(
                "fs.write",
                {"path": "kept/state.txt", "contents": f"written before {sig.name} on {worker_id}"},
                session_id=info["session_id"],
            )
            assert not write.is_error, write.text
        old_pid = local_cluster.gateway.proc.pid

    local_cluster.restart_gateway(sig)
    assert local_cluster.gateway.proc.pid != old_pid

    with local_cluster.client() as client:
        listed = {s["session_id"]: s for s in client.list_sessions()}
        for worker_id, info in before.items():
            session_id = info["session_id"]
            assert session_id in listed, f"{worker_id}'s session lost: {sorted(listed)}"
            got = client.get_session(session_id)
            assert (got["node_id"], got["worker_id"]) == (info["node_id"], worker_id)
            assert got["metadata"] == {"k": worker_id}
            assert got["created_ms"] == info["created_ms"]

            read = client.call("fs.read", {"path": "kept/state.txt"}, session_id=session_id)
            assert not read.is_error, read.text
            assert read.structured["contents"] == f"written before {sig.name} on {worker_id}"

            run = client.call(
                "run.python",
                {"code": "print(open('kept/state.txt').read().upper())"},
                session_id=session_id,
            )
            assert not run.is_error, run.text
            assert run.structured["exit_code"] == 0, run.structured["stderr"]
            expected = f"written before {sig.name} on {worker_id}".upper()
            assert run.structured["stdout"].strip() == expected

        # The new gateway also routes destroys: the slot frees on the right node.
        victim = before["node-b"]["session_id"]
        sessions.destroy(victim)
        assert victim not in {s["session_id"] for s in client.list_sessions()}
        assert not local_cluster.node("node-b").session_dir(victim).exists()
