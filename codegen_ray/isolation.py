"""Isolation tiers: how a run's command is wrapped before it starts.

Tiers, weakest first: none -> rlimits -> own uid per session -> bubblewrap.
:func:`probe_isolation` picks the strongest one available on this machine, once, at
start. Only the first two exist yet; the others plug in through the same two hooks:
``wrap_argv`` (bwrap puts itself in front of the command) and ``popen_kwargs``
(the own-uid tier passes ``user=``/``group=``/``extra_groups=``). Never ``preexec_fn``:
it is not safe in threaded processes, and Ray workers are threaded.

Rlimits against root: a process running as root keeps CAP_SYS_RESOURCE, so it may
raise its own hard limits again, and the kernel does not enforce RLIMIT_NPROC for it
at all (measured here: 20 children under ``--nproc=5`` all started). Under root the
rlimit tier stops accidents (runaway loops, huge files, fd leaks), not hostile code;
process floods are then contained only by the wall-clock timeout and the runner's
session kill and orphan sweep. The own-uid tier makes NPROC and the hard limits bind.
"""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from codegen_ray.config import Limits

_PRLIMIT_CANDIDATES = ("/usr/bin/prlimit", "/bin/prlimit")

# Sets rlimits, then replaces itself with the command: a launcher instead of
# preexec_fn. Run with -I -S so the caller's PYTHONPATH cannot shadow `resource`.
# Arguments: NAME:SOFT:HARD ... -- COMMAND ARGS...
_LAUNCHER = """\
import os, resource, sys
a = sys.argv[1:]
i = a.index("--")
for spec in a[:i]:
    name, soft, hard = spec.split(":")
    resource.setrlimit(getattr(resource, name), (int(soft), int(hard)))
try:
    os.execvp(a[i + 1], a[i + 1:])
except OSError as e:
    sys.stderr.write(f"codegen launcher: cannot execute {a[i + 1]}: {e.strerror}\\n")
    os._exit(127)
"""


class IsolationPolicy(ABC):
    """How a command is confined. Stateless: one instance serves every run."""

    name: ClassVar[str]

    @abstractmethod
    def wrap_argv(self, argv: Sequence[str], limits: Limits) -> list[str]:
        """The command line that runs ``argv`` confined by ``limits``."""

    def popen_kwargs(self, limits: Limits) -> dict[str, Any]:
        """Extra ``subprocess.Popen`` arguments; the runner's own (pipes, env, cwd,
        session) take precedence over these."""
        return {}


class NoIsolation(IsolationPolicy):
    name = "none"

    def wrap_argv(self, argv: Sequence[str], limits: Limits) -> list[str]:
        return list(argv)


def rlimit_table(limits: Limits) -> list[tuple[str, str, int, int]]:
    """(prlimit option, ``resource`` constant name, soft, hard) for each limit set."""
    return [
        # One second between soft and hard: SIGXCPU first, which a program may catch to
        # save its work; SIGKILL a second later.
        ("cpu", "RLIMIT_CPU", limits.cpu_seconds, limits.cpu_seconds + 1),
        ("nproc", "RLIMIT_NPROC", limits.max_processes, limits.max_processes),
        ("fsize", "RLIMIT_FSIZE", limits.max_file_bytes, limits.max_file_bytes),
        ("nofile", "RLIMIT_NOFILE", limits.max_open_files, limits.max_open_files),
        ("core", "RLIMIT_CORE", 0, 0),
        # Only a generous backstop: a tight RLIMIT_AS breaks threaded code, because
        # every thread reserves a large stack and arena address range up front.
        ("as", "RLIMIT_AS", limits.max_memory_bytes, limits.max_memory_bytes),
    ]


def find_prlimit() -> str | None:
    # Fixed locations, not $PATH: this runs below the CLI, which owns the environment.
    for path in _PRLIMIT_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return None


class RlimitIsolation(IsolationPolicy):
    """Rlimits set between fork and exec of the command, by a launcher that execs it.

    ``prlimit`` (util-linux, a small C program) is preferred: it costs one extra exec,
    far less than starting a Python interpreter. The Python launcher is the fallback.
    """

    name = "rlimits"

    def __init__(self, launcher: Literal["auto", "prlimit", "python"] = "auto") -> None:
        prlimit = find_prlimit() if launcher in ("auto", "prlimit") else None
        if launcher == "prlimit" and prlimit is None:
            raise RuntimeError("prlimit not found in " + ", ".join(_PRLIMIT_CANDIDATES))
        self.prlimit = prlimit
        self.launcher: Literal["prlimit", "python"] = "prlimit" if prlimit else "python"

    def wrap_argv(self, argv: Sequence[str], limits: Limits) -> list[str]:
        table = rlimit_table(limits)
        if self.prlimit is not None:
            opts = [f"--{opt}={soft}:{hard}" for opt, _, soft, hard in table]
            return [self.prlimit, *opts, "--", *argv]
        specs = [f"{const}:{soft}:{hard}" for _, const, soft, hard in table]
        return [sys.executable, "-I", "-S", "-c", _LAUNCHER, *specs, "--", *argv]


def probe_isolation() -> IsolationPolicy:
    """The strongest tier this machine supports.

    Stronger tiers are probed here first once they exist (bubblewrap, then own uid).
    """
    try:
        import resource  # noqa: F401  (absent off POSIX)
    except ImportError:
        return NoIsolation()
    return RlimitIsolation()
