"""Reading and stopping processes through ``/proc`` (Linux): trees, start times, escalation.

Ray daemonizes and renames its processes, so finding "ours" takes their ancestry, their
start times (a recycled pid is never ours) and, for Ray's agents, their open files.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    ppid: int
    state: str
    cmdline: str


def process_table() -> dict[int, Proc]:
    """Every process we can read, by pid."""
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
        table[int(entry.name)] = Proc(int(ppid), state, cmdline.strip())
    return table


def with_descendants(found: set[int], table: dict[int, Proc]) -> set[int]:
    """``found`` and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        if proc.state != "Z":
            children.setdefault(proc.ppid, []).append(pid)
    found = set(found)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def descendants(root: int, table: dict[int, Proc] | None = None) -> set[int]:
    return with_descendants({root}, table or process_table()) - {root}


def stat_field(pid: int, number: int) -> str:
    """Field ``number`` (1-based, as in proc(5)) of /proc/<pid>/stat; '' if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[number - 3]
    except (OSError, IndexError):
        return ""


def start_times(pids: set[int]) -> dict[int, str]:
    """pid -> start time of the live ones (not zombies), to tell a pid's reuse apart."""
    return {
        pid: started
        for pid in pids
        if stat_field(pid, 3) not in ("", "Z", "X") and (started := stat_field(pid, 22))
    }


def has_file_under(pid: int, prefix: str) -> bool:
    """Whether the process holds a file open below ``prefix``."""
    try:
        fds = os.scandir(f"/proc/{pid}/fd")
    except OSError:
        return False
    with fds:
        for fd in fds:
            try:
                if os.readlink(fd.path).startswith(prefix):
                    return True
            except OSError:
                continue
    return False


def stop_processes(known: dict[int, str], grace: float = 5.0) -> str:
    """SIGTERM the still-running processes of ``known`` (from start_times), then SIGKILL.

    Returns which path ran: "none running", "terminated" or "killed".
    """

    def alive() -> set[int]:
        return {pid for pid, started in start_times(set(known)).items() if known[pid] == started}

    left = alive()
    if not left:
        return "none running"
    signal_all(left, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not (left := alive()):
            return "terminated"
        time.sleep(0.1)
    signal_all(left, signal.SIGKILL)
    return "killed"


def signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
