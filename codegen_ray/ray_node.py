"""Stopping the one Ray node we started, and nothing else.

``ray start`` daemonizes and ``ray stop`` kills every Ray on the machine, so we find our
own processes instead: each of them names the node's session directory
(``<temp-dir>/session_<time>_<pid>``) on its command line or holds a file open in it
(Ray's agents rename themselves), and Ray's workers are their descendants.
"""

from __future__ import annotations

import os
from pathlib import Path

from codegen_ray.procs import (
    has_file_under,
    process_table,
    start_times,
    stop_processes,
    with_descendants,
)


def session_dir(temp_dir: Path) -> Path:
    """The session directory the last ``ray start --temp-dir=temp_dir`` made."""
    return (temp_dir / "session_latest").resolve()


def node_processes(session: Path) -> set[int]:
    """Live processes of the node whose session directory is ``session``."""
    table = process_table()
    marker = f"{session}/"
    found = {
        pid
        for pid, proc in table.items()
        if proc.state != "Z" and (marker in proc.cmdline or has_file_under(pid, marker))
    }
    return with_descendants(found, table) - {os.getpid()}


def stop_node(session: Path, grace: float = 10.0) -> str:
    """SIGTERM the node's processes, SIGKILL what outlives ``grace``; say which path ran."""
    return stop_processes(start_times(node_processes(session)), grace)
