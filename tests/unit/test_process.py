"""ProcessRunner against real, misbehaving programs: floods, hangs, daemons, bombs."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from codegen_ray.config import Limits
from codegen_ray.errors import CodegenError, ErrorCode
from codegen_ray.isolation import NoIsolation, RlimitIsolation
from codegen_ray.process import RUN_ID_ENV, ProcessRunner, RunResult

PATH = {"PATH": "/usr/bin:/bin"}
PY = sys.executable


@pytest.fixture(scope="module")
def runner() -> ProcessRunner:
    return ProcessRunner()


def _environ_has(pid: str, token: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return token in f.read()
    except OSError:
        return False


def _cmdline_has(pid: str, token: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return token in f.read()
    except OSError:
        return False


def procs_with(token: str, where: Callable[[str, bytes], bool] = _environ_has) -> list[str]:
    """Live processes whose environ (or cmdline) contains ``token``."""
    return [p for p in os.listdir("/proc") if p.isdigit() and where(p, token.encode())]


def zombie_children() -> set[int]:
    """Unreaped children of this process (orphans it was handed as subreaper included)."""
    zombies = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            kids = Path(f"/proc/self/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for pid in kids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_bytes()
            except OSError:
                continue
            if stat[stat.rindex(b")") + 2 :].split()[0] == b"Z":
                zombies.add(int(pid))
    return zombies


async def wait_until(cond: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


# A daemon the classic way: fork, setsid, fork, the middle process exits, the main
# process exits too. The daemon keeps stdout open, so a runner that waits for EOF hangs.
DOUBLE_FORK = """
import os, sys
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "1000"])
    os._exit(0)
