"""The gateway's Prometheus metrics. Every tool call passes through the gateway, so it counts.

Each number is kept twice: in a prometheus_client registry of this gateway, served at
``/metrics`` on the HTTP port, and in ``ray.util.metrics``, which Ray's metrics agent
exports (as ``ray_codegen_*``) on the node's metrics export port, where Prometheus'
Ray service discovery and the dashboard's Metrics page find it. The SessionActors record
venv, install and checkpoint times the same way (``actors/metrics.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import prometheus_client as prom
from ray.util import metrics as ray_metrics

from actors.metrics import SECONDS_BUCKETS
from codegen_ray.errors import CodegenError
from codegen_ray.tools import TOOLS
from gateway.router import SessionRouter

log = logging.getLogger(__name__)

CONTENT_TYPE = prom.CONTENT_TYPE_LATEST
REFRESH_SECONDS = 10.0  # Ray's metrics agent reports every 10 s
TOOL_FAILED = "failed"  # the tool ran and reported failure (isError), e.g. a failed install
NODE_LABELS = ("worker_id", "node_id")


class _Counter:
    def __init__(
        self, registry: prom.CollectorRegistry, name: str, doc: str, labels: tuple[str, ...]
    ):
        self.prom = prom.Counter(name, doc, labels, registry=registry)
        self.ray = _ray_metric(ray_metrics.Counter, name, doc, labels)

    def inc(self, **labels: str) -> None:
        self.prom.labels(**labels).inc()
        self.ray.inc(1, labels)


class _Histogram:
    def __init__(
        self, registry: prom.CollectorRegistry, name: str, doc: str, labels: tuple[str, ...]
    ):
        self.prom = prom.Histogram(name, doc, labels, buckets=SECONDS_BUCKETS, registry=registry)
        self.ray = _ray_metric(ray_metrics.Histogram, name, doc, labels, tuple(SECONDS_BUCKETS))

    def observe(self, value: float, **labels: str) -> None:
        self.prom.labels(**labels).observe(value)
        self.ray.observe(value, labels)


class _Gauge:
    """A gauge whose whole set of label values is replaced at each refresh."""

    def __init__(
        self, registry: prom.CollectorRegistry, name: str, doc: str, labels: tuple[str, ...]
    ):
        self.labels = labels
        self.prom = prom.Gauge(name, doc, labels, registry=registry)
        self.ray = _ray_metric(ray_metrics.Gauge, name, doc, labels)
        self._seen: set[tuple[str, ...]] = set()

    def replace(self, values: dict[tuple[str, ...], float]) -> None:
        self.prom.clear()
        for key in self._seen - set(values):
            self.ray.set(0, dict(zip(self.labels, key, strict=True)))  # Ray keeps the last value
        for key, value in values.items():
            self.prom.labels(*key).set(value)
            self.ray.set(value, dict(zip(self.labels, key, strict=True)))
        self._seen = set(values)


@functools.cache
def _ray_metric(
    kind: type, name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...] = ()
) -> Any:
    # One per process: Ray registers a metric by name, however many gateways a test starts.
    if buckets:
        return kind(name, doc, boundaries=list(buckets), tag_keys=labels)
    return kind(name, doc, tag_keys=labels)


@dataclass
class ToolCall:
    """What ``GatewayMetrics.tool_call`` records when its block ends."""

    status: str = "ok"
    counted: bool = True

    def finish(self, failed: bool) -> None:
        self.status = TOOL_FAILED if failed else "ok"

    def skip(self) -> None:
        """Started as a task: counted when the task ends, not now."""
        self.counted = False


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.tool_calls = _Counter(
            r,
            "codegen_tool_calls",
            "Tool calls by tool and status: ok, failed or the error code.",
            ("tool", "status"),
        )
        self.tool_latency = _Histogram(
            r, "codegen_tool_latency_seconds", "Tool call latency seen by the gateway.", ("tool",)
        )
        self.sessions = _Gauge(
            r,
            "codegen_sessions",
            "Sessions per worker node: live, or hibernated (last node).",
            (*NODE_LABELS, "state"),
        )
        self.capacity = _Gauge(
            r, "codegen_capacity_sessions", "MAX_SESSIONS of each worker node.", NODE_LABELS
        )
        self.capacity_used = _Gauge(
            r,
            "codegen_capacity_used_ratio",
            "Live sessions / MAX_SESSIONS per worker node.",
            NODE_LABELS,
        )

    @contextlib.contextmanager
    def tool_call(self, tool: str) -> Iterator[ToolCall]:
        """Count and time one tool call; an escaping CodegenError's code is its status."""
        call = ToolCall()
        began = time.perf_counter()
        try:
            yield call
        except CodegenError as exc:
            call.status = exc.code.value
            raise
        except asyncio.CancelledError:
            call.status = "CANCELLED"
            raise
        except Exception:
            call.status = "INTERNAL"
            raise
        finally:
            if call.counted:
                name = tool if tool in TOOLS else "unknown"  # bounded label values
                self.tool_calls.inc(tool=name, status=call.status)
                self.tool_latency.observe(time.perf_counter() - began, tool=name)

    async def refresh(self, router: SessionRouter) -> None:
        """Session and capacity gauges from the router and its WorkerNodeActors."""
        sessions: dict[tuple[str, ...], float] = {}
        capacity: dict[tuple[str, ...], float] = {}
        used: dict[tuple[str, ...], float] = {}
        for info in await router.worker_infos():
            node = (info["worker_id"], info["node_id"])
            sessions[(*node, "live")] = info["live_sessions"]
            capacity[node] = info["max_sessions"]
            used[node] = info["live_sessions"] / max(1, info["max_sessions"])
        for record in list(router.hibernated.values()):
            key = (str(record.get("worker_id", "")), str(record.get("node_id", "")), "hibernated")
            sessions[key] = sessions.get(key, 0) + 1
        self.sessions.replace(sessions)
        self.capacity.replace(capacity)
        self.capacity_used.replace(used)

    async def render(self, router: SessionRouter) -> bytes:
        """The /metrics body: gauges refreshed now, in Prometheus' text format."""
        try:
            await self.refresh(router)
        except Exception:  # noqa: BLE001 - counters are still worth serving
            log.warning("metrics refresh failed", exc_info=True)
        return prom.generate_latest(self.registry)

    async def run(self, router: SessionRouter) -> None:
        """Keep the gauges Ray exports fresh between scrapes of /metrics."""
        while True:
            try:
                await self.refresh(router)
            except Exception:  # noqa: BLE001 - must never die
                log.warning("metrics refresh failed", exc_info=True)
            await asyncio.sleep(REFRESH_SECONDS)
