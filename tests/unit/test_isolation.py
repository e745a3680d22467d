"""Isolation policies: the wrapped command really sets the limits, then runs the program."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from codegen_ray.config import Limits
from codegen_ray.isolation import NoIsolation, RlimitIsolation, find_prlimit, probe_isolation

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


def test_probe_picks_rlimits_here() -> None:
    assert probe_isolation().name == "rlimits"
