"""A real two-node Ray cluster on this machine, and the gateway as a separate process.

Topology (started once per test session by ``local_cluster``):

- ``head``: ``ray start --head --block`` with ``codegen_node``/``codegen_session`` resources,
  so it is a worker node too (WORKER_ID=head);
- ``node-b``: ``codegen-ray worker`` (which execs ``ray start --address ... --block``);
- the gateway: ``codegen-ray serve --address``, a driver of its own.

Every node has its own Ray ``--temp-dir`` under this run's private directory; that path
is how its processes are found, and only processes started here are ever signalled
(never ``ray stop``: it would kill every Ray on the machine).

With ``--target host:port`` (or CODEGEN_E2E_TARGET) tests that only need a gateway use
that deployment; tests that need ``local_cluster`` are skipped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from codegen_ray.client import Client
from codegen_ray.errors import CodegenError, ErrorCode
from codegen_ray.procs import process_table, signal_all, start_times, with_descendants

T = TypeVar("T")
log_ = logging.getLogger("e2e")

MAX_SESSIONS = 2
OBJECT_STORE_BYTES = 150 * 1024 * 1024
NODE_START_SECONDS = 180.0
NODE_START_ATTEMPTS = 3
GATEWAY_START_SECONDS = 180.0
RPC_TIMEOUT_SECONDS = 180.0
BIN = Path(sys.executable).parent


class GaveUp(RuntimeError):
    """Raised by a ``wait_for`` condition when waiting longer cannot help (a process died)."""


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` at the deadline.

    Exceptions from ``condition`` count as "not yet", except ``GaveUp``, which ends the wait.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except GaveUp:
            raise
        except Exception as exc:  # noqa: BLE001 - remembered for the failure message
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- processes ---------------------------------------------------------------------------


def process_tree(roots: set[int], marker: str | None = None) -> set[int]:
    """``roots``, every process whose command line contains ``marker``, and all their descendants.

    Ray workers rename themselves (``ray::SessionActor``), so they are found as descendants
    of their raylet, not by their command line.
    """
    table = process_table()
    found = {pid for pid in roots if pid in table}
    if marker:
        found |= {pid for pid, proc in table.items() if marker in proc.cmdline}
    return with_descendants(found, table) - {os.getpid()}


def alive(pids: set[int]) -> set[int]:
    """The pids still running (zombies count as dead)."""
    return set(start_times(pids))


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- nodes -------------------------------------------------------------------------------


@dataclass
class Node:
    """One raylet of the local cluster, started by ``ray start --block`` in its own group."""

    worker_id: str
    temp_dir: Path  # Ray's --temp-dir: unique, so it names this node's processes
    base_workspace: Path
    proc: subprocess.Popen[bytes]
    log: Path
    head: bool = False

    def pids(self) -> set[int]:
        return process_tree({self.proc.pid}, f"{self.temp_dir}/")

    def raylet_pid(self) -> int:
        for pid, proc in process_table().items():
            if "/raylet/raylet " in proc.cmdline and f"{self.temp_dir}/" in proc.cmdline:
                return pid
        raise LookupError(f"no raylet running for node {self.worker_id}")

    def session_dir(self, session_id: str) -> Path:
        return self.base_workspace / session_id

    def kill(self) -> set[int]:
        """SIGKILL every process of this node at once, like a machine dying; returns the pids."""
        pids = self.pids()
        signal_all(pids, signal.SIGKILL)
        wait_for(lambda: not alive(pids), 30, f"node {self.worker_id}'s processes to die")
        self.proc.wait(timeout=30)
        return pids

    def stop(self, grace: float = 5.0) -> None:
        """Ask ``ray start --block`` to stop its processes, then SIGKILL what is left."""
        pids = self.pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        # Ray's own shutdown takes tens of seconds here; what is left is ours to kill.
        signal_all(alive(pids | self.pids()), signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20) -> None:
        """Signal the gateway's process group; SIGKILL it if it outlives ``timeout``."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # A SIGKILLed gateway leaves no children of its own (its Ray workers belong to
        # the raylets); make sure nothing of its group lingers.
        signal_all(alive(process_tree({self.proc.pid})), signal.SIGKILL)


