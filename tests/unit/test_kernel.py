"""SessionKernel with real ipykernel processes in a real session venv (uv), no mocks.

The kernel runtime and uv cache live in a persistent test cache (``CODEGEN_TEST_CACHE_DIR``,
default ``~/.cache/codegen-ray-tests``): the first run installs ipykernel and
matplotlib from the index, later runs take them from there.
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from codegen_ray.config import Limits
from codegen_ray.errors import CodegenError
from codegen_ray.kernel import KernelExecuteResult, KernelRuntime, SessionKernel
from codegen_ray.kernel_tools import (
    KernelExecuteArgs,
    kernel_execute,
    kernel_interrupt,
    kernel_restart,
)
from codegen_ray.process import ProcessRunner
from codegen_ray.venv import VenvManager

LIMITS = Limits(kill_grace_seconds=1.0, max_open_files=777)
CACHE = Path(os.environ.get("CODEGEN_TEST_CACHE_DIR", Path.home() / ".cache" / "codegen-ray-tests"))


class Session:
    def __init__(self, root: Path) -> None:
        self.runner = ProcessRunner()
        self.venvs = VenvManager(self.runner, cache_dir=CACHE / "uv-cache")
        self.runtime = KernelRuntime(CACHE / "kernel-runtime", runner=self.runner, venvs=self.venvs)
        self.venv = root / "venv"
        self.workspace = root / "workspace"
        self.tmp = root / "tmp"
        for path in (self.workspace, self.tmp):
            path.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:  # as SessionRuntime.process_env builds it
        return {
            "PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.workspace),
            "TMPDIR": str(self.tmp),
            "VIRTUAL_ENV": str(self.venv),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "MPLBACKEND": "Agg",
            "SESSION_FLAVOUR": "kernel-test",
        }

    def kernel(self, limits: Limits = LIMITS) -> SessionKernel:
        return SessionKernel(
            self.venv, self.workspace, self.env(), self.runtime, self.runner.isolation, limits
        )


@pytest_asyncio.fixture(scope="module")
async def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    s = Session(tmp_path_factory.mktemp("kernel-session"))
    await s.venvs.create(s.venv)
    return s


@pytest_asyncio.fixture(scope="module")
async def shared(session: Session) -> AsyncIterator[SessionKernel]:
    """One kernel for the tests that leave it healthy."""
    kernel = session.kernel()
    yield kernel
    await kernel.shutdown()


@pytest_asyncio.fixture
async def fresh(session: Session) -> AsyncIterator[SessionKernel]:
    """A kernel of its own, for tests that break it."""
    kernel = session.kernel()
    yield kernel
    await kernel.shutdown()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


async def test_state_persists_and_streams_are_separate(shared: SessionKernel) -> None:
    first = await shared.execute(
        "x = 20\nimport sys\nprint('out')\nprint('err', file=sys.stderr)", 30
    )
    assert first.error is None and first.state_lost is False
    assert first.stdout == "out\n" and first.stderr == "err\n" and first.result is None
    second = await shared.execute("x * 2 + 2", 10)
    assert second.result == "42" and second.execution_count == first.execution_count + 1
    assert second.startup_ms == 0 and second.restarted is False


async def test_runs_in_the_workspace_with_the_session_env_and_rlimits(
    session: Session, shared: SessionKernel
) -> None:
    code = (
        "import os, resource, sys\n"
        "print(os.getcwd(), os.environ['SESSION_FLAVOUR'], sys.prefix)\n"
        "resource.getrlimit(resource.RLIMIT_NOFILE)"
    )
    result = await shared.execute(code, 10)
    assert result.stdout.split() == [str(session.workspace), "kernel-test", str(session.venv)]
    assert result.result == "(777, 777)"
    assert resource.getrlimit(resource.RLIMIT_NOFILE) != (777, 777)  # ours is untouched


async def test_exception_reports_and_kernel_stays_usable(shared: SessionKernel) -> None:
    result = await shared.execute("y = 5\nraise ValueError('bad value')", 10)
    assert result.error is not None
    assert (result.error.ename, result.error.evalue) == ("ValueError", "bad value")
    assert not any("\x1b[" in line for line in result.error.traceback)
    assert "ValueError: bad value" in result.error.traceback[-1]
    again = await shared.execute("y + 1", 10)
    assert again.error is None and again.result == "6"


async def test_imports_a_package_installed_into_the_session_venv(
    session: Session, shared: SessionKernel
) -> None:
    await shared.execute("0", 30)  # the kernel is running before the install
    installed = await session.venvs.install(session.venv, ["six"], limits=LIMITS)
    assert installed.exit_code == 0
    result = await shared.execute("import six, IPython\nsix.__file__, IPython.__file__", 10)
    assert result.error is None
    six_file, ipython_file = eval(result.result or "")
    assert six_file.startswith(str(session.venv))
    assert not ipython_file.startswith(str(session.venv))  # from the shared runtime


async def test_run_python_in_the_venv_does_not_see_the_runtime(session: Session) -> None:
    await session.runtime.prepare(session.venv)
    result = await session.runner.run(
        [str(session.venv / "bin" / "python"), "-c", "import IPython"],
        cwd=session.workspace,
        env=session.env(),
        limits=LIMITS,
    )
    assert result.exit_code == 1 and "ModuleNotFoundError" in result.stderr


async def test_timeout_interrupts_and_state_survives(shared: SessionKernel) -> None:
    await shared.execute("n = 0", 10)
    result = await shared.execute("while True:\n    n += 1", 1.0)
    assert result.timed_out and not result.restarted and not result.state_lost
    assert result.error is not None and result.error.ename == "KeyboardInterrupt"
    after = await shared.execute("n > 0", 10)
    assert after.result == "True" and not after.restarted


async def run_until_marked(
    kernel: SessionKernel, session: Session, code: str
) -> asyncio.Task[KernelExecuteResult]:
    """Start ``code`` (which creates the file ``marker`` once it runs); wait for the file."""
    marker = session.workspace / "marker"
    marker.unlink(missing_ok=True)
    task = asyncio.create_task(kernel.execute(code, 30))
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline and not task.done(), "the code never started"
        await asyncio.sleep(0.05)
    return task


async def test_interrupt_stops_running_code(shared: SessionKernel, session: Session) -> None:
    assert await shared.interrupt() is False  # nothing running
    code = "import time\nz = 1\nopen('marker', 'w').close()\ntime.sleep(60)"
    task = await run_until_marked(shared, session, code)
    assert (await kernel_interrupt(shared)).interrupted
    result = await task
    assert not result.timed_out and result.error is not None
    assert result.error.ename == "KeyboardInterrupt"
    assert (await shared.execute("z", 10)).result == "1"


async def test_cancelled_execute_interrupts_the_code(
    shared: SessionKernel, session: Session
) -> None:
    code = "import time\nw = 2\nopen('marker', 'w').close()\ntime.sleep(60)\nw = 3"
    task = await run_until_marked(shared, session, code)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await shared.execute("w", 10)
    assert after.result == "2" and not after.restarted


async def test_output_is_capped_keeping_the_head(session: Session) -> None:
    kernel = session.kernel(LIMITS.model_copy(update={"max_output_bytes": 1000}))
    try:
        result = await kernel.execute("print('a' * 600); print('b' * 600); print('c')", 30)
    finally:
        await kernel.shutdown()
    assert result.truncated and len(result.stdout) == 1000
    assert result.stdout.startswith("a" * 600) and "c" not in result.stdout
    assert "cut" in result.message


async def test_loop_ignoring_interrupt_is_restarted(fresh: SessionKernel) -> None:
    await fresh.execute("kept = 1", 30)
    old_pid = fresh.pid
    # CPython raises KeyboardInterrupt at a loop's backward jump: keep that jump inside
    # the try (an empty `while True: pass` body does not count).
    code = (
        "while True:\n"
        "    try:\n"
        "        while True:\n"
        "            kept += 1\n"
        "    except KeyboardInterrupt:\n"
        "        pass"
    )
    result = await fresh.execute(code, 1.0)
    assert result.timed_out and result.restarted and result.state_lost
    assert "restarted" in result.message
    assert old_pid is not None and not alive(old_pid)
    after = await fresh.execute("kept", 10)
    assert after.error is not None and after.error.ename == "NameError"
    assert not after.restarted  # already said by the call that restarted it


async def test_dead_kernel_is_detected_and_replaced(fresh: SessionKernel) -> None:
    await fresh.execute("kept = 1", 30)
    died = await fresh.execute("import os\nos._exit(3)", 10)
    assert died.state_lost and died.error is not None and died.error.ename == "KernelDied"
    assert "code 3" in died.message
    after = await fresh.execute("'kept' in globals()", 30)
    assert after.restarted and after.state_lost and after.result == "False"
    assert after.startup_ms > 0 and "gone" in after.message


async def test_restart_and_restore_say_state_was_lost(fresh: SessionKernel) -> None:
    await fresh.execute("kept = 1", 30)
    restarted = await kernel_restart(fresh)
    assert restarted.state_lost and restarted.startup_ms > 0
    assert (await fresh.execute("'kept' in globals()", 10)).result == "False"
    await fresh.discard("the session was restored from a checkpoint")
    told = await fresh.execute("1", 10)
    assert told.state_lost and "restored" in told.message


async def test_restart_while_code_runs_ends_that_call(
    fresh: SessionKernel, session: Session
) -> None:
    code = "import time\nopen('marker', 'w').close()\ntime.sleep(60)"
    task = await run_until_marked(fresh, session, code)
    old_pid = fresh.pid
    await fresh.restart()
    result = await task
    assert result.state_lost and "restarted while this code ran" in result.message
    assert fresh.pid != old_pid and (await fresh.execute("1 + 1", 10)).result == "2"


async def test_shutdown_leaves_no_process(fresh: SessionKernel) -> None:
    # A child that leaves the kernel's session must die with it too.
    code = (
        "import subprocess\np = subprocess.Popen(['sleep', '300'], start_new_session=True)\np.pid"
    )
    result = await fresh.execute(code, 30)
    child, kernel_pid = int(result.result or "0"), fresh.pid
    assert kernel_pid is not None and alive(kernel_pid) and alive(child)
    await fresh.shutdown()
    assert not alive(kernel_pid) and not alive(child)
    with pytest.raises(CodegenError):
        await fresh.execute("1", 10)


async def test_execute_tool_checks_the_timeout(shared: SessionKernel) -> None:
    limits = LIMITS.model_copy(update={"timeout_seconds": 5.0, "max_timeout_seconds": 5.0})
    with pytest.raises(CodegenError, match="exceeds"):
        await kernel_execute(shared, KernelExecuteArgs(code="1", timeout_seconds=9), limits)
    result = await kernel_execute(shared, KernelExecuteArgs(code="2 + 2"), limits)
    assert result.result == "4"


async def test_matplotlib_figure_comes_back_as_png(session: Session, fresh: SessionKernel) -> None:
    installed = await session.venvs.install(session.venv, ["matplotlib"], limits=LIMITS)
    assert installed.exit_code == 0, installed.output
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\nplt.show()"
    result = await fresh.execute(code, 60)
    assert result.error is None, result.error
    pngs = [o for o in result.outputs if o.mime_type == "image/png"]
    assert len(pngs) == 1
    assert base64.b64decode(pngs[0].data).startswith(b"\x89PNG\r\n\x1a\n")


async def test_interrupt_works_when_the_starting_thread_blocks_sigint(
    session: Session,
) -> None:
    """Ray's worker threads block SIGINT, and a child inherits the mask across exec."""
    kernel = session.kernel()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        await kernel.execute("m = 0", 30)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    try:
        result = await kernel.execute("while True:\n    m += 1", 1.0)
        assert result.timed_out and not result.restarted, result.message
        assert result.error is not None and result.error.ename == "KeyboardInterrupt"
        assert (await kernel.execute("m > 0", 10)).result == "True"
    finally:
        await kernel.shutdown()
