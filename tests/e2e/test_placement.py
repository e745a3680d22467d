"""Sessions spread over the worker nodes, each living on the node that holds its workspace."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from codegen_ray.client import Client

pytestmark = pytest.mark.e2e

# Prints where the program runs and its ancestry (the SessionActor's worker, then its raylet).
WHERE = """
import json, os
chain, pid = [], os.getpid()
while pid > 1:
    try:
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        break
    chain.append(pid)
print(json.dumps({"cwd": os.getcwd(), "ancestors": chain, "marker": open("marker.txt").read()}))
"""


def run_python(client: Client, session_id: str, code: str) -> dict[str, Any]:
    response = client.call("run.python", {"code": code}, session_id=session_id)
    assert not response.is_error, response.text
    result = response.structured
    assert result["exit_code"] == 0, result["stderr"]
    return result


def test_sessions_spread_over_nodes_and_live_where_their_workspace_is(
    client: Client, sessions: Any, e2e_target: str, request: pytest.FixtureRequest
) -> None:
    status = client.status()
    nodes = {n["worker_id"]: n for n in status["nodes"]}
    if len(nodes) < 2:
        pytest.skip(f"needs two worker nodes; the gateway reports {sorted(nodes)}")
    free = {w: n["max_sessions"] - n["live_sessions"] for w, n in nodes.items()}
    assert all(f > 0 for f in free.values()), f"a node is already full: {free}"

    created = [sessions.create(metadata={"test": "spread"}) for _ in range(sum(free.values()))]

    per_node = Counter(s["worker_id"] for s in created)
    assert per_node == Counter(free), f"placement {dict(per_node)} does not fill {free}"
    by_worker = {n["node_id"]: w for w, n in nodes.items()}
    for info in created:
        assert by_worker[info["node_id"]] == info["worker_id"], info
        assert client.get_session(info["session_id"])["worker_id"] == info["worker_id"]

    cluster = None if e2e_target else request.getfixturevalue("local_cluster")
    for info in created:
        session_id, worker_id = info["session_id"], info["worker_id"]
        marker = f"{session_id} on {worker_id}\n"
        write = client.call(
            "fs.write", {"path": "marker.txt", "contents": marker}, session_id=session_id
        )
        assert not write.is_error, write.text

        where = json.loads(run_python(client, session_id, WHERE)["stdout"])
        workspace = Path(nodes[worker_id]["base_workspace"]) / session_id / "workspace"
        assert where["cwd"] == str(workspace)
        assert where["marker"] == marker

        if cluster is None:
            continue
        # The workspace is on that node's disk, and on no other node's.
        node = cluster.node(worker_id)
        assert Path(nodes[worker_id]["base_workspace"]) == node.base_workspace
        assert (node.session_dir(session_id) / "workspace" / "marker.txt").read_text() == marker
        for other in cluster.nodes.values():
            if other is not node:
                assert not other.session_dir(session_id).exists()
        # The program descends from this node's raylet (through its SessionActor's worker).
        assert node.raylet_pid() in where["ancestors"], (worker_id, where["ancestors"])
