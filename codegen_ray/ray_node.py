"""Stopping the one Ray node a ``codegen-ray head`` started, and nothing else.

``ray start`` daemonizes and ``ray stop`` kills every Ray on the machine, so the head
finds its own processes instead: each of them names the node's session directory
(``<temp-dir>/session_<time>_<pid>``) on its command line, and Ray's workers are their
descendants. Linux only (reads ``/proc``).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def session_dir(temp_dir: Path) -> Path:
    """The session directory the last ``ray start --temp-dir=temp_dir`` made."""
    return (temp_dir / "session_latest").resolve()


def _table() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, state, command line) of every process we can read."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # The command name in stat may hold spaces and parentheses: split after the last ")".
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        table[int(entry.name)] = (int(ppid), state, cmdline)
    return table


def node_processes(session: Path) -> set[int]:
    """Live processes naming ``session`` on their command line, and their descendants."""
    table = _table()
    marker = f"{session}/"
    found = {
        pid
        for pid, (_, state, cmd) in table.items()
        if state != "Z" and (marker in cmd or _has_file_under(pid, marker))
    }
    return _with_descendants(found, table)


def _has_file_under(pid: int, marker: str) -> bool:
    # Ray's agents rename themselves (ray::DashboardAgent) and are reparented to init,
    # but keep their log files in the session directory open.
    try:
        fds = os.scandir(f"/proc/{pid}/fd")
    except OSError:
        return False
    with fds:
        for fd in fds:
            try:
                if os.readlink(fd.path).startswith(marker):
                    return True
            except OSError:
                continue
    return False


def _with_descendants(found: set[int], table: dict[int, tuple[int, str, str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, state, _) in table.items():
        if state != "Z":
            children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    found.discard(os.getpid())
    return found


def stop_node(session: Path, grace: float = 10.0) -> str:
    """SIGTERM the node's processes, SIGKILL what outlives ``grace``; say which path ran."""
    pids = node_processes(session)
    if not pids:
        return "none running"
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        left = pids & node_processes(session)
        if not left:
            return "terminated"
        time.sleep(0.1)
    _signal(node_processes(session), signal.SIGKILL)
    return "killed"


def start_times(pids: set[int]) -> dict[int, str]:
    """pid -> start time (field 22 of /proc/<pid>/stat), to tell a pid's reuse apart."""
    out = {}
    for pid in pids:
        try:
            out[pid] = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        except (OSError, IndexError):
            pass
    return out


def stop_processes(known: dict[int, str], grace: float = 5.0) -> str:
    """SIGTERM the still-running processes of ``known`` (from start_times), then SIGKILL."""

    def alive() -> set[int]:
        return {pid for pid, started in start_times(set(known)).items() if known[pid] == started}

    left = alive()
    if not left:
        return "none running"
    _signal(left, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not (left := alive()):
            return "terminated"
        time.sleep(0.1)
    _signal(left, signal.SIGKILL)
    return "killed"


def _signal(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
