"""Which workspace files a run created or changed: a cheap stat snapshot taken before and after.

Only sizes and mtimes are compared, never contents. Hidden directories (``.cache``,
``.config``, ... that tools write beneath ``HOME``, which is the workspace) are not
scanned; a workspace too large to scan cheaply gives no snapshot at all.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_ENTRIES = 10_000

Snapshot = dict[str, tuple[int, int]]  # relative path -> (size, mtime_ns)


def take(root: Path, max_entries: int = MAX_ENTRIES) -> Snapshot | None:
    """Regular files beneath ``root``; None when there are more than ``max_entries`` entries."""
    files: Snapshot = {}
    seen = 0
    pending = [(str(root), "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    seen += 1
                    if seen > max_entries:
                        return None
                    rel = prefix + entry.name
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # gone meanwhile, or not ours to look at
                    if stat.S_ISDIR(st.st_mode):
                        if not entry.name.startswith("."):
                            pending.append((entry.path, rel + "/"))
                    elif stat.S_ISREG(st.st_mode):
                        files[rel] = (st.st_size, st.st_mtime_ns)
        except OSError:
            continue
    return files


def changed(before: Snapshot | None, after: Snapshot | None, limit: int) -> list[str]:
    """Paths new in ``after`` or with another size or mtime, sorted, at most ``limit``."""
    if before is None or after is None:
        return []
    paths = sorted(path for path, sig in after.items() if before.get(path) != sig)
    return paths[:limit]
