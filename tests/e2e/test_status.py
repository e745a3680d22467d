"""`codegen-ray status --target` lists every worker node with its capacity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

CLI = str(Path(sys.executable).parent / "codegen-ray")


def status(target: str, *args: str) -> str:
    result = subprocess.run(
        [CLI, "status", "--target", target, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_status_lists_worker_nodes_with_capacity(gateway_target: str, e2e_target: str) -> None:
    data = json.loads(status(gateway_target, "--json"))
    nodes = {n["worker_id"]: n for n in data["nodes"]}
    if not e2e_target:
        assert set(nodes) == {"head", "node-b"}
        assert data["embedded"] is False
        assert all(n["max_sessions"] == 2 for n in nodes.values())
    assert len(nodes) >= 1
    assert len({n["node_id"] for n in nodes.values()}) == len(nodes)
    for node in nodes.values():
        assert node["max_sessions"] > 0
        assert 0 <= node["live_sessions"] <= node["max_sessions"]

    table = status(gateway_target)
    assert ("(embedded)" if data["embedded"] else "(cluster)") in table
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.strip()}
    for worker_id, node in nodes.items():
        assert worker_id in rows, table
        assert f"{node['live_sessions']}/{node['max_sessions']}" in rows[worker_id], table
