"""Integration fixtures: the real gateway as a subprocess on its own embedded Ray.

One gateway serves the whole test session (``gateway``); ``start_gateway`` is there
for the few tests that need a differently configured one. Teardown never runs
``ray stop``: other people's Ray instances share this machine. The gateway runs in
its own process group, which is SIGKILLed after the gateway exits because some of
Ray's agents outlive ``ray.shutdown()``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from codegen_ray.client import AsyncClient
from codegen_ray.errors import CodegenError, ErrorCode

BIN = Path(sys.executable).parent
CLI = str(BIN / "codegen-ray")
START_TIMEOUT = 240.0
STOP_TIMEOUT = 60.0
MAX_SESSIONS = 4
# Settings this suite controls; inherited values would change what is tested.
_CONTROLLED = re.compile(
    r"^(GRPC_PORT|MAX_SESSIONS|BASE_WORKSPACE|WORKER_ID|COORDINATOR_ADDR|RAY_ADDRESS|CODEGEN_.*)$"
)
_BANNER = re.compile(r"codegen-ray gateway: grpc (\S+).*?\sray (\S+)")


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    root: Path
    target: str
    ray_address: str
    base_workspace: Path

    @property
    def log(self) -> str:
        return (self.root / "gateway.log").read_text(errors="replace")


def start_gateway(root: Path, *, max_sessions: int, env: dict[str, str] | None = None) -> Gateway:
    """Start ``codegen-ray serve`` on port 0 and wait until gRPC health says SERVING."""
    gateway = launch_gateway(root, max_sessions=max_sessions, env=env)
    wait_ready(gateway)
    return gateway


def launch_gateway(root: Path, *, max_sessions: int, env: dict[str, str] | None = None) -> Gateway:
    root.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if not _CONTROLLED.match(k)}
    full_env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        CODEGEN_STATE_DIR=str(root / "state"),
        CODEGEN_RAY__INCLUDE_DASHBOARD="false",
        CODEGEN_RAY__NUM_CPUS="2",
        CODEGEN_HTTP_PORT="0",  # others run gateways on this machine too
        MAX_SESSIONS=str(max_sessions),
        LOG_LEVEL="info",
        **(env or {}),
    )
    with open(root / "gateway.log", "wb") as log:
        proc = subprocess.Popen(
            [
                CLI,
                "serve",
                "--grpc-port",
                "0",
                "--port-file",
                str(root / "port"),
                "--base-workspace",
                str(root / "ws"),
            ],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Gateway(proc, root, "", "", root / "ws")


def wait_ready(gateway: Gateway) -> None:
    try:
        deadline = time.monotonic() + START_TIMEOUT
        port_file = gateway.root / "port"
        port = _wait_for(lambda: _read_port(port_file), gateway, deadline, "the port file")
        gateway.target = f"127.0.0.1:{port}"
        _wait_for(lambda: _serving(gateway.target), gateway, deadline, "health SERVING")
        banner = _wait_for(lambda: _BANNER.search(gateway.log), gateway, deadline, "the banner")
        gateway.ray_address = banner.group(2)
    except BaseException:
        stop_gateway(gateway)
        raise


def stop_gateway(gateway: Gateway) -> int | None:
    """SIGINT (the gateway destroys its sessions and shuts Ray down), then kill the rest."""
    proc = gateway.proc
    code = proc.poll()
    if code is None:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    return code


def _read_port(port_file: Path) -> int | None:
    try:
        text = port_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def _wait_for(probe: Callable[[], Any], gateway: Gateway, deadline: float, what: str) -> Any:
    while True:
        value = probe()
        if value:
            return value
        if gateway.proc.poll() is not None:
            pytest.fail(f"gateway exited ({gateway.proc.returncode}) before {what}:\n{gateway.log}")
        if time.monotonic() > deadline:
            pytest.fail(f"gateway not ready ({what}) in {START_TIMEOUT}s:\n{gateway.log[-4000:]}")
        time.sleep(0.1)


# The idle-reaping tests need a gateway of their own with a short idle timeout: two
# session slots, one of them warm, so that shutdown has a pool to clean up too.
REAP_IDLE_SECONDS = 2
REAPING_ENV = {
    "CODEGEN_SESSION__IDLE_TIMEOUT_SECONDS": str(REAP_IDLE_SECONDS),
    "CODEGEN_SESSION__REAP_INTERVAL_SECONDS": "1",
    "CODEGEN_SESSION__WARM_POOL_SIZE": "1",
}


@pytest.fixture(scope="session")
def gateways(
    request: pytest.FixtureRequest,
) -> Iterator[dict[str, Gateway]]:
    """Launch the gateways the selected tests need at once (start-up is mostly waiting)."""
    items = request.session.items
    configs = {
        "main": {"max_sessions": MAX_SESSIONS},
        "reaping": {"max_sessions": 2, "env": REAPING_ENV},
    }
    wanted = [
        name
        for name, fixture in (("main", "gateway"), ("reaping", "reaping_gateway"))
        if any(fixture in getattr(item, "fixturenames", ()) for item in items)
    ]
    launched: dict[str, Gateway] = {}
    # Not under pytest's basetemp: that is 0700 (and pytest resets it so), and sessions
    # of the own-uid isolation tier must pass through to their workspace and venv.
    roots = Path(tempfile.mkdtemp(prefix="codegen-it-"))
    roots.chmod(0o711)
    try:
        for name in wanted:
            launched[name] = launch_gateway(roots / name, **configs[name])
        for gw in launched.values():
            wait_ready(gw)
        yield launched
    finally:
        for gw in launched.values():
            stop_gateway(gw)
        shutil.rmtree(roots, ignore_errors=True)


@pytest.fixture(scope="session")
def gateway(gateways: dict[str, Gateway]) -> Gateway:
    return gateways["main"]


@pytest.fixture(scope="session")
def reaping_gateway(gateways: dict[str, Gateway]) -> Gateway:
    return gateways["reaping"]


@pytest_asyncio.fixture(scope="session")
async def client(gateway: Gateway) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(gateway.target, timeout=300) as c:
        yield c


SessionFactory = Callable[..., Awaitable[str]]


@pytest_asyncio.fixture
async def new_session(client: AsyncClient) -> AsyncIterator[SessionFactory]:
    """Create sessions (kwargs as for create_session); those still alive are destroyed after."""
    made: list[str] = []

    async def create(**kwargs: Any) -> str:
        info = await client.create_session(**kwargs)
        made.append(info["session_id"])
        return str(info["session_id"])

    yield create
    for session_id in made:
        try:
            await client.destroy_session(session_id)
        except CodegenError as exc:
            if exc.code != ErrorCode.NOT_FOUND:
                raise


@pytest_asyncio.fixture
async def session(new_session: SessionFactory) -> str:
    return await new_session()


# --- looking at processes ------------------------------------------------------------


def alive(pid: int) -> bool:
    """Running (or stopped) — not gone, not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    state = data[data.rindex(b")") + 2 :].split()[0]
    return state not in (b"Z", b"X")


