"""A persistent IPython kernel per session: variables and imports survive between calls.

The kernel is ipykernel, driven by jupyter_client, running the session's own venv
Python in the workspace with the session's env and the isolation policy's rlimits.
Session venvs hold no ipykernel: :class:`KernelRuntime` installs it once per node
(``uv pip install --target``) into a shared directory, and a ``.pth`` hook in the
venv appends that directory to ``sys.path`` only when the kernel's env names it. So
the session's own packages win over the runtime's copies, and ``run.python`` sees
nothing of it.

A kernel's state dies with its process. Whenever that happens (a restart, a crash,
an uninterruptible timeout, a restored session) the next result says so.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import queue
import re
import shutil
import signal
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from pydantic import BaseModel, Field

from codegen_ray.config import GiB, Limits
from codegen_ray.errors import CodegenError, ErrorCode, unavailable
from codegen_ray.isolation import IsolationPolicy
from codegen_ray.process import RUN_ID_ENV, ProcessRunner
from codegen_ray.venv import VenvManager

RUNTIME_ENV = "CODEGEN_KERNEL_RUNTIME"
INSTALL_TIMEOUT_SECONDS = 600.0
START_TIMEOUT_SECONDS = 60.0
_PTH_NAME = "_codegen_kernel_runtime.pth"
# One line: site executes .pth lines that start with "import". Appending keeps the
# venv's own packages ahead of the runtime's.
_PTH_LINE = (
    f"import os, sys; p = os.environ.get({RUNTIME_ENV!r}); "
    "p and p not in sys.path and sys.path.append(p)\n"
)
_INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
_RICH_MIME = ("image/png", "image/jpeg", "image/svg+xml", "text/html", "text/markdown")
_BINARY_MIME = ("image/png", "image/jpeg")
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
# Empty iopub waits are sliced this finely to notice a dead kernel or a lost idle.
_POLL_SLICE = 0.25
_SWEEP_SECONDS = 2.0
STATE_LOST = "variables and imports from earlier calls are gone"
# ``python -m ipykernel_launcher``, with SIGINT unblocked first: the signal mask is
# inherited across exec, and a Ray worker thread that starts the kernel blocks SIGINT,
# which left interrupts (and the time limit's interrupt) pending forever.
_KERNEL_BOOT = (
    "import runpy, signal; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "runpy.run_module('ipykernel_launcher', run_name='__main__', alter_sys=True)"
)


class KernelOutput(BaseModel):
    mime_type: str = Field(description="image/png, image/jpeg, image/svg+xml, text/html, ...")
    data: str = Field(description="Text, or base64 for image/png and image/jpeg.")


class KernelError(BaseModel):
    ename: str = Field(description="Exception class, e.g. NameError.")
    evalue: str = Field(description="Exception message.")
    traceback: list[str] = Field(default_factory=list, description="Traceback lines, plain text.")


class KernelExecuteResult(BaseModel):
    stdout: str = Field("", description="Printed output, cut at the output limit.")
    stderr: str = Field("", description="Standard error and warnings, cut at the output limit.")
    result: str | None = Field(None, description="Plain-text value of the last expression.")
    outputs: list[KernelOutput] = Field(
        default_factory=list, description="Rich outputs: figures, images, HTML, Markdown."
    )
    error: KernelError | None = Field(None, description="The exception the code raised, if any.")
    execution_count: int | None = None
    timed_out: bool = Field(False, description="The time limit interrupted the code.")
    restarted: bool = Field(False, description="A new kernel replaced the old one in this call.")
    state_lost: bool = Field(False, description=f"True when {STATE_LOST}.")
    truncated: bool = Field(False, description="Some output was cut at the output limit.")
    startup_ms: int = Field(0, description="Time spent starting a kernel in this call.")
    duration_ms: int = 0
    message: str = Field("", description="What happened to the kernel, when it matters.")


class KernelRuntime:
    """ipykernel and its dependencies, installed once per node, shared by all kernels."""

    def __init__(
        self,
        root: Path,
        *,
        runner: ProcessRunner,
        venvs: VenvManager,
        requirement: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.runner = runner
        self.venvs = venvs
        # The host's own ipykernel version: one the host's jupyter_client is known to drive.
        self.requirement = requirement or f"ipykernel=={version('ipykernel')}"
        self.run_dir = self.root / "run"
        self._lock = asyncio.Lock()

    def target_for(self, venv_dir: Path) -> Path:
        name = re.sub(r"[^A-Za-z0-9.]+", "-", self.requirement).strip("-")
        return self.root / f"py{_python_version(venv_dir)}-{name}"

    async def prepare(self, venv_dir: Path) -> Path:
        """The runtime directory for this venv's Python, installed if missing; hooks the venv."""
        target = self.target_for(venv_dir)
        if not target.is_dir():
            async with self._lock:
                if not target.is_dir():
                    await self._install(target, venv_dir)
        _write_pth(venv_dir)
        # 0711: a kernel running as a session uid reaches its own subdirectory, lists none.
        self.run_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o711)
        return target

    async def _install(self, target: Path, venv_dir: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Sessions on a node live in different processes (actors): lock across them.
        fd = os.open(self.root / ".install.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if await asyncio.to_thread(_lock_and_look, fd, target):
                return
            tmp = self.root / f".tmp-{uuid.uuid4().hex}"
            argv = [self.venvs.uv_bin, "pip", "install", "--target", str(tmp)]
            argv += ["--python", str(venv_dir / "bin" / "python"), "--compile-bytecode"]
            limits = Limits(
                timeout_seconds=INSTALL_TIMEOUT_SECONDS,
                max_timeout_seconds=INSTALL_TIMEOUT_SECONDS,
                max_file_bytes=64 * GiB,
            )
            result = await self.runner.run(
                [*argv, "--", self.requirement], cwd=self.root, env=self.venvs.env, limits=limits
            )
            if result.exit_code != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                detail = (result.stderr or result.stdout).strip()[-2000:]
                raise unavailable(f"could not install the kernel runtime: {detail}")
            tmp.rename(target)  # atomic: a runtime directory is always complete
        finally:
            os.close(fd)


def _lock_and_look(fd: int, target: Path) -> bool:
    """Take the install lock; True if another process installed ``target`` meanwhile."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    if target.is_dir():
        return True
    for stale in target.parent.glob(".tmp-*"):  # left by an install that died
        shutil.rmtree(stale, ignore_errors=True)
    return False


def _python_version(venv_dir: Path) -> str:
    try:
        text = (venv_dir / "pyvenv.cfg").read_text()
    except OSError:
        raise CodegenError(ErrorCode.FAILED_PRECONDITION, f"no venv at {venv_dir}") from None
    found = re.search(r"^\s*version(?:_info)?\s*=\s*(\d+)\.(\d+)", text, re.MULTILINE)
    if found is None:
        raise CodegenError(ErrorCode.INTERNAL, f"{venv_dir}/pyvenv.cfg names no Python version")
    return f"{found[1]}.{found[2]}"


def _write_pth(venv_dir: Path) -> None:
    for site in (venv_dir / "lib").glob("python*/site-packages"):
        pth = site / _PTH_NAME
        if not pth.is_file() or pth.read_text() != _PTH_LINE:
            pth.write_text(_PTH_LINE)


class _Manager(AsyncKernelManager):
    """A kernel manager with a spec given in code rather than found on disk."""

    def __init__(
        self, spec: KernelSpec, owner: tuple[int, int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._given_spec = spec
        self._owner = owner

    def write_connection_file(self, **kwargs: Any) -> None:
        super().write_connection_file(**kwargs)
        if self._owner is not None:  # the kernel, running as the session uid, reads it
            os.chown(self.connection_file, *self._owner)

    @property
    def kernel_spec(self) -> KernelSpec:
        return self._given_spec


class _Kernel:
    """One started kernel process and its client."""

    def __init__(self, km: _Manager, kc: AsyncKernelClient, marker: str, files: Path) -> None:
        self.km = km
        self.kc = kc
        self.marker = marker
        self.files = files  # <run_dir>/<marker>: log and IPYTHONDIR; the connection file is km's
        self.pid: int = km.provisioner.pid  # type: ignore[union-attr]
        self.busy = False
        self.stopped = False

    def alive(self) -> bool:
        proc = self.km.provisioner.process if self.km.provisioner else None  # type: ignore[attr-defined]
        return not self.stopped and proc is not None and proc.poll() is None

    def exit_code(self) -> int | None:
        proc = self.km.provisioner.process if self.km.provisioner else None  # type: ignore[attr-defined]
        return None if proc is None else proc.poll()

    async def stop(self) -> None:
        """Kill the kernel's process group and whatever it left; idempotent."""
        if self.stopped:
            return
        self.stopped = True
        tree = _descendants(self.pid)
        # Before jupyter_client reaps the kernel: its unreaped pid pins the group id.
        _signal_group(self.pid, signal.SIGKILL)
        self.kc.stop_channels()
        try:
            await self.km.shutdown_kernel(now=True)
        except Exception:  # a kernel that is already gone may fail the polite parts
            pass
        await _sweep(self.pid, tree, self.marker.encode())
        shutil.rmtree(self.files, ignore_errors=True)


class SessionKernel:
    """The persistent kernel of one session, started on first use."""

    def __init__(
        self,
        venv_dir: Path,
        cwd: Path,
        env: dict[str, str],
        runtime: KernelRuntime,
        isolation: IsolationPolicy,
        limits: Limits,
        *,
        start_timeout: float = START_TIMEOUT_SECONDS,
    ) -> None:
        self.venv_dir = Path(venv_dir)
        self.cwd = Path(cwd)
        self.env = dict(env)
        self.runtime = runtime
        self.isolation = isolation
        self.limits = limits
        self.start_timeout = start_timeout
        self._kernel: _Kernel | None = None
        self._lost: str | None = None  # why earlier state is gone, told with the next result
        self._exec_lock = asyncio.Lock()
        self._life_lock = asyncio.Lock()
        self._closed = False

    @property
    def pid(self) -> int | None:
        return self._kernel.pid if self._kernel is not None else None

    async def discard(self, reason: str) -> None:
        """The kernel's state no longer applies (e.g. the session was restored from a
        checkpoint): stop any kernel; the next execute starts one and gives ``reason``."""
        async with self._life_lock:
            await self._stop()
            self._lost = reason

    async def execute(self, code: str, timeout: float) -> KernelExecuteResult:  # noqa: ASYNC109
        if not timeout > 0:
            raise CodegenError(ErrorCode.INVALID_ARGUMENT, f"timeout must be positive: {timeout}")
        async with self._exec_lock:
            began = time.monotonic()
            kernel, startup_ms, lost = await self._ensure_started()
            result = await self._run(kernel, code, timeout)
            result.startup_ms = startup_ms
            if lost is not None:
                result.restarted = result.state_lost = True
                result.message = _join(
                    f"A new kernel was started: {lost}; {STATE_LOST}.", result.message
                )
            result.duration_ms = int((time.monotonic() - began) * 1000)
            return result

    async def interrupt(self) -> bool:
        """Send SIGINT to running code (a KeyboardInterrupt); False if nothing was running."""
        kernel = self._kernel
        if kernel is None or not kernel.busy or not kernel.alive():
            return False
        await kernel.km.interrupt_kernel()
        return True

    async def restart(self) -> int:
        """Replace the kernel with a fresh one; returns the start time in ms."""
        async with self._life_lock:
            self._ensure_open()
            await self._stop()
            began = time.monotonic()
            self._kernel = await self._start()
            self._lost = None
            return int((time.monotonic() - began) * 1000)

    async def shutdown(self) -> None:
        async with self._life_lock:
            self._closed = True
            await self._stop()

    # -- lifecycle --------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise CodegenError(ErrorCode.FAILED_PRECONDITION, "the session's kernel is shut down")

    async def _ensure_started(self) -> tuple[_Kernel, int, str | None]:
        async with self._life_lock:
            self._ensure_open()
            kernel = self._kernel
            if kernel is not None and kernel.alive():
                return kernel, 0, None
            if kernel is not None:
                self._lost = self._lost or _death(kernel)
                await self._stop()
            began = time.monotonic()
            self._kernel = await self._start()
            lost, self._lost = self._lost, None
            return self._kernel, int((time.monotonic() - began) * 1000), lost

    async def _stop(self) -> None:
        kernel, self._kernel = self._kernel, None
        if kernel is not None:
            await kernel.stop()

    async def _start(self) -> _Kernel:
        runtime_dir = await self.runtime.prepare(self.venv_dir)
        marker = f"kernel-{uuid.uuid4().hex[:16]}"  # short: a unix socket path has ~107 bytes
        argv = [
            str(self.venv_dir / "bin" / "python"), "-c", _KERNEL_BOOT,
            "-f", "{connection_file}",
            # History goes to sqlite in IPYTHONDIR on a thread; nothing here reads it.
            "--HistoryManager.enabled=False",
        ]  # fmt: skip
        spec = KernelSpec(
            argv=self.isolation.wrap_argv(argv, self.limits),
            display_name="codegen session",
            language="python",
            interrupt_mode="signal",
        )
        run_dir = self.runtime.run_dir
        files = run_dir / marker
        files.mkdir(mode=0o700)
        owner = self.isolation.owner
        if owner is not None:
            os.chown(files, *owner)
        km = _Manager(spec, owner, kernel_name="codegen-session")
        # Unix sockets in a private directory: no ports to race for, nothing on the
        # network, and they can be bind-mounted into a sandbox with no network.
        km.transport = "ipc"
        km.ip = str(files / "k")
        km.connection_file = str(files / "connection.json")
        env = {
            **self.env,
            RUNTIME_ENV: str(runtime_dir),
            RUN_ID_ENV: marker,
            # Lazy: the inline backend takes effect whenever matplotlib is first imported,
            # even if it was installed after the kernel started.
            "MPLBACKEND": _INLINE_BACKEND,
            "IPYTHONDIR": str(run_dir / marker / "ipython"),
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        }
        log = files / "kernel.log"
        sink = await asyncio.to_thread(open, log, "wb")
        try:
            await km.start_kernel(
                cwd=str(self.cwd),
                env=env,
                stdout=sink,
                stderr=sink,
                **self.isolation.popen_kwargs(self.limits),
            )
        finally:
            sink.close()  # the kernel holds its own copy
        kc = km.client()
        kc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        kernel = _Kernel(km, kc, marker, files)
        try:
            await asyncio.wait_for(_wait_ready(kernel), self.start_timeout)
        except BaseException as exc:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            await kernel.stop()
            if isinstance(exc, asyncio.TimeoutError | RuntimeError):
                reason = exc or "timeout"
                raise unavailable(f"the Python kernel did not start: {reason}\n{tail}") from None
            raise
        return kernel

    # -- one execution ----------------------------------------------------------------------

    async def _run(self, kernel: _Kernel, code: str, seconds: float) -> KernelExecuteResult:
        loop = asyncio.get_running_loop()
        out = _Collector(self.limits.max_output_bytes)
        msg_id = kernel.kc.execute(code, allow_stdin=False, stop_on_error=False)
        kernel.busy = True
        try:
            done = await _drain(kernel, msg_id, out, loop.time() + seconds)
            if done is None:  # the time limit passed
                out.timed_out = True
                await kernel.km.interrupt_kernel()
                grace = max(self.limits.kill_grace_seconds, 0.5)
                done = await _drain(kernel, msg_id, out, loop.time() + grace)
                if done is None:
                    await self._replace(kernel)
                    out.restarted = out.state_lost = True
                    out.message = (
                        f"The code ran past its {seconds:g}s limit and ignored the interrupt, "
                        f"so the kernel was restarted: {STATE_LOST}."
                    )
                else:
                    out.message = f"The code ran past its {seconds:g}s limit and was interrupted."
            if done is False:
                out.state_lost = True
                death = _death(kernel)
                note = f"{death.capitalize()} while this code ran: {STATE_LOST}."
                if not kernel.stopped:  # else restart() or discard() took care of it
                    note += " The next call starts a new kernel."
                out.message = _join(out.message, note)
                out.error = out.error or KernelError(ename="KernelDied", evalue=death)
        except asyncio.CancelledError:
            # The caller gave up (e.g. the client cancelled): stop the code, keep the state.
            if kernel.alive():
                await asyncio.shield(kernel.km.interrupt_kernel())
            raise
        finally:
            kernel.busy = False
        return out.result()

    async def _replace(self, kernel: _Kernel) -> None:
        async with self._life_lock:
            if self._kernel is kernel:
                await self._stop()
                self._kernel = await self._start()


async def _wait_ready(kernel: _Kernel) -> None:
    while True:
        if not kernel.alive():
            raise RuntimeError(f"the kernel process exited with code {kernel.exit_code()}")
        try:
            await kernel.kc.wait_for_ready(timeout=1.0)
            return
        except RuntimeError:
            continue  # wait_for_ready's own timeout: look at the process again


async def _drain(kernel: _Kernel, msg_id: str, out: _Collector, deadline: float) -> bool | None:
    """Read the execution's messages until the kernel is idle again.

    True when it finished, None when the deadline passed first, False when the
    kernel died or was stopped meanwhile.
    """
    try:
        return await _read_until_idle(kernel, msg_id, out, deadline)
    except (Exception, asyncio.CancelledError):
        # Stopping the kernel closes its sockets under us, which cancels the poll;
        # only a cancel of our own task is the caller's.
        task = asyncio.current_task()
        if kernel.stopped and (task is None or task.cancelling() == 0):
            return False
        raise


async def _read_until_idle(
    kernel: _Kernel, msg_id: str, out: _Collector, deadline: float
) -> bool | None:
    loop = asyncio.get_running_loop()
    kc = kernel.kc
    replied = False
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        try:
            msg = await kc.get_iopub_msg(timeout=min(remaining, _POLL_SLICE))
        except queue.Empty:
            if not kernel.alive():
                return False
            # zmq drops iopub messages past its high-water mark; a dropped "idle"
            # must not hang us once the shell reply is in.
            if replied:
                return True
            replied = await _take_reply(kc, msg_id, out)
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue  # left over from an earlier, interrupted execution
        if out.add(msg):
            await _take_reply(kc, msg_id, out, wait=1.0)
            return True


async def _take_reply(kc: AsyncKernelClient, msg_id: str, out: _Collector, wait: float = 0) -> bool:
    deadline = time.monotonic() + wait
    while True:
        try:
            msg = await kc.get_shell_msg(timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Empty:
            return False
        if msg["parent_header"].get("msg_id") == msg_id:
            out.add_reply(msg["content"])
            return True


class _Collector:
    """Turns an execution's iopub messages into a result, within the output limit."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.streams = {"stdout": bytearray(), "stderr": bytearray()}
        self.outputs: list[KernelOutput] = []
        self.output_bytes = 0
        self.value: str | None = None
        self.error: KernelError | None = None
        self.count: int | None = None
        self.truncated = self.timed_out = self.restarted = self.state_lost = False
        self.message = ""

    def add(self, msg: dict[str, Any]) -> bool:
        """Take one iopub message; True once the kernel went idle."""
        kind, content = msg["msg_type"], msg["content"]
        if kind == "status":
            return bool(content.get("execution_state") == "idle")
        if kind == "stream":
            self._append(content.get("name", "stdout"), content.get("text", ""))
        elif kind == "execute_input":
            self.count = content.get("execution_count", self.count)
        elif kind == "error":
            self.error = _error(content, self.cap)
        elif kind in ("execute_result", "display_data", "update_display_data"):
            data = content.get("data", {})
            if kind == "execute_result":
                self.value = _cut(str(data.get("text/plain", "")), self.cap)
                self.count = content.get("execution_count", self.count)
            rich = [m for m in _RICH_MIME if m in data]
            if not rich and kind != "execute_result" and "text/plain" in data:
                rich = ["text/plain"]
            for mime in rich:
                self._output(mime, data[mime])
        return False

    def add_reply(self, content: dict[str, Any]) -> None:
        self.count = content.get("execution_count", self.count)
        if content.get("status") == "error" and self.error is None:
            self.error = _error(content, self.cap)
        elif content.get("status") == "aborted" and self.error is None:
            self.error = KernelError(ename="Aborted", evalue="the kernel did not run this code")
        for page in content.get("payload", []):  # e.g. the help text of `obj?`
            text = page.get("data", {}).get("text/plain")
            if page.get("source") == "page" and text:
                self._output("text/plain", _ANSI.sub("", text))

    def _append(self, name: str, text: str) -> None:
        buf = self.streams.get(name, self.streams["stdout"])
        data = text.encode("utf-8", errors="replace")
        room = self.cap - len(buf)
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        buf += data

    def _output(self, mime: str, data: Any) -> None:
        text = data if isinstance(data, str) else str(data)
        room = self.cap - self.output_bytes
        if len(text) > room:
            self.truncated = True
            if mime in _BINARY_MIME or room <= 0:
                return  # a cut image is no image
            text = text[:room]
        self.output_bytes += len(text)
        self.outputs.append(KernelOutput(mime_type=mime, data=text))

    def result(self) -> KernelExecuteResult:
        note = "Output was cut at the output limit." if self.truncated else ""
        return KernelExecuteResult(
            stdout=self.streams["stdout"].decode("utf-8", errors="replace"),
            stderr=self.streams["stderr"].decode("utf-8", errors="replace"),
            result=self.value,
            outputs=self.outputs,
            error=self.error,
            execution_count=self.count,
            timed_out=self.timed_out,
            restarted=self.restarted,
            state_lost=self.state_lost,
            truncated=self.truncated,
            message=_join(self.message, note),
        )


def _error(content: dict[str, Any], cap: int) -> KernelError:
    lines, used = [], 0
    for line in content.get("traceback", []):
        plain = _ANSI.sub("", str(line))
        used += len(plain)
        if used > cap:
            lines.append("... (traceback cut)")
            break
        lines.append(plain)
    return KernelError(
        ename=str(content.get("ename", "")),
        evalue=_cut(_ANSI.sub("", str(content.get("evalue", ""))), cap),
        traceback=lines,
    )


def _cut(text: str, cap: int) -> str:
    return text if len(text) <= cap else text[:cap]


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _death(kernel: _Kernel) -> str:
    if kernel.stopped:  # we ended it (restart, discard): its exit code is our SIGKILL
        return "the kernel was restarted"
    code = kernel.exit_code()
    if code is not None and code < 0:
        return f"the kernel process was killed by signal {-code}"
    return f"the kernel process exited (code {code})"


# -- leaving nothing behind --------------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for kid in _children(parent):
            if kid not in found:
                found.add(kid)
                todo.append(kid)
    return found


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids.extend(int(p) for p in f.read().split())
        except OSError:
            continue
    return kids


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def _sweep(pid: int, tree: set[int], marker: bytes) -> None:
    """Kill what the kernel started outside its group, and reap what was handed to us.

    The kernel led its own session (jupyter_client starts it with a new session), and
    its group is killed already; processes that left it are found in the snapshot taken
    before the kill, by session id, or by the marker in their environment.
    """
    ours = set(_children(os.getpid()))
    doomed = {p for p in tree | ours if p in tree or _in_session(p, pid) or _has_marker(p, marker)}
    for other in doomed:
        try:
            os.kill(other, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    # Those reparented to us (the runner makes us a subreaper) are ours to reap.
    deadline = time.monotonic() + _SWEEP_SECONDS
    pending = doomed & set(_children(os.getpid()))
    while pending and time.monotonic() < deadline:
        for other in list(pending):
            try:
                if os.waitpid(other, os.WNOHANG)[0] == 0:  # noqa: ASYNC222 (WNOHANG)
                    continue
            except ChildProcessError:
                pass
            pending.discard(other)
        if pending:
            await asyncio.sleep(0.01)


def _in_session(pid: int, sid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return int(fields[3]) == sid or int(fields[2]) == sid


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{RUN_ID_ENV}=".encode() + marker in f.read().split(b"\0")
    except OSError:
        return False