@dataclass
class LocalCluster:
    root: Path
    gcs_port: int
    nodes: dict[str, Node] = field(default_factory=dict)
    gateway: Gateway | None = None
    _incarnation: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def target(self) -> str:
        assert self.gateway is not None, "the gateway is not running"
        return self.gateway.target

    def node(self, worker_id: str) -> Node:
        return self.nodes[worker_id]

    def client(self, timeout: float = RPC_TIMEOUT_SECONDS) -> Client:
        return Client(self.target, timeout=timeout)

    @staticmethod
    def running(pids: set[int]) -> set[int]:
        """Those of ``pids`` still running (zombies count as dead)."""
        return alive(pids)

    # nodes

    def _node_env(self, worker_id: str, base_workspace: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RAY_AUTH_MODE="disabled",
            WORKER_ID=worker_id,
            MAX_SESSIONS=str(MAX_SESSIONS),
            BASE_WORKSPACE=str(base_workspace),
            CODEGEN_STATE_DIR=str(self.root / "state"),
        )
        env.pop("CODEGEN_E2E_TARGET", None)
        return env

    def _spawn_node(self, worker_id: str, argv: list[str], head: bool) -> Node:
        # Ray gives a raylet a fixed 30 s to register with the GCS; on this busy 2-core
        # machine that sometimes fails, and a fresh attempt then succeeds.
        for attempt in range(1, NODE_START_ATTEMPTS + 1):
            try:
                return self._spawn_node_once(worker_id, argv, head)
            except GaveUp as exc:
                if attempt == NODE_START_ATTEMPTS or "timed out during startup" not in str(exc):
                    raise
                log_.warning("node %s did not register (attempt %d); retrying", worker_id, attempt)
        raise AssertionError("unreachable")

    def _spawn_node_once(self, worker_id: str, argv: list[str], head: bool) -> Node:
        self._incarnation += 1
        temp_dir = self.root / f"ray-{worker_id}-{self._incarnation}"
        base = self.root / f"{worker_id}-ws"
        log = self.root / f"{temp_dir.name}.log"
        argv = [*argv, f"--temp-dir={temp_dir}"]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                env=self._node_env(worker_id, base),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        node = Node(worker_id, temp_dir, base, proc, log, head)

        def started() -> bool:
            if proc.poll() is not None:
                raise GaveUp(f"node {worker_id} exited {proc.returncode}:\n{_tail(log)}")
            return "Ray runtime started" in log.read_text(errors="replace")

        began = time.monotonic()
        try:
            wait_for(started, NODE_START_SECONDS, f"Ray node {worker_id} to start")
        except (TimeoutError, GaveUp) as exc:
            node.stop(grace=0)
            raise GaveUp(f"{exc}\n--- {log}:\n{_tail(log)}") from None
        log_.info("node %s started in %.1fs", worker_id, time.monotonic() - began)
        self.nodes[worker_id] = node
        return node

    def start_head(self, worker_id: str = "head") -> Node:
        return self._spawn_node(
            worker_id,
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                f"--port={self.gcs_port}",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=1",
                f"--object-store-memory={OBJECT_STORE_BYTES}",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--ray-client-server-port={free_port()}",
                *_private_ports(),
                f"--resources={json.dumps({'codegen_node': 1, 'codegen_session': MAX_SESSIONS})}",
                "--system-config="
                + json.dumps({"health_check_period_ms": 1000, "health_check_failure_threshold": 3}),
            ],
            head=True,
        )

    def start_worker(self, worker_id: str) -> Node:
        """Join a worker node with ``codegen-ray worker`` (also to bring a killed node back)."""
        base = self.root / f"{worker_id}-ws"
        return self._spawn_node(
            worker_id,
            [
                str(BIN / "codegen-ray"),
                "worker",
                f"--address={self.address}",
                f"--worker-id={worker_id}",
                f"--max-sessions={MAX_SESSIONS}",
                f"--base-workspace={base}",
                "--num-cpus=1",
                "--",
                f"--object-store-memory={OBJECT_STORE_BYTES}",
                *_private_ports(),
            ],
            head=False,
        )

    def kill_node(self, worker_id: str) -> set[int]:
        """Kill a node for real (SIGKILL raylet, agents, session workers); returns the pids."""
        node = self.nodes[worker_id]
        if node.head:
            raise ValueError("killing the head kills the GCS and so the whole cluster")
        return node.kill()

    # gateway

    def start_gateway(self, grpc_port: int = 0) -> Gateway:
        gw_dir = self.root / "gateway"
        gw_dir.mkdir(exist_ok=True)
        port_file = gw_dir / "port"
        port_file.unlink(missing_ok=True)
        env = dict(os.environ)
        env.update(
            RAY_AUTH_MODE="disabled",
            CODEGEN_STATE_DIR=str(gw_dir / "state"),
            CODEGEN_SESSION__REAP_INTERVAL_SECONDS="2",
            CODEGEN_HTTP_PORT="0",
            LOG_LEVEL="info",
        )
        env.pop("CODEGEN_E2E_TARGET", None)
        env.pop("COORDINATOR_ADDR", None)
        self._incarnation += 1
        log = gw_dir / f"gateway-{self._incarnation}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    str(BIN / "codegen-ray"),
                    "serve",
                    f"--address={self.address}",
                    f"--grpc-port={grpc_port}",
                    f"--port-file={port_file}",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        def port() -> int:
            if proc.poll() is not None:
                raise GaveUp(f"gateway exited {proc.returncode}:\n{_tail(log)}")
            text = port_file.read_text().strip() if port_file.exists() else ""
            return int(text) if text else 0

        began = time.monotonic()
        try:
            bound = wait_for(port, GATEWAY_START_SECONDS, "the gateway's port file")
            gateway = Gateway(proc, bound, log)
            wait_for(lambda: serving(gateway.target), 60, "gRPC health SERVING")
        except (TimeoutError, GaveUp) as exc:
            Gateway(proc, 0, log).stop(signal.SIGKILL)
            raise RuntimeError(f"{exc}\n--- {log}:\n{_tail(log)}") from None
        log_.info("gateway serving on %d in %.1fs", bound, time.monotonic() - began)
        self.gateway = gateway
        return gateway

    def restart_gateway(self, sig: signal.Signals = signal.SIGKILL) -> Gateway:
        """Stop the gateway with ``sig`` (SIGKILL: a crash) and start a new one on the same port."""
        assert self.gateway is not None
        old = self.gateway
        old.stop(sig)
        self.gateway = None
        return self.start_gateway(grpc_port=old.port)

    def wait_for_worker_nodes(self, worker_ids: set[str], timeout: float = 120) -> dict[str, Any]:
        """Until the gateway's status lists exactly these worker nodes; returns the status."""

        def ready() -> dict[str, Any] | None:
            with self.client(timeout=30) as client:
                status = client.status()
            seen = {n["worker_id"] for n in status.get("nodes", [])}
            return status if seen == worker_ids else None

        return wait_for(ready, timeout, f"worker nodes {sorted(worker_ids)} in status", 0.5)

    def stop(self, grace: float = 5.0) -> None:
        """Stop the gateway, then every node at once (SIGTERM, then SIGKILL after ``grace``)."""
        began = time.monotonic()
        if self.gateway is not None:
            self.gateway.stop(signal.SIGTERM)
        log_.info("gateway stopped in %.1fs", time.monotonic() - began)
        nodes = list(self.nodes.values())
        pids = set().union(*(n.pids() for n in nodes)) if nodes else set()
        for node in nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        try:
            wait_for(lambda: all(n.proc.poll() is not None for n in nodes), grace, "nodes to stop")
        except TimeoutError:
            pass
        # Ray's own shutdown takes tens of seconds here; what is left is ours to kill.
        for node in nodes:
            node.stop(grace=0)
        signal_all(alive(pids), signal.SIGKILL)
        log_.info("cluster stopped in %.1fs", time.monotonic() - began)


