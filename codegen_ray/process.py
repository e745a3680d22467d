"""Run one command under limits: capture its output, time it out, leave nothing behind.

Each run starts in a new session (hence its own process group), wrapped by the
isolation policy. The runner's process is a child subreaper, so descendants that
daemonize (fork, setsid, fork) are reparented to it rather than to init. Once the
main process has ended, everything belonging to the run is killed and reaped. A
process belongs to a run if it is in the run's session or process group, or carries
the run's marker ``CODEGEN_RUN_ID=<uuid>`` in its environment (the one variable added
to the caller's env). A process that both leaves the session and wipes that marker
escapes; the bubblewrap tier (own pid namespace) closes that gap.

``exit_code`` is the raw return code: ``-N`` when signal N ended the main process.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, Field

from codegen_ray.config import Limits
from codegen_ray.errors import CodegenError, ErrorCode, invalid, not_found
from codegen_ray.isolation import IsolationPolicy, RlimitIsolation

log = logging.getLogger(__name__)

OutputCallback = Callable[[str, bytes], Awaitable[None] | None]

RUN_ID_ENV = "CODEGEN_RUN_ID"
_CHUNK = 64 * 1024
# Once the run's processes are dead its pipes close at once; one still open after
# this long is held by a process that escaped the sweep, and is abandoned.
_DRAIN_AFTER_EXIT = 1.0
# Bounds the kill-and-reap sweep (and waiting on a SIGKILLed main process), which
# only takes this long for processes stuck in the kernel.
_SWEEP_SECONDS = 5.0
_PR_SET_CHILD_SUBREAPER = 36


class RunResult(BaseModel):
    stdout: str = Field(description="Standard output, UTF-8 decoded, cut at the output limit.")
    stderr: str = Field(description="Standard error, UTF-8 decoded, cut at the output limit.")
    exit_code: int = Field(description="Exit status; -N when signal N ended the program.")
    duration_ms: int = Field(description="Wall-clock time from start to exit.")
    timed_out: bool = Field(False, description="True if the time limit ended the program.")
    truncated: bool = Field(False, description="True if stdout or stderr was cut.")
    termination: str = Field(
        "exited", description="How it ended: exited, term (SIGTERM) or kill (SIGKILL)."
    )


_subreaper_lock = threading.Lock()
_subreaper_pid = 0


def enable_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; once per process."""
    global _subreaper_pid
    with _subreaper_lock:
        # Tracked by pid because the attribute is not inherited across fork.
        if _subreaper_pid == os.getpid():
            return True
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
        except (OSError, AttributeError) as e:
            log.warning("not a child subreaper; daemonized processes will escape cleanup: %s", e)
            return False
        _subreaper_pid = os.getpid()
        return True


class ProcessRunner:
    """Runs commands for one or many sessions; safe to share between concurrent runs."""

    def __init__(self, isolation: IsolationPolicy | None = None) -> None:
        self.isolation = isolation or RlimitIsolation()
        enable_subreaper()

    async def run(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        limits: Limits,
        stdin: bytes | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (part of the API; None = the limit)
        on_output: OutputCallback | None = None,
    ) -> RunResult:
        """Run ``argv`` to completion or timeout; then kill whatever it left behind.

        ``env`` is the program's whole environment (plus ``CODEGEN_RUN_ID``).
        ``on_output("stdout"|"stderr", chunk)`` streams output as it arrives, up to the
        output limit; if it raises, streaming stops and the run goes on. Cancelling the
        awaiting task kills the run's processes before ``CancelledError`` propagates.
        """
        if isinstance(argv, str | bytes) or not argv:
            raise invalid("argv must be a non-empty list of strings")
        wall = _wall_timeout(timeout, limits)
        cwd = Path(cwd)
        if not cwd.is_dir():
            raise not_found(f"working directory {cwd} does not exist")
        exe = _resolve_executable(argv[0], cwd, env)
        run_id = uuid.uuid4().hex
        job = _Job(run_id, limits.max_output_bytes, on_output)
        job.start(
            self.isolation.wrap_argv([exe, *argv[1:]], limits),
            cwd=cwd,
            env={**env, RUN_ID_ENV: run_id},
            stdin=stdin,
            extra=self.isolation.popen_kwargs(limits),
            name=argv[0],
        )
        try:
            return await job.supervise(wall, limits.kill_grace_seconds)
        finally:
            await job.cleanup()  # a no-op unless cancelled or failed mid-run


