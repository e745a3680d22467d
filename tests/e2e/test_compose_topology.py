"""compose.yml's topology as local processes, started with the containers' own commands.

- ``head``: ``codegen-ray head`` (Ray head with the dashboard and metrics export port, a
  worker node itself, and the gateway in the foreground), on loopback and free ports,
  MAX_SESSIONS=1 so placement has to use the worker;
- ``w1``: ``codegen-ray worker --address ... --temp-dir <its own>`` with its own
  WORKER_ID and BASE_WORKSPACE (started by the shared ``LocalCluster.start_worker``).

Both share one checkpoint store (compose: MinIO; here a directory), so the worker's
sessions can come back on the head when the worker dies. Only processes started here
are ever signalled; never ``ray stop``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from ray.util.state import list_actors

from codegen_ray.client import Client
from codegen_ray.ray_node import node_processes, session_dir


def _e2e_harness() -> ModuleType:
    """tests/e2e/conftest.py as pytest loaded it: several conftests share the name, so a
    test module cannot import it, but its helpers are meant to be reused."""
    path = str(Path(__file__).with_name("conftest.py"))
    return next(m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == path)


e2e = _e2e_harness()
wait_for, free_port, serving, alive = e2e.wait_for, e2e.free_port, e2e.serving, e2e.alive
process_tree, signal_all, tail = e2e.process_tree, e2e.signal_all, e2e._tail
BIN: Path = e2e.BIN
RPC_TIMEOUT_SECONDS: float = e2e.RPC_TIMEOUT_SECONDS

pytestmark = pytest.mark.e2e

CLI = str(BIN / "codegen-ray")
HEAD_MAX_SESSIONS = 1


@dataclass
class Head:
    proc: subprocess.Popen[bytes]
    temp_dir: Path
    log: Path
    grpc_port: int = 0
    http_port: int = 0
    dashboard_port: int = 0
    metrics_export_port: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def get(self, port: int, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.read().decode()


@dataclass
class Topology:
    head: Head
    cluster: Any  # the shared harness's LocalCluster; holds the worker node

    def client(self) -> Client:
        return Client(self.head.target, timeout=RPC_TIMEOUT_SECONDS)


def start_head(root: Path, gcs_port: int) -> Head:
    """``codegen-ray head`` as the head container runs it, on loopback and free ports."""
    port_file = root / "head.port"
    head = Head(
        proc=None,  # type: ignore[arg-type]
        temp_dir=root / "ray-head",
        log=root / "head.log",
        dashboard_port=free_port(),
        metrics_export_port=free_port(),
    )
    env = dict(os.environ)
    for name in ("CODEGEN_E2E_TARGET", "COORDINATOR_ADDR", "RAY_ADDRESS"):
        env.pop(name, None)
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        WORKER_ID="head",
        MAX_SESSIONS=str(HEAD_MAX_SESSIONS),
        BASE_WORKSPACE=str(root / "head-ws"),
        CODEGEN_STATE_DIR=str(root / "state"),  # the workers' too: one checkpoint store
        CODEGEN_HOST="127.0.0.1",
        GRPC_PORT="0",
        CODEGEN_HTTP_PORT="0",
        LOG_LEVEL="info",
    )
    with head.log.open("wb") as out:
        head.proc = subprocess.Popen(
            [
                CLI,
                "head",
                f"--port={gcs_port}",
                f"--dashboard-port={head.dashboard_port}",
                f"--metrics-export-port={head.metrics_export_port}",
                f"--temp-dir={head.temp_dir}",
                "--num-cpus=1",
                f"--port-file={port_file}",
                "--",
                f"--object-store-memory={e2e.OBJECT_STORE_BYTES}",
                f"--ray-client-server-port={free_port()}",
                *e2e._private_ports(),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def port() -> int:
        if head.proc.poll() is not None:
            return -1  # wait_for retries on exceptions: end the wait, then report
        text = port_file.read_text().strip() if port_file.exists() else ""
        return int(text) if text else 0

    try:
        head.grpc_port = wait_for(port, e2e.GATEWAY_START_SECONDS, "codegen-ray head's port file")
        if head.grpc_port < 0:
            raise RuntimeError(f"codegen-ray head exited {head.proc.returncode}")
        head.http_port = int(port_file.with_name(port_file.name + ".http").read_text())
        wait_for(lambda: serving(head.target), 60, "gRPC health SERVING")
    except (TimeoutError, RuntimeError) as exc:
        kill_head(head)
        raise RuntimeError(f"{exc}\n--- {head.log}:\n{tail(head.log)}") from None
    return head


def kill_head(head: Head) -> None:
    """SIGKILL whatever is left of the head: its command and its node's processes."""
    pids = process_tree({head.proc.pid}, f"{head.temp_dir}/")
    signal_all(alive(pids), signal.SIGKILL)
    if head.proc.poll() is None:
        head.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def topology(e2e_target: str) -> Iterator[Topology]:
    if e2e_target:
        pytest.skip(f"starts its own head and worker; running against {e2e_target}")
    root = Path(tempfile.mkdtemp(prefix="cgtopo-", dir="/tmp"))  # short: Ray's socket paths
    cluster = e2e.LocalCluster(root=root, gcs_port=free_port())
    head = None
    try:
        head = start_head(root, cluster.gcs_port)
        cluster.start_worker("w1")
        topo = Topology(head, cluster)

        def both_nodes() -> bool:
            with topo.client() as client:
                return {n["worker_id"] for n in client.status()["nodes"]} == {"head", "w1"}

        wait_for(both_nodes, 120, "head and w1 in the gateway's status", 0.5)
        yield topo
    finally:
        if head is not None:
            if head.proc.poll() is None:
                head.proc.send_signal(signal.SIGTERM)
                try:
                    head.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
            kill_head(head)
        cluster.stop()
        signal_all(alive(process_tree(set(), str(root))), signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def call(client: Client, session_id: str, tool: str, **arguments: Any) -> dict[str, Any]:
    response = client.call(tool, arguments, session_id=session_id)
    assert not response.is_error, response.text
    return response.structured


def session_actors(head: Head) -> dict[str, Any]:
    """Live SessionActors by name, from the dashboard's state API."""
    actors = list_actors(
        address=head.dashboard,
        filters=[("class_name", "=", "SessionActor"), ("state", "=", "ALIVE")],
        limit=1000,
    )
    return {a.name: a for a in actors}


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_sessions_land_on_the_worker_and_show_in_state_api_and_metrics(
    topology: Topology,
) -> None:
    head = topology.head
    with topology.client() as client:
        nodes = {n["worker_id"]: n for n in client.status()["nodes"]}
        assert nodes["head"]["max_sessions"] == HEAD_MAX_SESSIONS
        on_head = client.create_session(node="head")
        pinned = client.create_session(node="w1")
        placed = client.create_session()  # the head is full: placement picks the worker
        assert on_head["worker_id"] == "head"
        assert pinned["worker_id"] == "w1"
        assert placed["worker_id"] == "w1"
        try:
            for info in (on_head, pinned, placed):
                sid = info["session_id"]
                call(client, sid, "fs.write", path="where.txt", contents=info["worker_id"])
                assert (
                    call(client, sid, "fs.read", path="where.txt")["contents"] == info["worker_id"]
                )
                out = call(client, sid, "run.python", code="print(open('where.txt').read())")
                assert out["stdout"].strip() == info["worker_id"]
            for info in (pinned, placed):  # the workspaces are on w1's disk
                ws = topology.cluster.node("w1").session_dir(info["session_id"]) / "workspace"
                assert (ws / "where.txt").read_text() == "w1"

            # The dashboard's state API lists them by name, alive, on their node.
            actors = wait_for(
                lambda: (
                    (a := session_actors(head))
                    and all(f"session:{i['session_id']}" in a for i in (on_head, pinned, placed))
                    and a
                ),
                120,
                "the SessionActors in the state API",
                1.0,
            )
            for info in (on_head, pinned, placed):
                actor = actors[f"session:{info['session_id']}"]
                assert actor.state == "ALIVE"
                assert actor.ray_namespace == "codegen"
                assert actor.node_id == info["node_id"]
            listed = subprocess.run(
                [str(BIN / "ray"), "list", "actors", f"--address={head.dashboard}",
                 "--filter=class_name=WorkerNodeActor", "--filter=state=ALIVE",
                 "--format=json", "--limit=1000"],
                capture_output=True, text=True, timeout=120,
                env={**os.environ, "RAY_AUTH_MODE": "disabled"},
            )  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            names = {a["name"] for a in json.loads(listed.stdout)}
            assert {f"worker:{n['node_id']}" for n in nodes.values()} <= names

            # The gateway's /metrics counts the calls and reports sessions and capacity.
            got = metric_samples(head.get(head.http_port, "/metrics"))
            for tool in ("fs.write", "fs.read", "run.python"):
                key = ("codegen_tool_calls_total", frozenset({("tool", tool), ("status", "ok")}))
                assert got.get(key, 0) >= 3, (tool, sorted(k for k in got if k[0] == key[0]))
            w1 = {("worker_id", "w1"), ("node_id", nodes["w1"]["node_id"])}
            head_node = {("worker_id", "head"), ("node_id", nodes["head"]["node_id"])}
            assert got[("codegen_sessions", frozenset(w1 | {("state", "live")}))] >= 2
            assert got[("codegen_capacity_used_ratio", frozenset(head_node))] == 1.0
            assert got[("codegen_capacity_sessions", frozenset(w1))] == nodes["w1"]["max_sessions"]

            # Ray's own export on the head (what the dashboard's Metrics page and Prometheus
            # read) carries the gateway's counters and the head session's checkpoint times.
            # Ray exports on an interval: wait until the export has caught up with the calls.
            write_ok = frozenset({("tool", "fs.write"), ("status", "ok")})

            def exported() -> bool:
                ray_got = metric_samples(head.get(head.metrics_export_port, "/metrics"))
                names = {name for name, _ in ray_got}
                writes = any(
                    name == "ray_codegen_tool_calls_total" and write_ok <= labels and value >= 3
                    for (name, labels), value in ray_got.items()
                )
                return writes and "ray_codegen_checkpoint_seconds_count" in names

            assert wait_for(exported, 90, "codegen_ metrics in Ray's export", 2.0)
        finally:
            for info in (on_head, pinned, placed):
                client.destroy_session(info["session_id"])


def test_status_prints_capacity_per_node(topology: Topology) -> None:
    result = subprocess.run(
        [CLI, "status", "--target", topology.head.target],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert rows["dashboard:"][1] == topology.head.dashboard
    assert rows["capacity:"][1].endswith(f"/{HEAD_MAX_SESSIONS + 2}")
    assert f"/{HEAD_MAX_SESSIONS}" in rows["head"][3]
    assert rows["w1"][3].endswith("/2")


def test_worker_node_loss_brings_its_sessions_back_on_the_head(topology: Topology) -> None:
    """SIGKILL every process of w1; its session is restored on the head, files intact."""
    with topology.client() as client:
        info = client.create_session(node="w1")
        sid = info["session_id"]
        call(client, sid, "fs.write", path="notes/data.txt", contents="kept across node loss\n")
        call(client, sid, "run.python", code="open('made.txt', 'w').write('by python')")

        killed = topology.cluster.kill_node("w1")
        assert killed and not alive(killed)

        def moved() -> dict[str, Any] | None:
            now = client.get_session(sid)
            return now if now["worker_id"] == "head" and now["state"] != "hibernated" else None

        now = wait_for(moved, 120, f"session {sid} restored on the head", 1.0)
        assert now["node_id"] != info["node_id"]
        assert call(client, sid, "fs.read", path="notes/data.txt")["contents"] == (
            "kept across node loss\n"
        )
        assert call(client, sid, "fs.read", path="made.txt")["contents"] == "by python"
        actor = session_actors(topology.head)[f"session:{sid}"]
        assert actor.node_id == now["node_id"]
        client.destroy_session(sid)


def test_head_stops_its_own_ray_on_sigterm(topology: Topology) -> None:
    """Last: SIGTERM to ``codegen-ray head`` stops the gateway, then its own Ray processes."""
    head = topology.head
    session = session_dir(head.temp_dir)
    assert node_processes(session), "the head's Ray should be running"
    head.proc.send_signal(signal.SIGTERM)
    assert head.proc.wait(timeout=90) == 0, tail(head.log)
    assert "stopping Ray (" in head.log.read_text()
    assert not node_processes(session), tail(head.log)