os.wait()
print("parent done")
"""


async def test_captures_streams_and_exit_code(runner: ProcessRunner, tmp_path: Path) -> None:
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    r = await runner.run(py(code), cwd=tmp_path, env={}, limits=Limits())
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 3)
    assert (r.timed_out, r.truncated, r.termination) == (False, False, "exited")
    assert r.duration_ms >= 0


async def test_env_is_exactly_the_callers_plus_run_id(
    runner: ProcessRunner, tmp_path: Path
) -> None:
    # /usr/bin/env, found through the default PATH since the env given has none.
    r = await runner.run(["env"], cwd=tmp_path, env={"ONLY": "this"}, limits=Limits())
    lines = r.stdout.splitlines()
    assert sorted(line.split("=")[0] for line in lines) == ["CODEGEN_RUN_ID", "ONLY"]
    assert "ONLY=this" in lines


async def test_cwd_is_honoured(runner: ProcessRunner, tmp_path: Path) -> None:
    r = await runner.run(["pwd"], cwd=tmp_path, env=PATH, limits=Limits())
    assert r.stdout.strip() == str(tmp_path)


async def test_stdin_is_fed_then_closed(runner: ProcessRunner, tmp_path: Path) -> None:
    r = await runner.run(["cat"], cwd=tmp_path, env=PATH, limits=Limits(), stdin=b"hello\n")
    assert r.stdout == "hello\n"


async def test_no_stdin_is_dev_null(runner: ProcessRunner, tmp_path: Path) -> None:
    code = "import os; print(os.path.realpath('/proc/self/fd/0'))"
    r = await runner.run(py(code), cwd=tmp_path, env={}, limits=Limits())
    assert r.stdout.strip() == "/dev/null"


async def test_stdin_unread_by_a_program_that_exits(runner: ProcessRunner, tmp_path: Path) -> None:
    r = await runner.run(["true"], cwd=tmp_path, env=PATH, limits=Limits(), stdin=b"x" * 10**7)
    assert r.exit_code == 0 and not r.timed_out


async def test_large_stdin_and_stdout_at_once_do_not_deadlock(
    runner: ProcessRunner, tmp_path: Path
) -> None:
    data = os.urandom(4 * 1024 * 1024).hex().encode()  # 8 MiB through cat both ways
    limits = Limits(max_output_bytes=len(data))
    r = await runner.run(["cat"], cwd=tmp_path, env=PATH, limits=limits, stdin=data, timeout=60)
    assert r.stdout.encode() == data and not r.truncated


async def test_invalid_utf8_is_replaced(runner: ProcessRunner, tmp_path: Path) -> None:
    code = r"import sys; sys.stdout.buffer.write(b'ok \xff\xfe end')"
    r = await runner.run(py(code), cwd=tmp_path, env={}, limits=Limits())
    assert r.stdout == "ok \ufffd\ufffd end"


async def test_output_flood_is_capped_drained_and_streamed(
    runner: ProcessRunner, tmp_path: Path
) -> None:
    cap = 64 * 1024
    chunks: list[tuple[str, bytes]] = []

    async def on_output(stream: str, chunk: bytes) -> None:
        chunks.append((stream, chunk))

    # 1 GiB on stdout; "done" on stderr proves the writer was never blocked.
    cmd = ["sh", "-c", "head -c 1073741824 /dev/zero; echo done >&2"]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = await runner.run(
        cmd, cwd=tmp_path, env=PATH, limits=Limits(max_output_bytes=cap), on_output=on_output
    )
    rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert r.exit_code == 0 and not r.timed_out
    assert r.truncated and r.stdout == "\0" * cap and r.stderr == "done\n"
    assert sum(len(c) for s, c in chunks if s == "stdout") == cap
    assert b"".join(c for s, c in chunks if s == "stderr") == b"done\n"
    assert rss_growth_kib < 100 * 1024


async def test_sync_output_callback_that_raises_does_not_stall(
    runner: ProcessRunner, tmp_path: Path
) -> None:
    def on_output(stream: str, chunk: bytes) -> None:
        raise RuntimeError("consumer gone")

    cmd = ["sh", "-c", "head -c 10000000 /dev/zero; echo end"]
    limits = Limits(max_output_bytes=100)
    r = await runner.run(cmd, cwd=tmp_path, env=PATH, limits=limits, on_output=on_output)
    assert r.exit_code == 0 and r.truncated and len(r.stdout) == 100


async def test_timeout_terminates_the_group(runner: ProcessRunner, tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    cmd = ["sh", "-c", "sleep 1000 & sleep 1000"]
    env = {**PATH, "TOKEN": token}
    r = await runner.run(cmd, cwd=tmp_path, env=env, limits=Limits(), timeout=0.5)
    assert r.timed_out and r.termination == "term" and r.exit_code == -signal.SIGTERM
    assert procs_with(token) == []


async def test_timeout_escalates_to_kill_when_term_is_ignored(
    runner: ProcessRunner, tmp_path: Path
) -> None:
    token = uuid.uuid4().hex
    # The trap is inherited by sleep, so the whole group ignores SIGTERM.
    cmd = ["sh", "-c", "trap '' TERM; echo ready; sleep 1000"]
    limits = Limits(kill_grace_seconds=0.2)
    env = {**PATH, "TOKEN": token}
    # The timeout leaves sh time to set its trap even on a loaded machine.
    r = await runner.run(cmd, cwd=tmp_path, env=env, limits=limits, timeout=1.5)
    assert r.timed_out and r.termination == "kill" and r.exit_code == -signal.SIGKILL
    assert r.stdout == "ready\n"
    assert procs_with(token) == []


async def test_double_forked_daemon_is_killed_and_reaped(
    runner: ProcessRunner, tmp_path: Path
) -> None:
    token = uuid.uuid4().hex
    zombies_before = zombie_children()
    r = await runner.run(
        py(DOUBLE_FORK), cwd=tmp_path, env={**PATH, "TOKEN": token}, limits=Limits()
    )
    assert r.stdout == "parent done\n" and not r.timed_out
    assert procs_with(token) == []
    assert zombie_children() <= zombies_before


async def test_orphan_with_wiped_env_in_the_session_is_killed(
    runner: ProcessRunner, tmp_path: Path
) -> None:
    # No marker left in its environ: found by its session instead.
    seconds = f"1000.{uuid.uuid4().int % 10**9}"
    cmd = ["sh", "-c", f"(env -i sleep {seconds} &) ; echo started"]
    r = await runner.run(cmd, cwd=tmp_path, env=PATH, limits=Limits())
    assert r.stdout == "started\n"
    assert procs_with(seconds, _cmdline_has) == []


def start_unrelated_children() -> tuple[subprocess.Popen[bytes], str]:
    """Children of this process that no run owns: a long-lived one (like a kernel) and
    an orphan which, with us as subreaper, is reparented to this process."""
    kernel = subprocess.Popen(["sleep", "1000"])
    token = uuid.uuid4().hex
    subprocess.run(["sh", "-c", "sleep 1000 &"], env={**PATH, "TOKEN": token}, check=True)
    return kernel, token


def stop_unrelated_children(kernel: subprocess.Popen[bytes], token: str) -> None:
    kernel.kill()
    kernel.wait()
    for pid in procs_with(token):
        os.kill(int(pid), signal.SIGKILL)
        os.waitpid(int(pid), 0)  # the orphan is our child now


async def test_concurrent_runs_and_unrelated_children_survive_a_sweep(
    runner: ProcessRunner, tmp_path: Path
) -> None:
    other_token = uuid.uuid4().hex
    other = asyncio.create_task(
        runner.run(
            ["sh", "-c", "while [ ! -e go ]; do sleep 0.02; done; echo survived"],
            cwd=tmp_path,
            env={**PATH, "TOKEN": other_token},
            limits=Limits(),
        )
    )
    kernel, unrelated = start_unrelated_children()
    try:
        await wait_until(lambda: len(procs_with(other_token)) >= 2)
        await wait_until(lambda: len(procs_with(unrelated)) == 1)
        r = await runner.run(py(DOUBLE_FORK), cwd=tmp_path, env=PATH, limits=Limits())
        assert r.stdout == "parent done\n"
        assert kernel.poll() is None
        assert len(procs_with(unrelated)) == 1
        assert not other.done() and procs_with(other_token)
        (tmp_path / "go").touch()
        result = await other
        assert result.stdout == "survived\n" and result.exit_code == 0
    finally:
        stop_unrelated_children(kernel, unrelated)


async def test_cancellation_kills_group_and_orphans(runner: ProcessRunner, tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    code = DOUBLE_FORK + "import time; time.sleep(1000)\n"
    task = asyncio.create_task(
        runner.run(py(code), cwd=tmp_path, env={**PATH, "TOKEN": token}, limits=Limits())
    )
    await wait_until(lambda: len(procs_with(token)) >= 2)  # main and daemon
    zombies_before = zombie_children()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert procs_with(token) == []
    assert zombie_children() <= zombies_before


async def test_a_second_cancel_does_not_abort_the_cleanup(
    runner: ProcessRunner, tmp_path: Path
) -> None:
    token = uuid.uuid4().hex
    code = DOUBLE_FORK + "import time; time.sleep(1000)\n"
    task = asyncio.create_task(
        runner.run(py(code), cwd=tmp_path, env={**PATH, "TOKEN": token}, limits=Limits())
    )
    await wait_until(lambda: len(procs_with(token)) >= 2)
    task.cancel()
    await asyncio.sleep(0)  # let the first cancel reach the cleanup
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The shielded cleanup goes on after the task is gone.
    await wait_until(lambda: procs_with(token) == [])


async def test_fork_bomb_is_contained(runner: ProcessRunner, tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    # Bounded (2^7 shells plus their sleeps) so a broken runner cannot take the machine
    # down. As root RLIMIT_NPROC is not enforced (see isolation.py), so containment
    # rests on the timeout, the group kill and the orphan sweep; some branches setsid.
    bomb = (
        "f() { if [ $1 -lt 7 ]; then f $(($1+1)) & f $(($1+1)) & setsid sh -c 'sleep 1000' & fi;"
        " sleep 1000; }; f 0"
    )
    limits = Limits(max_processes=64, kill_grace_seconds=0.2)
    env = {**PATH, "TOKEN": token}
    zombies_before = zombie_children()
    r = await runner.run(["bash", "-c", bomb], cwd=tmp_path, env=env, limits=limits, timeout=1.5)
    assert r.timed_out
    assert procs_with(token) == []
    assert zombie_children() <= zombies_before
    after = await runner.run(["echo", "ok"], cwd=tmp_path, env=PATH, limits=Limits())
    assert after.stdout == "ok\n"


@pytest.mark.parametrize("launcher", ["prlimit", "python"])
async def test_file_size_limit(tmp_path: Path, launcher: str) -> None:
    runner = ProcessRunner(RlimitIsolation(launcher=launcher))  # type: ignore[arg-type]
    # Python ignores SIGXFSZ, so the write fails with EFBIG instead of killing it.
    # A write past the limit is cut short first, so keep writing (and flushing).
    code = """
    with open('big', 'wb') as f:
        for _ in range(5):
            f.write(b'x' * 1000)
            f.flush()
    """
    r = await runner.run(py(code), cwd=tmp_path, env={}, limits=Limits(max_file_bytes=1000))
    assert r.exit_code == 1 and "File too large" in r.stderr
    assert (tmp_path / "big").stat().st_size <= 1000
    # Without Python's SIG_IGN the default action of SIGXFSZ ends the program.
    cmd = ["sh", "-c", "head -c 5000 /dev/zero > big2"]
    r = await runner.run(cmd, cwd=tmp_path, env=PATH, limits=Limits(max_file_bytes=1000))
    assert r.exit_code != 0 and (tmp_path / "big2").stat().st_size <= 1000


async def test_cpu_limit_kills_a_busy_loop(runner: ProcessRunner, tmp_path: Path) -> None:
    r = await runner.run(
        py("while True: pass"), cwd=tmp_path, env={}, limits=Limits(cpu_seconds=1), timeout=30
    )
    assert not r.timed_out
    assert r.exit_code in (-signal.SIGXCPU, -signal.SIGKILL)


async def test_open_files_and_memory_limits(runner: ProcessRunner, tmp_path: Path) -> None:
    code = "fs = [open('/dev/null') for _ in range(100)]"
    r = await runner.run(py(code), cwd=tmp_path, env={}, limits=Limits(max_open_files=32))
    assert r.exit_code == 1 and "Too many open files" in r.stderr
    code = "b = bytearray(1024 ** 3)"
    r = await runner.run(py(code), cwd=tmp_path, env={}, limits=Limits(max_memory_bytes=2**29))
    assert r.exit_code == 1 and "MemoryError" in r.stderr


async def test_no_isolation_runs_unwrapped(tmp_path: Path) -> None:
    r = await ProcessRunner(NoIsolation()).run(
        py("import resource; print(resource.getrlimit(resource.RLIMIT_CPU))"),
        cwd=tmp_path,
        env={},
        limits=Limits(cpu_seconds=7),
    )
    assert "7" not in r.stdout


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["no-such-program-xyz"], ErrorCode.NOT_FOUND),
        (["/nonexistent/bin/tool"], ErrorCode.NOT_FOUND),
        (["./missing.sh"], ErrorCode.NOT_FOUND),
        (["./data.txt"], ErrorCode.INVALID_ARGUMENT),  # exists, not executable
        ([], ErrorCode.INVALID_ARGUMENT),
        ([""], ErrorCode.INVALID_ARGUMENT),
    ],
)
async def test_bad_program_is_a_clear_error(
    runner: ProcessRunner, tmp_path: Path, argv: list[str], code: ErrorCode
) -> None:
    (tmp_path / "data.txt").write_text("not a program")
    with pytest.raises(CodegenError) as info:
        await runner.run(argv, cwd=tmp_path, env=PATH, limits=Limits())
    assert info.value.code == code
    if argv and argv[0]:
        assert argv[0] in info.value.message


async def test_program_resolved_against_the_programs_path_and_cwd(
    runner: ProcessRunner, tmp_path: Path
) -> None:
    script = tmp_path / "bin" / "hello"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\necho hi from $0\n")
    script.chmod(0o755)
    for argv, env in ((["hello"], {"PATH": "bin:/bin"}), (["./bin/hello"], {})):
        r = await runner.run(argv, cwd=tmp_path, env=env, limits=Limits())
        assert r.stdout.startswith("hi from ") and r.exit_code == 0


async def test_bad_cwd_and_timeout_are_clear_errors(runner: ProcessRunner, tmp_path: Path) -> None:
    with pytest.raises(CodegenError) as info:
        await runner.run(["true"], cwd=tmp_path / "nope", env=PATH, limits=Limits())
    assert info.value.code == ErrorCode.NOT_FOUND
    for timeout in (0, -1, 10**6):
        with pytest.raises(CodegenError) as info:
            await runner.run(["true"], cwd=tmp_path, env=PATH, limits=Limits(), timeout=timeout)
        assert info.value.code == ErrorCode.INVALID_ARGUMENT


async def test_exit_by_signal_is_negative(runner: ProcessRunner, tmp_path: Path) -> None:
    r = await runner.run(["sh", "-c", "kill -9 $$"], cwd=tmp_path, env=PATH, limits=Limits())
    assert r.exit_code == -9 and r.termination == "exited" and not r.timed_out


def test_run_id_marker_name() -> None:
    assert RUN_ID_ENV == "CODEGEN_RUN_ID"
    assert RunResult(stdout="", stderr="", exit_code=0, duration_ms=0).termination == "exited"
