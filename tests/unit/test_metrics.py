"""The gateway's metrics: what a tool call records, and the /metrics text Prometheus reads."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from codegen_ray.errors import CodegenError, ErrorCode
from gateway.metrics import GatewayMetrics


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


class Cluster:
    """What GatewayMetrics reads of the router: its worker nodes' info and hibernated sessions."""

    def __init__(self, infos: list[dict[str, Any]], hibernated: dict[str, dict[str, Any]]):
        self.infos = infos
        self.hibernated = hibernated

    async def worker_infos(self) -> list[dict[str, Any]]:
        return self.infos


def render(metrics: GatewayMetrics, cluster: Cluster) -> dict[Any, float]:
    return samples(asyncio.run(metrics.render(cluster)))  # type: ignore[arg-type]


def test_tool_calls_are_counted_by_tool_and_status() -> None:
    metrics = GatewayMetrics()
    with metrics.tool_call("fs.write"):
        pass
    with metrics.tool_call("pkg.install") as call:
        call.finish(failed=True)
    with pytest.raises(CodegenError), metrics.tool_call("fs.read"):
        raise CodegenError(ErrorCode.NOT_FOUND, "no such file")
    with metrics.tool_call("run.python") as call:
        call.skip()  # started as a task: counted when it ends
    with metrics.tool_call("no.such.tool"):
        pass

    got = render(metrics, Cluster([], {}))
    calls = {
        dict(labels)["tool"] + "/" + dict(labels)["status"]: value
        for (name, labels), value in got.items()
        if name == "codegen_tool_calls_total"
    }
    assert calls == {
        "fs.write/ok": 1,
        "pkg.install/failed": 1,
        "fs.read/NOT_FOUND": 1,
        "unknown/ok": 1,
    }
    assert got[("codegen_tool_latency_seconds_count", frozenset({("tool", "fs.write")}))] == 1


def test_session_and_capacity_gauges_follow_the_cluster() -> None:
    metrics = GatewayMetrics()
    head = {"worker_id": "head", "node_id": "n1", "max_sessions": 4, "live_sessions": 1}
    worker = {"worker_id": "w1", "node_id": "n2", "max_sessions": 2, "live_sessions": 2}
    asleep = {"s9": {"worker_id": "w1", "node_id": "n2", "state": "hibernated"}}

    got = render(metrics, Cluster([head, worker], asleep))
    node = frozenset({("worker_id", "w1"), ("node_id", "n2")})
    assert got[("codegen_sessions", node | {("state", "live")})] == 2
    assert got[("codegen_sessions", node | {("state", "hibernated")})] == 1
    assert got[("codegen_capacity_sessions", node)] == 2
    assert got[("codegen_capacity_used_ratio", node)] == 1.0
    head_node = frozenset({("worker_id", "head"), ("node_id", "n1")})
    assert got[("codegen_capacity_used_ratio", head_node)] == 0.25

    # A node that left is no longer reported.
    got = render(metrics, Cluster([head], {}))
    assert ("codegen_capacity_sessions", node) not in got
    assert ("codegen_sessions", node | {("state", "hibernated")}) not in got
