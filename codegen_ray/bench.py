"""``codegen-ray bench``: latency and memory of a gateway, each beside a baseline from the same run.

A benchmark is not a test: nothing here asserts a timing. Each entry of ``MEASUREMENTS``
is an async function that takes a ``Bench`` and returns ``Measurement`` rows; add one
there to measure something new. Percentiles are nearest-rank.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from codegen_ray.client import AsyncClient
from codegen_ray.embedded import EmbeddedGateway
from codegen_ray.errors import CodegenError
from codegen_ray.procs import descendants, process_table, stat_field

MiB = 1024 * 1024
DEFAULT_ITERATIONS = 20
QUICK_ITERATIONS = 5
WARM_WAIT_SECONDS = 30.0
GATEWAY_START_SECONDS = 240.0
GATEWAY_STOP_SECONDS = 45.0
ONE_MB_TEXT = ("0123456789abcdef" * 64 + "\n")[:1024] * 1024  # 1 MiB of ASCII


# --- statistics and the report (pure) ------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least pct% of samples at or below it."""
    if not values:
        raise ValueError("no samples")
    if not 0 < pct <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {pct}")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Stat:
    samples: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        samples = tuple(float(v) for v in values)
        if not samples:
            raise ValueError("a Stat needs at least one sample")
        return cls(samples)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def p50(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 99)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "p50": self.p50,
            "p99": self.p99,
            "min": min(self.samples),
            "max": max(self.samples),
            "samples": list(self.samples),
        }


@dataclass(frozen=True)
class Target:
    """p50 below ``limit``, in the row's unit or (``relative``) as a multiple of baseline p50."""

    limit: float
    relative: bool = False

    def describe(self, unit: str) -> str:
        return f"< {self.limit:g}x" if self.relative else f"< {self.limit:g} {unit}"


@dataclass(frozen=True)
class Measurement:
    name: str
    unit: str
    stat: Stat | None
    baseline: Stat | None = None
    baseline_name: str = ""
    target: Target | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.stat is None or self.baseline is None or self.baseline.p50 <= 0:
            return None
        return self.stat.p50 / self.baseline.p50

    @property
    def passed(self) -> bool | None:
        """None when there is no target or nothing to judge it by."""
        if self.target is None or self.stat is None:
            return None
        if self.target.relative:
            ratio = self.ratio
            return None if ratio is None else ratio < self.target.limit
        return self.stat.p50 < self.target.limit

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name.strip(),  # the table indents reference rows
            "unit": self.unit,
            **(self.stat.to_dict() if self.stat else {"n": 0}),
            "baseline": (
                {"name": self.baseline_name, **self.baseline.to_dict()} if self.baseline else None
            ),
            "ratio": self.ratio,
            "target": (
                {"p50_below": self.target.limit, "relative_to_baseline": self.target.relative}
                if self.target
                else None
            ),
            "passed": self.passed,
            "note": self.note,
        }


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 1:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2g}"  # two significant digits, so 0.0025 is not shown as 0.00
    return f"{text} {unit}".rstrip()


COLUMNS = ("name", "n", "p50", "p99", "baseline p50", "ratio", "target", "result", "baseline")


def table_rows(measurements: Sequence[Measurement]) -> list[tuple[str, ...]]:
    rows = []
    for m in measurements:
        passed = m.passed
        rows.append(
            (
                m.name,
                str(m.stat.n if m.stat else 0),
                _fmt(m.stat.p50 if m.stat else None, m.unit),
                _fmt(m.stat.p99 if m.stat else None, m.unit),
                _fmt(m.baseline.p50 if m.baseline else None, m.unit),
                "-" if m.ratio is None else f"{_fmt(m.ratio)}x",
                m.target.describe(m.unit) if m.target else "-",
                "skip"
                if m.stat is None
                else "-"
                if passed is None
                else "PASS"
                if passed
                else "FAIL",
                m.baseline_name or "-",
            )
        )
    return rows