def _private_ports() -> list[str]:
    # Defaults that would collide with other Rays on this machine: a fixed dashboard
    # agent port (52365) and a shared worker port range.
    return ["--dashboard-agent-listen-port=0", "--min-worker-port=0", "--max-worker-port=0"]


def serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def e2e_target(pytestconfig: pytest.Config) -> str:
    """The ``--target`` deployment, or '' to start a local cluster."""
    return str(pytestconfig.getoption("--target") or "")


@pytest.fixture(scope="session")
def local_cluster(e2e_target: str) -> Iterator[LocalCluster]:
    """Head (a worker node too) + node-b + a gateway process; started once per test session."""
    if e2e_target:
        pytest.skip(f"needs a local cluster it can kill and restart; running against {e2e_target}")
    # Short root: Ray's unix socket paths must stay under ~107 characters.
    root = Path(tempfile.mkdtemp(prefix="cge2e-", dir="/tmp"))
    cluster = LocalCluster(root=root, gcs_port=free_port())
    try:
        cluster.start_head("head")
        cluster.start_worker("node-b")
        cluster.start_gateway()
        cluster.wait_for_worker_nodes({"head", "node-b"})
        yield cluster
    finally:
        cluster.stop()
        leftovers = process_tree(set(), str(root))
        signal_all(alive(leftovers), signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
        log_.info("local cluster torn down")


@pytest.fixture(scope="session")
def gateway_target(e2e_target: str, request: pytest.FixtureRequest) -> str:
    """host:port of the gateway under test: ``--target``, else the local cluster's."""
    if e2e_target:
        return e2e_target
    cluster: LocalCluster = request.getfixturevalue("local_cluster")
    return cluster.target


@pytest.fixture
def client(gateway_target: str) -> Iterator[Client]:
    with Client(gateway_target, timeout=RPC_TIMEOUT_SECONDS) as c:
        yield c


@dataclass
class SessionTracker:
    """Creates sessions and destroys, at teardown, those the test did not destroy itself."""

    client: Client
    ids: list[str] = field(default_factory=list)

    def create(self, **kwargs: Any) -> dict[str, Any]:
        info = self.client.create_session(**kwargs)
        self.ids.append(info["session_id"])
        return info

    def destroy(self, session_id: str) -> None:
        self.client.destroy_session(session_id)
        self.ids.remove(session_id)

    def cleanup(self) -> None:
        for session_id in self.ids:
            try:
                self.client.destroy_session(session_id)
            except CodegenError as exc:
                if exc.code not in (ErrorCode.NOT_FOUND, ErrorCode.UNAVAILABLE):
                    raise
        self.ids.clear()


@pytest.fixture
def sessions(client: Client) -> Iterator[SessionTracker]:
    tracker = SessionTracker(client)
    yield tracker
    tracker.cleanup()


# --- a cluster sharing one checkpoint store (node loss, hibernation, restore) ------------
# Added for tests/e2e/test_node_loss.py; kept apart from the shared harness above.


@dataclass
class StoreCluster(LocalCluster):
    """A ``LocalCluster`` whose nodes and gateway all use one ``file://`` checkpoint store.

    ``gateway_env`` holds extra settings for the next gateway started (e.g. a short
    hibernate_after); the nodes keep their own environment.
    """

    gateway_env: dict[str, str] = field(default_factory=dict)
    # Test modules cannot import conftest: they reach the helpers through the fixture.
    wait_for = staticmethod(wait_for)
    max_sessions = MAX_SESSIONS

    @property
    def store_dir(self) -> Path:
        return self.root / "store"

    def _store_env(self) -> dict[str, str]:
        return {"CODEGEN_CHECKPOINT__STORE_URI": self.store_dir.as_uri()}

    def _node_env(self, worker_id: str, base_workspace: Path) -> dict[str, str]:
        return {**super()._node_env(worker_id, base_workspace), **self._store_env()}

    def start_gateway(self, grpc_port: int = 0) -> Gateway:
        # The base class builds the gateway's environment from os.environ.
        extra = {**self._store_env(), **self.gateway_env}
        saved = {k: os.environ.get(k) for k in extra}
        os.environ.update(extra)
        try:
            return super().start_gateway(grpc_port)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="module")
def store_cluster(e2e_target: str) -> Iterator[StoreCluster]:
    """Head + node-b + a gateway, all sharing one checkpoint store; one per test module."""
    if e2e_target:
        pytest.skip(f"needs a local cluster it can kill; running against {e2e_target}")
    root = Path(tempfile.mkdtemp(prefix="cgst-", dir="/tmp"))
    cluster = StoreCluster(root=root, gcs_port=free_port())
    try:
        cluster.start_head("head")
        cluster.start_worker("node-b")
        cluster.start_gateway()
        cluster.wait_for_worker_nodes({"head", "node-b"})
        yield cluster
    finally:
        cluster.stop()
        signal_all(alive(process_tree(set(), str(root))), signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
