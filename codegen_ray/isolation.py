"""Isolation tiers: how a run's command is wrapped before it starts.

Tiers, weakest first: none -> rlimits -> own uid per session -> bubblewrap.
:func:`probe_isolation` picks the strongest one available on this machine, once, at
start. Three exist; bubblewrap will plug in through the same two hooks:
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

import fcntl
import hashlib
import logging
import os
import stat
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from codegen_ray.config import IsolationSettings, Limits

log = logging.getLogger(__name__)

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

    @property
    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) the command runs as, when not this process's own."""
        return None


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


class UidIsolation(IsolationPolicy):
    """Runs the command as a uid and gid of its own, with no supplementary groups.

    The rlimit launcher still goes in front (``inner``); under a non-root uid the hard
    limits and RLIMIT_NPROC bind. The uid needs no /etc/passwd entry.
    """

    name = "uid"

    def __init__(self, uid: int, gid: int, inner: IsolationPolicy | None = None) -> None:
        if uid <= 0 or gid <= 0:
            raise ValueError(f"a session uid/gid must not be root: {uid}/{gid}")
        self.uid = uid
        self.gid = gid
        self.inner = inner or RlimitIsolation()

    @property
    def owner(self) -> tuple[int, int] | None:
        return self.uid, self.gid

    def wrap_argv(self, argv: Sequence[str], limits: Limits) -> list[str]:
        return self.inner.wrap_argv(argv, limits)

    def popen_kwargs(self, limits: Limits) -> dict[str, Any]:
        return {
            **self.inner.popen_kwargs(limits),
            "user": self.uid,
            "group": self.gid,
            "extra_groups": [],
        }


class IsolationChoice(NamedTuple):
    """What :func:`probe_isolation` found: the tier, and for the own-uid tier the
    interpreter session venvs are made from (one the session uids can execute)."""

    tier: Literal["none", "rlimits", "uid"]
    python: str
    reason: str = ""  # why a weaker tier than asked for, if so


# The uid probed with; never handed to a session (sessions get base .. base+count-1).
def spare_uid(settings: IsolationSettings) -> int:
    return settings.uid_base + settings.uid_count


_REACH = "import os, sys\nfor p in sys.argv[1:]: os.stat(os.path.join(p, '.'))\n"


def run_as(uid: int, gid: int, argv: Sequence[str], timeout: float = 20.0) -> bool:
    """True if ``argv`` runs to exit status 0 as ``uid``/``gid``."""
    try:
        done = subprocess.run(
            list(argv),
            user=uid,
            group=gid,
            extra_groups=[],
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except (OSError, ValueError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def probe_isolation(
    settings: IsolationSettings | None = None,
    *,
    python: str = sys.executable,
    reachable: Sequence[Path] = (),
) -> IsolationChoice:
    """The strongest tier this machine supports, or the one ``settings.tier`` forces.

    The own-uid tier needs root, a working setuid for a child, an interpreter the
    session uids can execute (``python``, else the system's of the same version), and
    ``reachable`` (the workspace base, the kernel runtime) traversable by them: a
    0700 ancestor such as /root hides them. ``tier="uid"`` raises when it cannot work.
    """
    settings = settings or IsolationSettings()
    try:
        import resource  # noqa: F401  (absent off POSIX)
    except ImportError:
        return IsolationChoice("none", python, "no rlimits off POSIX")
    if settings.tier == "rlimits":
        return IsolationChoice("rlimits", python)
    reason = _uid_tier_blocker(settings, python, reachable)
    if isinstance(reason, tuple):
        return IsolationChoice("uid", reason[0])
    if settings.tier == "uid":
        raise RuntimeError(f"isolation tier 'uid' was asked for but cannot work: {reason}")
    log.warning("isolation: own-uid tier unavailable (%s); using rlimits", reason)
    return IsolationChoice("rlimits", python, reason)


def _uid_tier_blocker(
    settings: IsolationSettings, python: str, reachable: Sequence[Path]
) -> str | tuple[str]:
    """The interpreter to use (a 1-tuple), or why the own-uid tier cannot work."""
    if os.geteuid() != 0:
        return "not running as root"
    uid = spare_uid(settings)
    if not run_as(uid, uid, ["/bin/true"]):
        return f"cannot run a child as uid {uid}"
    paths = [str(_existing(Path(p))) for p in reachable]
    same_version = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in dict.fromkeys((python, same_version)):
        if os.access(candidate, os.X_OK) and run_as(
            uid, uid, [candidate, "-I", "-S", "-c", _REACH, *paths]
        ):
            return (candidate,)
    return (
        f"uid {uid} cannot run {python} (nor {same_version}) or reach {paths}; "
        "is an ancestor directory mode 0700?"
    )


def policy_for(choice: IsolationChoice, owner: tuple[int, int] | None = None) -> IsolationPolicy:
    """The policy running a session's code: ``owner`` is its (uid, gid) on the uid tier."""
    if choice.tier == "none":
        return NoIsolation()
    if choice.tier == "uid":
        if owner is None:
            raise ValueError("the uid tier needs the session's (uid, gid)")
        return UidIsolation(*owner)
    return RlimitIsolation()


class UidLease:
    """A session uid held for the life of this process: an exclusive flock on
    ``<lock_dir>/<uid>``, which the kernel drops when the process dies, so a crashed
    session frees its uid and two live sessions on a node never share one.

    The search starts at a stable hash of the session id, so a uid is rarely reused
    soon (whatever a previous holder left in /tmp stays its own).
    """

    def __init__(self, session_id: str, settings: IsolationSettings) -> None:
        lock_dir = Path(settings.uid_lock_dir)
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = lock_dir.lstat()
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o022:
            raise RuntimeError(f"{lock_dir} must be ours and not group/world-writable")
        start = int(hashlib.sha256(session_id.encode()).hexdigest(), 16) % settings.uid_count
        for i in range(settings.uid_count):
            uid = settings.uid_base + (start + i) % settings.uid_count
            fd = os.open(lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.uid = self.gid = uid
            self._fd = fd
            return
        raise RuntimeError(f"all {settings.uid_count} session uids are taken")

    @property
    def owner(self) -> tuple[int, int]:
        return self.uid, self.gid

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