class _Capture:
    """One output stream: keeps the head up to the cap, streams it, drops the rest."""

    def __init__(self, name: str, cap: int, on_output: OutputCallback | None) -> None:
        self.name = name
        self.cap = cap
        self.on_output = on_output
        self.buf = bytearray()
        self.truncated = False

    async def feed(self, data: bytes) -> None:
        room = self.cap - len(self.buf)
        if len(data) > room:
            self.truncated = True
            data = data[:room]
        if not data:
            return
        self.buf += data
        if self.on_output is not None:
            try:
                result = self.on_output(self.name, data)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # A broken consumer (e.g. a client gone) must not stall the pipe.
                log.exception("on_output failed; streaming stops for this run")
                self.on_output = None

    def text(self) -> str:
        return self.buf.decode("utf-8", errors="replace")


class _Job:
    """One started run: its main process, pipes, and the cleanup of what it leaves."""

    def __init__(self, run_id: str, cap: int, on_output: OutputCallback | None) -> None:
        self.marker = f"{RUN_ID_ENV}={run_id}".encode()
        self.out = _Capture("stdout", cap, on_output)
        self.err = _Capture("stderr", cap, on_output)
        self.readers: list[asyncio.Task[None]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.pidfd = -1
        self.known: set[int] = set()  # descendants seen before the kill
        self.cleaning: asyncio.Future[None] | None = None

    def start(
        self,
        cmd: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        stdin: bytes | None,
        extra: dict[str, Any],
        name: str,
    ) -> None:
        loop = asyncio.get_running_loop()
        # Our own pipes rather than Popen's file objects: we read them non-blocking on
        # the loop and close them ourselves, with no buffered wrapper to double-close.
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        in_r, in_w = os.pipe2(os.O_CLOEXEC) if stdin is not None else (-1, -1)
        ours: dict[str, Any] = {
            "stdin": in_r if stdin is not None else subprocess.DEVNULL,
            "stdout": out_w,
            "stderr": err_w,
            "cwd": cwd,
            "env": env,
            "close_fds": True,
            # A new session, hence a new process group, without preexec_fn.
            "start_new_session": True,
        }
        self.started = time.monotonic()
        try:
            self.proc = subprocess.Popen(cmd, **{**extra, **ours})
        except (OSError, ValueError) as e:
            for fd in (out_r, err_r, in_w):
                _close(fd)
            reason = e.strerror if isinstance(e, OSError) else str(e)
            msg = f"cannot start {name!r}: {reason}"
            raise CodegenError(ErrorCode.INVALID_ARGUMENT, msg) from None
        finally:
            for fd in (out_w, err_w, in_r):
                _close(fd)
        self.pid = self.proc.pid
        self.ended: float | None = None
        self.exited: asyncio.Future[None] = loop.create_future()
        try:
            self.pidfd = os.pidfd_open(self.pid)
            loop.add_reader(self.pidfd, self._on_exit)
        except (OSError, AttributeError):  # kernel older than 5.3
            self.tasks.append(loop.create_task(self._poll_exit()))
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        self.readers = [
            loop.create_task(_pump(out_r, self.out)),
            loop.create_task(_pump(err_r, self.err)),
        ]
        if stdin is not None:
            os.set_blocking(in_w, False)
            self.tasks.append(loop.create_task(_feed(in_w, stdin)))

    def _on_exit(self) -> None:
        # Only noted here; reaping waits until the group is killed, so the zombie pins
        # the pgid number and it cannot be reused by an unrelated group meanwhile.
        asyncio.get_running_loop().remove_reader(self.pidfd)
        if not self.exited.done():
            self.ended = time.monotonic()
            self.exited.set_result(None)

    async def _poll_exit(self) -> None:
        while True:
            if _has_exited(self.pid):
                break
            await asyncio.sleep(0.01)
        if not self.exited.done():
            self.ended = time.monotonic()
            self.exited.set_result(None)

    async def _wait_exit(self, seconds: float | None) -> bool:
        done, _ = await asyncio.wait({self.exited}, timeout=seconds)
        return bool(done)

    async def supervise(self, wall: float, grace: float) -> RunResult:
        termination = "exited"
        timed_out = not await self._wait_exit(wall)
        if timed_out:
            self._remember_descendants()
            _killpg(self.pid, signal.SIGTERM)
            termination = "term"
            if not await self._wait_exit(grace):
                _killpg(self.pid, signal.SIGKILL)
                termination = "kill"
        await self.cleanup()
        ended = self.ended if self.ended is not None else time.monotonic()
        code = self.proc.returncode
        return RunResult(
            stdout=self.out.text(),
            stderr=self.err.text(),
            exit_code=code if code is not None else -signal.SIGKILL,
            duration_ms=int((ended - self.started) * 1000),
            timed_out=timed_out,
            truncated=self.out.truncated or self.err.truncated,
            termination=termination,
        )

    async def cleanup(self) -> None:
        """Kill and reap everything of the run, finish reading its output.

        Runs once, as its own shielded task: a cancel (even a second one) must not
        leave it half done.
        """
        if self.cleaning is None:
            self.cleaning = asyncio.ensure_future(self._cleanup())
        await asyncio.shield(self.cleaning)

    async def _cleanup(self) -> None:
        self._remember_descendants()
        _killpg(self.pid, signal.SIGKILL)
        if await self._wait_exit(_SWEEP_SECONDS):
            self.proc.wait()  # already exited: reaps without blocking
        await self._sweep()
        if self.readers:
            await asyncio.wait(self.readers, timeout=_DRAIN_AFTER_EXIT)
        for task in (*self.readers, *self.tasks):
            task.cancel()
        await asyncio.gather(*self.readers, *self.tasks, return_exceptions=True)
        if self.pidfd >= 0:
            asyncio.get_running_loop().remove_reader(self.pidfd)
            _close(self.pidfd)

    def _remember_descendants(self) -> None:
        """Note the main process's live tree before killing it.

        A descendant that left the session and has already exited (a zombie its
        parent never reaped) is handed to us when the main process dies; a zombie
        shows no environ, so this snapshot is the only way to know it is ours.
        """
        if self.exited.done():
            return
        todo = [self.pid]
        while todo:
            kids = _children_of(todo.pop())
            self.known.update(kids)
            todo.extend(kids)

    def _belongs(self, pid: int, stat: _Stat) -> bool:
        if pid in self.known or stat.sid == self.pid or stat.pgrp == self.pid:
            return True
        # A zombie's environ reads empty, so a marker check only works on the living.
        return stat.state != "Z" and _has_marker(pid, self.marker)

    async def _sweep(self) -> None:
        """Kill and reap this run's orphans (reparented to us as subreaper).

        Repeats until a round finds nothing: killing a process hands its own children
        to us, to be found in the next round. Only our children that belong to this
        run are touched, never another run's or an unrelated subprocess.
        """
        deadline = time.monotonic() + _SWEEP_SECONDS
        unreaped: set[int] = set()
        while True:
            busy = _killpg(self.pid, signal.SIGKILL)  # group members still exist
            for pid in _children_of_self():
                if pid == self.pid or pid in unreaped:
                    continue
                stat = _stat(pid)
                if stat is not None and self._belongs(pid, stat):
                    _kill(pid, signal.SIGKILL)
                    unreaped.add(pid)
            # Reaped pids are tracked here, not by listing: a children list read while
            # it changes may miss entries. After each reap, one more round looks for
            # the children it handed over.
            reaped = {pid for pid in unreaped if _reap_nowait(pid)}
            unreaped -= reaped
            if not (busy or unreaped or reaped):
                return
            if time.monotonic() > deadline:
                log.warning("run %s: processes survive the sweep", self.marker.decode())
                return
            await asyncio.sleep(0.002)


async def _wait_fd(fd: int, *, writable: bool = False) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    if writable:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await fut
    finally:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _pump(fd: int, sink: _Capture) -> None:
    """Read a pipe to EOF. Past the cap it still reads, so the writer never blocks."""
    try:
        while True:
            try:
                data = os.read(fd, _CHUNK)
            except BlockingIOError:
                await _wait_fd(fd)
                continue
            if not data:
                return
            await sink.feed(data)
            # A flood is always readable: yield, or it would starve the timeout and
            # every other run on this loop.
            await asyncio.sleep(0)
    finally:
        _close(fd)


async def _feed(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            try:
                view = view[os.write(fd, view[:_CHUNK]) :]
            except BlockingIOError:
                await _wait_fd(fd, writable=True)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the program stopped reading its input, as it may
    finally:
        _close(fd)


def _wall_timeout(timeout: float | None, limits: Limits) -> float:
    wall = limits.timeout_seconds if timeout is None else timeout
    if not wall > 0:
        raise invalid(f"timeout must be positive, got {wall}")
    if wall > limits.max_timeout_seconds:
        raise invalid(f"timeout {wall}s exceeds the limit of {limits.max_timeout_seconds}s")
    return wall


def _resolve_executable(name: str, cwd: Path, env: Mapping[str, str]) -> str:
    """The path ``execvp`` would run, checked here so a typo gets a clear error.

    Resolved against the program's own PATH and cwd, not ours.
    """
    if not name:
        raise invalid("program name is empty")
    if "/" in name:
        candidates = [cwd / name]
    else:
        dirs = env.get("PATH", os.defpath).split(os.pathsep)
        candidates = [cwd / (d or ".") / name for d in dirs]
    found = [c for c in candidates if c.is_file()]
    for path in found:
        if os.access(path, os.X_OK):
            return str(path)
    if found:
        raise invalid(f"{name!r} is not executable ({found[0]})")
    where = f"in PATH={env.get('PATH', os.defpath)!r}" if "/" not in name else f"from {cwd}"
    raise not_found(f"executable {name!r} not found {where}")


def _children_of_self() -> list[int]:
    return _children_of(os.getpid())


def _children_of(parent: int) -> list[int]:
    pids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{parent}/task")
    except OSError:
        return pids
    for tid in tids:
        # Orphans are handed to any thread of the subreaper, so read every thread.
        try:
            with open(f"/proc/{parent}/task/{tid}/children", "rb") as f:
                pids.extend(int(p) for p in f.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{parent}/task/{tid}"):
                continue  # the thread (or process) ended meanwhile
            return _children_by_scan(parent)  # kernel without CONFIG_PROC_CHILDREN
        except OSError:
            continue
    return pids


def _children_by_scan(parent: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat.ppid == parent:
                pids.append(int(entry))
    return pids


class _Stat(NamedTuple):
    state: str
    ppid: int
    pgrp: int
    sid: int


def _stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields resume after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return _Stat(fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]))


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def _killpg(pgid: int, sig: int) -> bool:
    """Signal a process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # members run as another uid: not ours to kill
        return False
    return True


def _has_exited(pid: int) -> bool:
    """Whether our child has exited, leaving it unreaped."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _reap_nowait(pid: int) -> bool:
    """Reap our child if it has ended; True once it is gone."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:  # already reaped by someone's waitpid(-1)
        return True


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _close(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
