"""Ray metrics recorded inside a SessionActor, where the work is done.

``ray.util.metrics`` from any actor reaches the node's metrics agent, which exports them
(as ``ray_codegen_*``) on the node's ``--metrics-export-port`` for Prometheus and the
dashboard's Metrics page.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ray.util.metrics import Histogram

SECONDS_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
BYTES_BUCKETS = [float(1024 * 4**i) for i in range(11)]  # 1 KiB .. 1 GiB


@dataclass(frozen=True)
class SessionMetrics:
    venv_create_seconds: Histogram
    pkg_install_seconds: Histogram
    checkpoint_seconds: Histogram
    checkpoint_bytes: Histogram


def _histogram(name: str, doc: str, buckets: list[float], worker_id: str) -> Histogram:
    metric = Histogram(name, doc, boundaries=buckets, tag_keys=("worker_id",))
    return metric.set_default_tags({"worker_id": worker_id})


@functools.cache
def session_metrics(worker_id: str) -> SessionMetrics:
    """Once per actor process (a session's actor has a worker process of its own)."""
    return SessionMetrics(
        venv_create_seconds=_histogram(
            "codegen_venv_create_seconds", "Making a session's venv.", SECONDS_BUCKETS, worker_id
        ),
        pkg_install_seconds=_histogram(
            "codegen_pkg_install_seconds",
            "pkg.install inside the session.",
            SECONDS_BUCKETS,
            worker_id,
        ),
        checkpoint_seconds=_histogram(
            "codegen_checkpoint_seconds", "Writing a checkpoint.", SECONDS_BUCKETS, worker_id
        ),
        checkpoint_bytes=_histogram(
            "codegen_checkpoint_bytes",
            "Workspace bytes a checkpoint covers.",
            BYTES_BUCKETS,
            worker_id,
        ),
    )


@contextlib.contextmanager
def timed(histogram: Histogram) -> Iterator[None]:
    """Observe the block's duration when it succeeds (a failure is not a duration)."""
    began = time.perf_counter()
    yield
    histogram.observe(time.perf_counter() - began)