def children(pid: int) -> list[int]:
    """Live direct children of ``pid``, by scanning /proc."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] not in (b"Z", b"X"):
            kids.append(int(entry))
    return kids


async def wait_dead(pids: list[int], within: float = 15.0) -> list[int]:
    """Poll until every pid is dead; return those still alive at the deadline."""
    deadline = time.monotonic() + within
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:  # noqa: ASYNC110 - /proc has no event to await
        await asyncio.sleep(0.1)
    return left


async def poll(
    probe: Callable[[], Awaitable[Any]], *, within: float = 60.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.1)


class Helpers:
    """Shared helpers, reached through the ``h`` fixture (conftest is not importable)."""

    alive = staticmethod(alive)
    children = staticmethod(children)
    wait_dead = staticmethod(wait_dead)
    poll = staticmethod(poll)
    start_gateway = staticmethod(start_gateway)
    stop_gateway = staticmethod(stop_gateway)

    def __init__(self, client: AsyncClient, gateway: Gateway) -> None:
        self.client = client
        self.gateway = gateway

    async def run(self, session_id: str, code: str, **kwargs: Any) -> dict[str, Any]:
        response = await self.client.call(
            "run.python", {"code": code, **kwargs}, session_id=session_id
        )
        return response.structured

    async def actor_pid(self, session_id: str) -> int:
        """The SessionActor's pid: the parent of every process a run starts."""
        result = await self.run(session_id, "import os; print(os.getppid())")
        return int(result["stdout"])

    async def read_text(self, session_id: str, path: str) -> str | None:
        try:
            response = await self.client.call("fs.read", {"path": path}, session_id=session_id)
        except CodegenError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                return None
            raise
        return str(response.structured["contents"])

    async def wait_for_file(self, session_id: str, path: str, within: float = 60.0) -> str:
        async def probe() -> str | None:
            text = await self.read_text(session_id, path)
            return text if text and text.endswith("\n") else None

        return str(await poll(probe, within=within, what=f"{path} in the workspace"))

    async def named_actors_alive(self, *names: str) -> dict[str, bool]:
        """Ask Ray from a second, read-only driver which of the named actors still live."""
        code = (
            "import sys, ray\n"
            "ray.init(address=sys.argv[1], namespace='codegen', log_to_driver=False)\n"
            "for name in sys.argv[2:]:\n"
            "    try:\n"
            "        ray.get_actor(name)\n"
            "        print(name, 'ALIVE')\n"
            "    except ValueError:\n"
            "        print(name, 'GONE')\n"
        )
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            self.gateway.ray_address,
            *names,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        assert proc.returncode == 0, f"driver failed: {err.decode()[-2000:]}"
        found = dict(line.split() for line in out.decode().splitlines() if line.count(" ") == 1)
        assert set(found) == set(names), out.decode()
        return {name: state == "ALIVE" for name, state in found.items()}


@pytest.fixture
def h(client: AsyncClient, gateway: Gateway) -> Helpers:
    return Helpers(client, gateway)
