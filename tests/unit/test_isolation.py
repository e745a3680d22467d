"""Isolation policies: the wrapped command really sets the limits, then runs the program."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from codegen_ray.config import IsolationSettings, Limits
from codegen_ray.isolation import (
    NoIsolation,
    RlimitIsolation,
    UidIsolation,
    UidLease,
    find_prlimit,
    policy_for,
    probe_isolation,
)
from codegen_ray.process import ProcessRunner, RunResult
from codegen_ray.workspace import Workspace

UID = 265000  # inside the default session range; no session runs in unit tests
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the own-uid tier needs root")

LIMITS = Limits(
    cpu_seconds=7, max_processes=99, max_file_bytes=12345, max_open_files=77, max_memory_bytes=2**33
)
SHOW = (
    "import resource as r; print([r.getrlimit(getattr(r, 'RLIMIT_' + n)) "
    "for n in ('CPU', 'NPROC', 'FSIZE', 'NOFILE', 'CORE', 'AS')])"
)
EXPECTED = str([(7, 8), (99, 99), (12345, 12345), (77, 77), (0, 0), (2**33, 2**33)])


@pytest.mark.parametrize("launcher", ["prlimit", "python"])
def test_rlimit_wrapper_sets_every_limit_then_execs(launcher: str) -> None:
    if launcher == "prlimit" and find_prlimit() is None:
        pytest.skip("no prlimit here")
    policy = RlimitIsolation(launcher=launcher)  # type: ignore[arg-type]
    argv = policy.wrap_argv([sys.executable, "-c", SHOW], LIMITS)
    out = subprocess.run(argv, capture_output=True, text=True, env={}, check=True).stdout
    assert out.strip() == EXPECTED


def test_prlimit_is_preferred_and_no_python_in_front() -> None:
    if find_prlimit() is None:
        pytest.skip("no prlimit here")
    policy = RlimitIsolation()
    assert policy.launcher == "prlimit"
    argv = policy.wrap_argv(["prog", "arg"], LIMITS)
    assert argv[0] == find_prlimit() and argv[-3:] == ["--", "prog", "arg"]
    assert "--core=0:0" in argv and "--cpu=7:8" in argv


def test_python_launcher_reports_a_missing_program() -> None:
    argv = RlimitIsolation(launcher="python").wrap_argv(["/no/such/program"], LIMITS)
    proc = subprocess.run(argv, capture_output=True, text=True, env={})
    assert proc.returncode == 127 and "/no/such/program" in proc.stderr


def test_python_launcher_ignores_a_hostile_pythonpath(tmp_path: Path) -> None:
    # A `resource` module planted on PYTHONPATH must not run inside the launcher.
    plant = tmp_path
    (plant / "resource.py").write_text("raise SystemExit('planted module ran')")
    argv = RlimitIsolation(launcher="python").wrap_argv(["/bin/true"], LIMITS)
    proc = subprocess.run(argv, capture_output=True, text=True, env={"PYTHONPATH": str(plant)})
    assert proc.returncode == 0, proc.stderr


def test_no_isolation_is_the_identity() -> None:
    assert NoIsolation().wrap_argv(["a", "b"], LIMITS) == ["a", "b"]
    assert NoIsolation().popen_kwargs(LIMITS) == {}


def test_probe_picks_the_uid_tier_as_root_else_rlimits() -> None:
    choice = probe_isolation()
    assert choice.tier == ("uid" if os.geteuid() == 0 else "rlimits"), choice.reason
    assert policy_for(choice, (UID, UID) if choice.tier == "uid" else None).name == choice.tier


def test_probe_can_be_forced_to_rlimits() -> None:
    assert probe_isolation(IsolationSettings(tier="rlimits")).tier == "rlimits"


@as_root
def test_probe_falls_back_when_session_uids_cannot_reach_a_path(tmp_path: Path) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    choice = probe_isolation(reachable=[hidden / "workspaces"])
    assert choice.tier == "rlimits" and str(hidden) in choice.reason
    with pytest.raises(RuntimeError, match="cannot work"):
        probe_isolation(IsolationSettings(tier="uid"), reachable=[hidden])


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other uids may pass through (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="codegen-iso-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@as_root
async def test_uid_policy_runs_as_the_uid_and_cannot_read_a_root_0700_file(
    shared_dir: Path,
) -> None:
    (shared_dir / "secret").write_text("root's\n")
    (shared_dir / "secret").chmod(0o600)
    (shared_dir / "open").write_text("anyone's\n")
    (shared_dir / "open").chmod(0o644)
    policy = UidIsolation(UID, UID)
    assert policy.owner == (UID, UID) and policy.popen_kwargs(LIMITS)["extra_groups"] == []
    runner = ProcessRunner(policy)
    env = {"PATH": "/usr/bin:/bin"}

    async def run(*argv: str) -> RunResult:
        return await runner.run(list(argv), cwd=shared_dir, env=env, limits=Limits())

    ids = await run("/bin/sh", "-c", "/usr/bin/id -u; /usr/bin/id -g; /usr/bin/id -G")
    assert ids.exit_code == 0 and ids.stdout.split() == [str(UID)] * 3, ids
    denied = await run("/bin/cat", str(shared_dir / "secret"))
    assert denied.exit_code != 0 and "Permission denied" in denied.stderr
    assert (await run("/bin/cat", str(shared_dir / "open"))).stdout == "anyone's\n"


@as_root
async def test_uid_policy_makes_the_process_limit_bind(shared_dir: Path) -> None:
    runner = ProcessRunner(UidIsolation(UID, UID))
    # Root ignores RLIMIT_NPROC; a session uid does not (five /bin/sleep at most).
    spawn = "for i in 1 2 3 4 5 6 7 8 9 10; do /bin/sleep 2 & done 2>&1; wait"
    run = await runner.run(
        ["/bin/sh", "-c", spawn],
        cwd=shared_dir,
        env={"PATH": "/usr/bin:/bin"},
        limits=Limits(max_processes=5),
    )
    assert "fork" in run.stdout.lower() or "resource" in run.stdout.lower(), run


@as_root
def test_workspace_with_an_owner_gives_what_it_makes_to_the_uid(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws", max_file_bytes=1000, max_read_bytes=1000, owner=(UID, UID))
    ws.write("a/b/c.txt", b"x")
    ws.write("new.txt", b"y", append=True)
    ws.write("a/b/c.txt", b"replaced")
    for rel in ("a", "a/b", "a/b/c.txt", "new.txt"):
        st = (ws.root / rel).lstat()
        assert (st.st_uid, st.st_gid) == (UID, UID), rel
    plain = Workspace(tmp_path / "plain", max_file_bytes=1000, max_read_bytes=1000)
    plain.write("d/f.txt", b"z")
    assert (plain.root / "d" / "f.txt").stat().st_uid == os.geteuid()


@as_root
def test_uid_leases_never_share_a_uid_and_a_released_one_is_free(tmp_path: Path) -> None:
    settings = IsolationSettings(uid_base=UID, uid_count=2, uid_lock_dir=tmp_path / "locks")
    first, second = UidLease("same-id", settings), UidLease("same-id", settings)
    assert {first.uid, second.uid} == {UID, UID + 1}
    with pytest.raises(RuntimeError, match="taken"):
        UidLease("other", settings)
    first.release()
    assert UidLease("other", settings).uid == first.uid