def render_table(measurements: Sequence[Measurement]) -> str:
    rows = [COLUMNS, *table_rows(measurements)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    numeric = {1, 2, 3, 4, 5}

    def line(row: Sequence[str]) -> str:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    out = [line(rows[0]), "  ".join("-" * w for w in widths), *(line(r) for r in rows[1:])]
    notes = [f"  {m.name.strip()}: {m.note}" for m in measurements if m.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def report(measurements: Sequence[Measurement], meta: dict[str, Any]) -> dict[str, Any]:
    """The one JSON document ``--json`` prints."""
    return {**meta, "measurements": [m.to_dict() for m in measurements]}


# --- running ----------------------------------------------------------------------------


@dataclass
class Bench:
    client: AsyncClient
    iterations: int
    workdir: Path
    gateway: EmbeddedGateway | None = None
    progress: Callable[[str], None] = lambda message: None
    sessions: list[str] = field(default_factory=list)

    @property
    def slow_iterations(self) -> int:
        """For baselines that take seconds each (pip, venv with pip)."""
        return max(3, self.iterations // 4)

    async def create(self) -> str:
        session_id = str((await self.client.create_session(metadata={"bench": "1"}))["session_id"])
        self.sessions.append(session_id)
        return session_id

    async def destroy(self, session_id: str) -> None:
        await self.client.destroy_session(session_id)
        self.sessions.remove(session_id)

    async def call(self, tool: str, args: dict[str, Any], session_id: str) -> dict[str, Any]:
        response = await self.client.call(tool, args, session_id=session_id)
        if response.is_error:
            raise RuntimeError(f"{tool} failed: {response.text[:500]}")
        return response.structured


MeasureFn = Callable[[Bench], Awaitable[list[Measurement]]]


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def sample_sync(
    fn: Callable[[], object], n: int, setup: Callable[[], object] | None = None
) -> Stat:
    """Time ``fn`` n times (ms); ``setup`` runs untimed before each."""
    samples = []
    for _ in range(n):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        samples.append(_ms_since(start))
    return Stat.of(samples)


def run_checked(argv: Sequence[str], **kwargs: Any) -> None:
    subprocess.run(argv, check=True, capture_output=True, **kwargs)


def uv_bin() -> str:
    from uv import find_uv_bin

    return str(find_uv_bin())


class Scratch:
    """Fresh directories under the bench's workdir."""

    def __init__(self, root: Path, prefix: str) -> None:
        self.root, self.prefix, self.count = root, prefix, 0

    def __call__(self) -> Path:
        self.count += 1
        path = self.root / f"{self.prefix}{self.count}"
        shutil.rmtree(path, ignore_errors=True)
        return path


def venv_python(venv: Path) -> str:
    return str(venv / "bin" / "python")


def plain_venv(workdir: Path) -> Path:
    """One pip-less venv of this interpreter, made once per run (the run.python baseline)."""
    venv = workdir / "plain-venv"
    if not venv.exists():
        run_checked([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    return venv


async def wait_for_warm(client: AsyncClient, deadline_seconds: float) -> bool:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        status = await client.status()
        if any(int(node.get("warm_sessions", 0)) >= 1 for node in status.get("nodes", [])):
            return True
        await asyncio.sleep(0.05)
    return False


async def measure_echo(b: Bench) -> list[Measurement]:
    samples = []
    for _ in range(b.iterations + 1):
        start = time.perf_counter()
        await b.client.call("echo", {"message": "ping"})
        samples.append(_ms_since(start))
    return [
        Measurement(
            "echo (gRPC round trip)", "ms", Stat.of(samples[1:]), note="no session; gateway only"
        )
    ]


async def measure_create(b: Bench) -> list[Measurement]:
    warm, back_to_back, destroy = [], [], []
    note = ""
    waiting = True
    for i in range(b.iterations):
        if waiting and not await wait_for_warm(b.client, WARM_WAIT_SECONDS):
            waiting = False
            note = (
                f"warm pool not refilled within {WARM_WAIT_SECONDS:g} s; later creates may be cold"
            )
        b.progress(f"create (warm pool) {i + 1}/{b.iterations}")
        start = time.perf_counter()
        session_id = await b.create()
        warm.append(_ms_since(start))
        start = time.perf_counter()
        await b.destroy(session_id)
        destroy.append(_ms_since(start))
    for i in range(b.iterations):
        b.progress(f"create (back-to-back) {i + 1}/{b.iterations}")
        start = time.perf_counter()
        session_id = await b.create()
        back_to_back.append(_ms_since(start))
        start = time.perf_counter()
        await b.destroy(session_id)
        destroy.append(_ms_since(start))

    b.progress("baseline: python -m venv, uv venv")
    fresh = Scratch(b.workdir, "venv-")
    uv = uv_bin()
    venv = await asyncio.to_thread(
        sample_sync,
        lambda: run_checked([sys.executable, "-m", "venv", str(fresh())]),
        b.slow_iterations,
    )
    bare = await asyncio.to_thread(
        sample_sync,
        lambda: run_checked([sys.executable, "-m", "venv", "--without-pip", str(fresh())]),
        b.iterations,
    )
    uv_venv = await asyncio.to_thread(
        sample_sync,
        lambda: run_checked([uv, "venv", "-q", "--python", sys.executable, str(fresh())]),
        b.iterations,
    )
    target = Target(500.0)
    base = "python -m venv"
    return [
        Measurement("create (warm pool)", "ms", Stat.of(warm), venv, base, target, note),
        Measurement(
            "create (back-to-back)",
            "ms",
            Stat.of(back_to_back),
            venv,
            base,
            target,
            "create right after the previous destroy; the pool refills meanwhile",
        ),
        Measurement("destroy", "ms", Stat.of(destroy)),
        Measurement(
            "  python -m venv --without-pip", "ms", bare, note="reference: a pip-less venv"
        ),
        Measurement("  uv venv", "ms", uv_venv, note="reference: what a session uses"),
    ]


def pss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no Pss in /proc/{pid}/smaps_rollup")


def session_actor_pss(gateway_pid: int) -> list[float]:
    """PSS (MiB) per SessionActor process under the gateway, each with its own children."""
    table = process_table()
    out = []
    for pid in descendants(gateway_pid, table):
        if table[pid].cmdline.startswith("ray::SessionActor"):
            with contextlib.suppress(OSError):
                pids = [pid, *descendants(pid, table)]
                out.append(sum(pss_bytes(p) for p in pids) / MiB)
    return out


def idle_python_pss(count: int) -> list[float]:
    """PSS of ``count`` idle interpreters alive together (shared pages split as among sessions)."""
    procs = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        for _ in range(count)
    ]
    try:
        time.sleep(1.0)
        return [pss_bytes(p.pid) / MiB for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


async def measure_memory(b: Bench) -> list[Measurement]:
    name = "memory per idle session (PSS)"
    if b.gateway is None:
        return [
            Measurement(
                name,
                "MiB",
                None,
                note="skipped: a remote --target's processes are not visible here",
            )
        ]
    count = min(3, b.iterations)
    ids = [await b.create() for _ in range(count)]
    try:
        for session_id in ids:
            await b.call("run.python", {"code": "print(1)"}, session_id)
        await wait_for_warm(b.client, WARM_WAIT_SECONDS)
        await asyncio.sleep(1.0)
        sizes = await asyncio.to_thread(session_actor_pss, b.gateway.pid)
    finally:
        for session_id in ids:
            await b.destroy(session_id)
    if not sizes:
        return [
            Measurement(
                name, "MiB", None, note="no ray::SessionActor process found under the gateway"
            )
        ]
    baseline = await asyncio.to_thread(idle_python_pss, len(sizes))
    return [
        Measurement(
            name,
            "MiB",
            Stat.of(sizes),
            Stat.of(baseline),
            "idle python (sleep)",
            note=f"{len(sizes)} SessionActor processes ({count} used by one run.python each, the "
            "rest the warm pool); PSS of each actor process and its children",
        )
    ]


async def measure_run_python(b: Bench) -> list[Measurement]:
    session_id = await b.create()
    nice = await asyncio.to_thread(session_actor_nice, b.gateway.pid) if b.gateway else ""
    try:
        samples = []
        for i in range(b.iterations + 1):  # the first call is a warm-up
            b.progress(f"run.python {i}/{b.iterations}")
            start = time.perf_counter()
            result = await b.call("run.python", {"code": "print(1)"}, session_id)
            samples.append(_ms_since(start))
            if result.get("stdout") != "1\n" or result.get("exit_code") != 0:
                raise RuntimeError(f"run.python print(1) gave {result}")
        durations = [float(result["duration_ms"])] if "duration_ms" in result else []
    finally:
        await b.destroy(session_id)
    python = venv_python(await asyncio.to_thread(plain_venv, b.workdir))
    argv = [python, "-c", "print(1)"]
    await asyncio.to_thread(run_checked, argv)
    baseline = await asyncio.to_thread(sample_sync, lambda: run_checked(argv), b.iterations)
    notes = [f"duration_ms inside the session (last call): {durations[0]:.0f}"] if durations else []
    if nice:
        notes.append(f"the SessionActor (and so the program) runs at nice {nice}")
    note = "; ".join(notes)
    return [
        Measurement(
            "run.python print(1)",
            "ms",
            Stat.of(samples[1:]),
            baseline,
            "venv python -c (subprocess)",
            Target(2.0, relative=True),
            note,
        )
    ]


async def measure_fs(b: Bench) -> list[Measurement]:
    session_id = await b.create()
    try:
        samples = []
        for i in range(b.iterations + 1):
            b.progress(f"fs.write+fs.read 1 MiB {i}/{b.iterations}")
            start = time.perf_counter()
            await b.call("fs.write", {"path": "bench.txt", "contents": ONE_MB_TEXT}, session_id)
            result = await b.call("fs.read", {"path": "bench.txt"}, session_id)
            samples.append(_ms_since(start))
            if result.get("contents") != ONE_MB_TEXT:
                raise RuntimeError("fs.read returned other contents than fs.write wrote")
    finally:
        await b.destroy(session_id)
    path = b.workdir / "bench.txt"

    def local_round_trip() -> None:
        path.write_text(ONE_MB_TEXT)
        if path.read_text() != ONE_MB_TEXT:
            raise RuntimeError("local round trip mismatch")

    baseline = await asyncio.to_thread(sample_sync, local_round_trip, b.iterations)
    return [
        Measurement(
            "fs.write+fs.read 1 MiB",
            "ms",
            Stat.of(samples[1:]),
            baseline,
            "local write+read (Python)",
        )
    ]


async def measure_pkg_install(b: Bench) -> list[Measurement]:
    async def install_in_fresh_session() -> float:
        session_id = await b.create()
        try:
            start = time.perf_counter()
            result = await b.call("pkg.install", {"packages": "six"}, session_id)
            elapsed = _ms_since(start)
        finally:
            await b.destroy(session_id)
        if result.get("exit_code") not in (0, None) or result.get("failed"):
            raise RuntimeError(f"pkg.install six failed: {result.get('output', '')[:300]}")
        return elapsed

    b.progress("pkg.install six: warming the cache")
    await install_in_fresh_session()
    samples = []
    for i in range(b.iterations):
        b.progress(f"pkg.install six {i + 1}/{b.iterations}")
        samples.append(await install_in_fresh_session())

    b.progress("baseline: pip install six, uv pip install six")
    fresh = Scratch(b.workdir, "pip-")
    pip_venv: list[Path] = []

    def new_pip_venv() -> None:
        pip_venv[:] = [fresh()]
        run_checked([sys.executable, "-m", "venv", str(pip_venv[0])])

    def pip_install() -> None:
        run_checked([venv_python(pip_venv[0]), "-m", "pip", "install", "-q", "six"])

    uv = uv_bin()
    uv_env = {**os.environ, "UV_CACHE_DIR": str(b.workdir / "uv-cache"), "UV_NO_CONFIG": "1"}
    uv_venv: list[Path] = []

    def new_uv_venv() -> None:
        uv_venv[:] = [fresh()]
        run_checked([uv, "venv", "-q", "--python", sys.executable, str(uv_venv[0])])

    def uv_install() -> None:
        run_checked(
            [uv, "pip", "install", "-q", "--python", venv_python(uv_venv[0]), "six"], env=uv_env
        )

    await asyncio.to_thread(sample_sync, pip_install, 1, new_pip_venv)  # warm pip's cache
    pip = await asyncio.to_thread(sample_sync, pip_install, b.slow_iterations, new_pip_venv)
    await asyncio.to_thread(sample_sync, uv_install, 1, new_uv_venv)  # warm uv's cache
    uv_stat = await asyncio.to_thread(sample_sync, uv_install, b.iterations, new_uv_venv)
    return [
        Measurement(
            "pkg.install six (cached)",
            "ms",
            Stat.of(samples),
            pip,
            "pip install six (cache warm)",
            note="a fresh session each time; the uv cache warmed by one install first",
        ),
        Measurement("  uv pip install six", "ms", uv_stat, note="reference: uv alone, cache warm"),
    ]


# --- checkpoints, restore, hibernation (issue 3) ------------------------------------------

WORKSPACE_FILES = 5000
WRITE_5000_FILES = (
    "import os\n"
    "for i in range(5000):\n"
    "    d = f'tree/{i // 100:02d}'\n"
    "    os.makedirs(d, exist_ok=True)\n"
    "    open(f'{d}/f{i:04d}.txt', 'w').write(f'file {i}\\n' * 8)\n"
)
# Settings of the second gateway: no auto-checkpoint (the baseline) and a short
# hibernate_after, so hibernation and wake can be timed from outside.
QUIET_HIBERNATE_SECONDS = 3.0
QUIET_GATEWAY_ENV = {
    "CODEGEN_CHECKPOINT__POLICY": "never",
    "CODEGEN_SESSION__HIBERNATE_AFTER_SECONDS": str(QUIET_HIBERNATE_SECONDS),
    "CODEGEN_SESSION__REAP_INTERVAL_SECONDS": "0.5",
}
# A file is trusted by (size, mtime) only once it is older than its parent checkpoint
# by checkpoint.RACY_WINDOW_NS; waits below let a fresh tree become trusted.
RACY_WAIT_SECONDS = 1.2
SMALL_WRITE = {"path": "changed.txt", "contents": "x" * 1024}


async def _write_tree(client: AsyncClient, session_id: str) -> None:
    response = await client.call("run.python", {"code": WRITE_5000_FILES}, session_id=session_id)
    if response.is_error or response.structured.get("exit_code") != 0:
        raise RuntimeError(f"writing {WORKSPACE_FILES} files failed: {response.text[:300]}")


async def _timed(coro: Awaitable[Any]) -> float:
    start = time.perf_counter()
    await coro
    return _ms_since(start)


async def measure_restore(b: Bench) -> list[Measurement]:
    """Restore as a new session (the embedded gateway has one node): files and the venv."""
    session_id = await b.create()
    try:
        await b.call("fs.write", {"path": "main.py", "contents": "print('hi')\n"}, session_id)
        await b.call("pkg.install", {"packages": "six"}, session_id)  # warms the uv cache
        checkpoint = (await b.client.checkpoint(session_id, "bench"))["checkpoint_id"]
        samples = []
        for i in range(b.slow_iterations + 1):
            b.progress(f"restore as a new session {i}/{b.slow_iterations}")
            start = time.perf_counter()
            info = await b.client.restore(checkpoint, new_session=True)
            samples.append(_ms_since(start))
            b.sessions.append(info["session_id"])
            await b.destroy(info["session_id"])
    finally:
        await b.destroy(session_id)
    return [
        Measurement(
            "restore: new session, venv (six) from cached wheels",
            "ms",
            Stat.of(samples[1:]),
            target=Target(1500),
            note="one node here: a new session on the same node; e2e restores across nodes",
        )
    ]


async def measure_auto_checkpoint(b: Bench) -> list[Measurement]:
    """fs.write under the default policy (checkpoint before the ack) in a 5,000-file workspace."""
    session_id = await b.create()
    try:
        await _write_tree(b.client, session_id)
        await asyncio.sleep(RACY_WAIT_SECONDS * 2)
        await b.call("fs.write", SMALL_WRITE, session_id)  # a parent the tree is trusted by
        samples = []
        for i in range(b.iterations):
            b.progress(f"fs.write 1 KiB, auto-checkpoint, 5,000 files {i + 1}/{b.iterations}")
            samples.append(await _timed(b.call("fs.write", SMALL_WRITE, session_id)))
    finally:
        await b.destroy(session_id)
    return [
        Measurement(
            "fs.write 1 KiB, policy=mutation, 5,000 files",
            "ms",
            Stat.of(samples),
            note="each write checkpointed before its ack (1 changed file)",
        )
    ]


async def measure_quiet_gateway(b: Bench) -> list[Measurement]:
    """On a second gateway (policy=never, short hibernate_after): the policy's baseline,
    Sessions.Checkpoint with 1 changed file of 5,000, and hibernate and wake times."""
    if b.gateway is None:
        return [Measurement("checkpoint/hibernate", "ms", None, note="needs the bench's gateway")]
    b.progress("starting a second gateway (policy=never, hibernate_after=3s)")
    quiet_dir = b.workdir / "quiet"
    quiet = EmbeddedGateway(quiet_dir, env={**gateway_env(quiet_dir), **QUIET_GATEWAY_ENV})
    quiet.workdir.mkdir()
    target = await asyncio.to_thread(quiet.start)
    try:
        async with AsyncClient(target, timeout=600) as client:
            return await _measure_quiet(b, client)
    finally:
        await asyncio.to_thread(quiet.stop)


async def _measure_quiet(b: Bench, client: AsyncClient) -> list[Measurement]:
    async def call(session_id: str, tool: str, args: dict[str, Any]) -> None:
        response = await client.call(tool, args, session_id=session_id)
        if response.is_error:
            raise RuntimeError(f"{tool} failed: {response.text[:300]}")

    session_id = str((await client.create_session())["session_id"])
    try:
        write = []
        for i in range(b.iterations + 1):
            b.progress(f"fs.write 1 KiB, policy=never {i}/{b.iterations}")
            write.append(await _timed(call(session_id, "fs.write", SMALL_WRITE)))
        await _write_tree(client, session_id)
        await client.checkpoint(session_id)  # the full one
        for _ in range(2):  # stay below hibernate_after while the tree ages
            await asyncio.sleep(RACY_WAIT_SECONDS)
            await call(session_id, "fs.write", SMALL_WRITE)
        await client.checkpoint(session_id)  # a parent that trusts the tree
        incremental = []
        for i in range(b.iterations):
            b.progress(f"Checkpoint, 1 changed file of 5,000 {i + 1}/{b.iterations}")
            await call(session_id, "fs.write", {**SMALL_WRITE, "contents": f"change {i}"})
            incremental.append(await _timed(client.checkpoint(session_id)))
    finally:
        with contextlib.suppress(Exception):
            await client.destroy_session(session_id)
    # A small session (a few files, six installed) for hibernate and wake.
    session_id = str((await client.create_session())["session_id"])
    try:
        await call(session_id, "pkg.install", {"packages": "six"})
        await call(session_id, "fs.write", SMALL_WRITE)
        await client.checkpoint(session_id)
        asleep, wake = [], []
        for i in range(min(3, b.iterations)):
            b.progress(f"hibernate and wake {i + 1}/3 (idle {QUIET_HIBERNATE_SECONDS:g}s each)")
            await call(session_id, "fs.write", SMALL_WRITE)
            idle_from = time.perf_counter()
            while (await client.get_session(session_id))["state"] != "hibernated":  # noqa: ASYNC110 - polled over gRPC
                await asyncio.sleep(0.02)
            asleep.append(_ms_since(idle_from) - QUIET_HIBERNATE_SECONDS * 1000)
            wake.append(await _timed(call(session_id, "fs.read", {"path": "changed.txt"})))
    finally:
        with contextlib.suppress(Exception):
            await client.destroy_session(session_id)
    never = Stat.of(write[1:])
    session_id = await b.create()
    try:
        default = []
        for i in range(b.iterations + 1):
            b.progress(f"fs.write 1 KiB, policy=mutation {i}/{b.iterations}")
            default.append(await _timed(b.call("fs.write", SMALL_WRITE, session_id)))
    finally:
        await b.destroy(session_id)
    return [
        Measurement(
            "fs.write 1 KiB, policy=mutation (default)",
            "ms",
            Stat.of(default[1:]),
            never,
            "fs.write, policy=never",
            note="the auto-checkpoint's cost per mutating call, small workspace",
        ),
        Measurement(
            "Checkpoint, 1 changed file of 5,000",
            "ms",
            Stat.of(incremental),
            target=Target(50),
            note="Sessions.Checkpoint over gRPC: scan, hash 1, upload 1, manifest",
        ),
        Measurement(
            "hibernate (idle limit -> asleep)",
            "ms",
            Stat.of(asleep),
            note="includes up to one reap interval (0.5 s) of waiting",
        ),
        Measurement(
            "wake (first call after hibernation)",
            "ms",
            Stat.of(wake),
            note="restore of 1 file and a venv with six, then fs.read",
        ),
    ]


async def measure_kernel(b: Bench) -> list[Measurement]:
    """kernel.execute of ``1+1`` once the kernel is warm: inside the kernel and end to end."""
    session_id = await b.create()
    try:
        b.progress("kernel: first execute (starts the kernel; may install its runtime)")
        start = time.perf_counter()
        await b.call("kernel.execute", {"code": "x = 1"}, session_id)
        cold = _ms_since(start)
        inside, end_to_end = [], []
        for i in range(b.iterations * 5 + 1):
            start = time.perf_counter()
            result = await b.call("kernel.execute", {"code": "1+1"}, session_id)
            end_to_end.append(_ms_since(start))
            inside.append(float(result["duration_ms"]))
            if result.get("result") != "2":
                raise RuntimeError(f"kernel.execute 1+1 gave {result}")
            b.progress(f"kernel.execute {i}/{b.iterations * 5}")
    finally:
        await b.destroy(session_id)
    return [
        Measurement(
            "kernel.execute 1+1 (in kernel)",
            "ms",
            Stat.of(inside[1:]),
            target=Target(3.0),
            note="duration_ms the session measures around the kernel round trip",
        ),
        Measurement(
            "kernel.execute 1+1 (gRPC e2e)",
            "ms",
            Stat.of(end_to_end[1:]),
            note=f"first execute, starting the kernel: {cold:.0f} ms",
        ),
    ]


async def measure_mcp(b: Bench) -> list[Measurement]:
    """MCP over streamable HTTP, beside the same calls over gRPC, in one session."""
    if b.gateway is None:
        return [Measurement("MCP round trip", "ms", None, note="needs the bench's own gateway")]
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    port = (b.gateway.workdir / "grpc-port.http").read_text().strip()
    session_id = await b.create()
    rows = []
    try:
        async with (
            streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write),
            ClientSession(read, write) as mcp,
        ):
            await mcp.initialize()
            for tool, args in (
                ("echo", {"message": "ping"}),
                ("run.python", {"code": "print(1)", "session_id": session_id}),
            ):
                over_mcp, over_grpc = [], []
                for i in range(b.iterations + 1):
                    b.progress(f"MCP {tool} {i}/{b.iterations}")
                    start = time.perf_counter()
                    result = await mcp.call_tool(tool, args)
                    over_mcp.append(_ms_since(start))
                    if result.is_error:
                        raise RuntimeError(f"MCP {tool} failed: {result.content}")
                    start = time.perf_counter()
                    grpc_args = {k: v for k, v in args.items() if k != "session_id"}
                    await b.client.call(tool, grpc_args, session_id=session_id)
                    over_grpc.append(_ms_since(start))
                rows.append(
                    Measurement(
                        f"{tool} over MCP (streamable HTTP)",
                        "ms",
                        Stat.of(over_mcp[1:]),
                        Stat.of(over_grpc[1:]),
                        "the same call over gRPC",
                    )
                )
    finally:
        await b.destroy(session_id)
    return rows


MEASUREMENTS: list[tuple[str, MeasureFn]] = [
    ("echo", measure_echo),
    ("create", measure_create),
    ("memory", measure_memory),
    ("run.python", measure_run_python),
    ("fs", measure_fs),
    ("pkg.install", measure_pkg_install),
    ("kernel", measure_kernel),
    ("mcp", measure_mcp),
    ("restore", measure_restore),
    ("auto-checkpoint", measure_auto_checkpoint),
    ("checkpoint, hibernate, wake", measure_quiet_gateway),
]


async def run_measurements(
    b: Bench, selected: Sequence[tuple[str, MeasureFn]]
) -> list[Measurement]:
    """Run each measurement; one that fails becomes a skipped row, the rest still run."""
    out: list[Measurement] = []
    for name, fn in selected:
        b.progress(f"measuring {name}")
        try:
            out.extend(await fn(b))
        except Exception as exc:  # noqa: BLE001 - report it in the table, go on with the rest
            out.append(
                Measurement(name, "ms", None, note=f"failed: {type(exc).__name__}: {exc}"[:300])
            )
        for session_id in list(b.sessions):  # left behind by a failure
            with contextlib.suppress(Exception):
                await b.destroy(session_id)
    return out


# --- the gateway the bench starts itself ---------------------------------------------------


def gateway_env(workdir: Path) -> dict[str, str]:
    """A bench gateway keeps its state and workspaces in the bench's temp dir."""
    return {
        "CODEGEN_RAY__INCLUDE_DASHBOARD": "false",
        "CODEGEN_STATE_DIR": str(workdir / "state"),
        "BASE_WORKSPACE": str(workdir / "workspaces"),
    }


def session_actor_nice(gateway_pid: int) -> str:
    """The nice value of the SessionActor processes (Ray renices its workers)."""
    table = process_table()
    for pid in descendants(gateway_pid, table):
        if table[pid].cmdline.startswith("ray::SessionActor"):
            return stat_field(pid, 19)
    return ""


# --- the command ---------------------------------------------------------------------------


def host_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "loadavg_before": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def _bench(
    target: str, gateway: EmbeddedGateway | None, iterations: int, workdir: Path
) -> list[Measurement]:
    async with AsyncClient(target, timeout=600) as client:
        b = Bench(
            client, iterations, workdir, gateway, lambda m: click.echo(f"bench: {m}", err=True)
        )
        return await run_measurements(b, MEASUREMENTS)


@click.command()
@click.option(
    "--target", default=None, help="A running gateway host:port; default: start one here."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document instead of the table."
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    help=f"Samples per figure (default {DEFAULT_ITERATIONS}).",
)
@click.option("--quick", is_flag=True, help=f"{QUICK_ITERATIONS} samples per figure.")
def bench(target: str | None, as_json: bool, iterations: int | None, quick: bool) -> None:
    """Measure session create, memory, run.python, fs, pkg.install and checkpoints."""
    n = iterations or (QUICK_ITERATIONS if quick else DEFAULT_ITERATIONS)
    meta: dict[str, Any] = {"iterations": n, "host": host_info()}
    with tempfile.TemporaryDirectory(prefix="codegen-bench-") as tmp:
        workdir = Path(tmp)
        gateway = None
        if target is None:
            click.echo("bench: starting an embedded gateway", err=True)
            gateway = EmbeddedGateway(workdir, env=gateway_env(workdir))
            try:
                target = gateway.start(GATEWAY_START_SECONDS)
            except CodegenError as exc:
                raise click.ClickException(exc.message) from None
            click.echo(f"bench: gateway up at {target} in {gateway.start_seconds:.1f} s", err=True)
        started = time.monotonic()
        try:
            measurements = asyncio.run(_bench(target, gateway, n, workdir))
        finally:
            if gateway is not None:
                click.echo("bench: stopping the gateway", err=True)
                gateway.stop(GATEWAY_STOP_SECONDS)
        meta.update(
            target=target,
            embedded=gateway is not None,
            seconds=round(time.monotonic() - started, 1),
        )
        meta["host"]["loadavg_after"] = list(os.getloadavg())
        if gateway is not None:
            meta["gateway"] = {
                "start_seconds": round(gateway.start_seconds, 2),
                "stop_seconds": round(gateway.stop_seconds, 2),
                "stop_path": gateway.stop_path,
                "orphans_killed": gateway.orphans,
            }
    if as_json:
        click.echo(json.dumps(report(measurements, meta), indent=2))
        return
    click.echo(render_table(measurements))
    click.echo(
        f"\n{n} iterations; load average {meta['host']['loadavg_before'][0]:.1f} before, "
        f"{meta['host']['loadavg_after'][0]:.1f} after, on {meta['host']['cpus']} CPUs"
        + (
            f"; gateway start {meta['gateway']['start_seconds']:.1f} s, stop "
            f"{meta['gateway']['stop_seconds']:.1f} s ({meta['gateway']['stop_path']}"
            + (f": {', '.join(gateway.orphans)}" if gateway.orphans else "")
            + ")"
            if gateway is not None
            else ""
        )
    )
