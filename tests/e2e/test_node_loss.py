"""Issue 3 end to end: restore onto any node, hibernate and wake, survive a killed node.

One cluster for the module (``store_cluster``: head + node-b + a gateway process, one
shared ``file://`` checkpoint store). The tests run in file order; the last one kills
node-b for real.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from codegen_ray.client import Client
from codegen_ray.errors import CodegenError, ErrorCode

pytestmark = pytest.mark.e2e
StoreCluster = Any  # tests/e2e/conftest.py:StoreCluster (conftest is not importable)
CLI = str(Path(sys.executable).parent / "codegen-ray")

PACKAGE = "six"
FILES: dict[str, bytes] = {
    "notes/readme.txt": "acknowledged text: héllo ✓\n".encode(),
    "data/blob.bin": bytes(range(256)) * 64 + os.urandom(4096),
    "deep/a/b/c/empty.dat": b"",
}


# --- helpers -------------------------------------------------------------------------


def write_files(client: Client, session_id: str, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        response = client.call(
            "fs.write",
            {"path": path, "contents": base64.b64encode(data).decode(), "encoding": "base64"},
            session_id=session_id,
        )
        assert not response.is_error, response.text
        assert "checkpoint_warning" not in response.structured, response.structured


def read_bytes(client: Client, session_id: str, path: str) -> bytes:
    response = client.call("fs.read", {"path": path, "encoding": "base64"}, session_id=session_id)
    assert not response.is_error, response.text
    return base64.b64decode(response.structured["contents"])


def assert_files(client: Client, session_id: str, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        assert read_bytes(client, session_id, path) == data, f"{path} differs after restore"


def install(client: Client, session_id: str) -> None:
    response = client.call("pkg.install", {"packages": PACKAGE}, session_id=session_id)
    assert not response.is_error, response.text
    assert "checkpoint_warning" not in response.structured, response.structured


def assert_importable(client: Client, session_id: str) -> None:
    run = client.call(
        "run.python",
        {"code": f"import {PACKAGE}; print({PACKAGE}.__name__)"},
        session_id=session_id,
    )
    assert run.structured["exit_code"] == 0, run.structured["stderr"]
    assert run.structured["stdout"].strip() == PACKAGE


def live_on(client: Client, worker_id: str) -> int:
    nodes = {n["worker_id"]: n for n in client.status()["nodes"]}
    return int(nodes[worker_id]["live_sessions"])


def stray_dirs(cluster: StoreCluster, client: Client, worker_id: str) -> set[str]:
    """Session directories on a node that belong to no live or warm session."""
    nodes = {n["worker_id"]: n for n in client.status()["nodes"]}
    live = {s["session_id"] for s in client.list_sessions() if s.get("worker_id") == worker_id}
    base = cluster.node(worker_id).base_workspace
    names = [p.name for p in base.iterdir()] if base.exists() else []
    dirs = {n for n in names if not n.startswith(".")}
    extra = dirs - live
    # Warm sessions own directories too; anything beyond them was half-made.
    return extra if len(extra) > int(nodes[worker_id]["warm_sessions"]) else set()


def cli(cluster: StoreCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args, "--target", cluster.target],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )


# --- restore onto any node, and what it refuses ------------------------------------------


def test_restore_checkpoint_onto_other_node_and_refusals(store_cluster: StoreCluster) -> None:
    cluster = store_cluster
    made: list[str] = []
    with cluster.client() as client:
        info = client.create_session(node="head")
        source = info["session_id"]
        made.append(source)
        write_files(client, source, FILES)
        install(client, source)
        taken = json.loads(cli(cluster, "session", "checkpoint", source, "--name", "e2e").stdout)
        assert taken["name"] == "e2e" and taken["file_count"] >= len(FILES)
        listed = json.loads(cli(cluster, "session", "checkpoints", source).stdout)
        assert taken["checkpoint_id"] in {c["checkpoint_id"] for c in listed}

        restored = cli(
            cluster,
            "session",
            "restore",
            taken["checkpoint_id"],
            "--node",
            "node-b",
            "--new-session",
        )
        assert restored.returncode == 0, restored.stderr
        copy = json.loads(restored.stdout)
        made.append(copy["session_id"])
        assert copy["session_id"] != source and copy["worker_id"] == "node-b"
        assert_files(client, copy["session_id"], FILES)
        assert_importable(client, copy["session_id"])
        assert_files(client, source, FILES)  # the original is untouched

        try:
            # node-b full: RESOURCE_EXHAUSTED, and nothing half-made.
            while live_on(client, "node-b") < cluster.max_sessions:
                made.append(client.create_session(node="node-b")["session_id"])
            before = {s["session_id"] for s in client.list_sessions()}
            full = cli(
                cluster,
                "session",
                "restore",
                taken["checkpoint_id"],
                "--node",
                "node-b",
                "--new-session",
            )
            assert full.returncode == 1 and "RESOURCE_EXHAUSTED" in full.stderr, full.stderr
            with pytest.raises(CodegenError) as moved:  # a move of the session itself too
                client.restore(taken["checkpoint_id"], node="node-b")
            assert moved.value.code == ErrorCode.RESOURCE_EXHAUSTED
            assert {s["session_id"] for s in client.list_sessions()} == before
            assert client.get_session(source)["worker_id"] == "head"
            assert live_on(client, "node-b") == cluster.max_sessions
            assert not stray_dirs(cluster, client, "node-b")

            for unknown in (f"{source}.0000000000001-deadbeef", "no-such-checkpoint"):
                with pytest.raises(CodegenError) as missing:
                    client.restore(unknown, new_session=True)
                assert missing.value.code == ErrorCode.NOT_FOUND, missing.value

            # A flipped byte in a blob: refused with a clear error, no session made.
            victim = b"this blob will be corrupted " + os.urandom(32)
            write_files(client, source, {"victim.bin": victim})
            corrupt = client.checkpoint(source, "corrupt")["checkpoint_id"]
            sha = hashlib.sha256(victim).hexdigest()
            blob = cluster.store_dir / "blobs" / sha[:2] / sha
            data = bytearray(blob.read_bytes())
            data[3] ^= 0xFF
            blob.write_bytes(bytes(data))
            # The session's own state no longer needs the bad blob.
            client.call("fs.delete", {"path": "victim.bin"}, session_id=source)
            try:
                with pytest.raises(CodegenError) as refused:
                    client.restore(corrupt, new_session=True)
                assert refused.value.code == ErrorCode.FAILED_PRECONDITION, refused.value
                assert "corrupt" in refused.value.message and sha in refused.value.message
                with pytest.raises(CodegenError) as in_place:
                    client.restore(corrupt)
                assert in_place.value.code == ErrorCode.FAILED_PRECONDITION
                assert {s["session_id"] for s in client.list_sessions()} == before
                assert_files(client, source, FILES)
                # A failed move onto another node puts the session back as it was.
                client.destroy_session(made.pop())
                with pytest.raises(CodegenError) as moved_bad:
                    client.restore(corrupt, node="node-b")
                assert moved_bad.value.code == ErrorCode.FAILED_PRECONDITION
                assert_files(client, source, FILES)
                assert_importable(client, source)
                for worker_id in ("head", "node-b"):
                    cluster.wait_for(
                        lambda w=worker_id: not stray_dirs(cluster, client, w),
                        60,
                        f"no half-made session on {worker_id}",
                    )
            finally:
                blob.write_bytes(victim)  # later checkpoints reuse the blob
        finally:
            for session_id in made:
                client.destroy_session(session_id)


# --- hibernate, gateway restart, wake elsewhere ------------------------------------------


def test_hibernated_session_wakes_on_other_node_after_gateway_restart(
    store_cluster: StoreCluster,
) -> None:
    cluster = store_cluster
    cluster.gateway_env = {
        "CODEGEN_SESSION__HIBERNATE_AFTER_SECONDS": "2",
        "CODEGEN_SESSION__REAP_INTERVAL_SECONDS": "1",
    }
    cluster.restart_gateway(signal.SIGTERM)
    cluster.gateway_env = {}
    fillers: list[str] = []
    with cluster.client() as client:
        info = client.create_session(node="node-b")
        session_id = info["session_id"]
        write_files(client, session_id, FILES)
        install(client, session_id)
        live = live_on(client, "node-b")
        asleep = cluster.wait_for(
            lambda: (got := client.get_session(session_id))["state"] == "hibernated" and got,
            60,
            "the idle session to hibernate",
        )
        assert asleep["session_id"] == session_id and asleep["last_checkpoint_id"]
        assert live_on(client, "node-b") == live - 1  # its slot is free
        assert not cluster.node("node-b").session_dir(session_id).exists()

    # A crash of the gateway; the new one (default hibernate_after) reads the markers.
    cluster.restart_gateway(signal.SIGKILL)
    with cluster.client() as client:
        try:
            assert client.get_session(session_id)["state"] == "hibernated"
            assert session_id in {s["session_id"] for s in client.list_sessions()}
            while live_on(client, "node-b") < cluster.max_sessions:  # the wake must go elsewhere
                fillers.append(client.create_session(node="node-b")["session_id"])

            began = time.monotonic()
            assert_files(client, session_id, FILES)  # the first call wakes it
            woke = time.monotonic() - began
            got = client.get_session(session_id)
            assert got["state"] != "hibernated" and got["worker_id"] == "head"
            assert cluster.node("head").session_dir(session_id).exists()
            assert_importable(client, session_id)
            print(f"\nwake on another node after a gateway restart: {woke:.2f}s")
        finally:
            for sid in [*fillers, session_id]:
                client.destroy_session(sid)


# --- node loss ---------------------------------------------------------------------------

# Sleeps only on node-b, so the copy of the call retried on the head finishes.
INFLIGHT = (
    "import os, pathlib, time\n"
    "pathlib.Path('started.txt').write_text(os.getcwd())\n"
    "if '/node-b-ws/' in os.getcwd():\n"
    "    time.sleep(600)\n"
    "pathlib.Path('after.txt').write_text('done')\n"
    "print('finished')\n"
)


def test_session_survives_its_node_being_killed(store_cluster: StoreCluster) -> None:
    cluster = store_cluster
    with cluster.client() as client:
        info = client.create_session(node="node-b")
        session_id = info["session_id"]
        assert info["worker_id"] == "node-b"
        write_files(client, session_id, FILES)
        install(client, session_id)

        with ThreadPoolExecutor(1) as pool:
            inflight = pool.submit(
                client.call,
                "run.python",
                {"code": INFLIGHT, "timeout_seconds": 900},
                session_id=session_id,
            )
            started = cluster.wait_for(
                lambda: read_bytes(client, session_id, "started.txt"), 60, "the call to start"
            )
            assert b"/node-b-ws/" in started, started

            cluster.kill_node("node-b")
            killed = time.monotonic()
            # A read-only call made right after the kill is retried transparently.
            served = read_bytes(client, session_id, "notes/readme.txt")
            recovered = time.monotonic() - killed
            assert served == FILES["notes/readme.txt"]

            try:
                outcome: Any = inflight.result(timeout=300)
            except CodegenError as exc:
                outcome = exc
        if isinstance(outcome, CodegenError):
            assert outcome.code == ErrorCode.UNAVAILABLE and outcome.retriable, outcome
        else:  # recovered transparently: then it ran to completion on the head
            assert outcome.structured["exit_code"] == 0, outcome.structured

        got = client.get_session(session_id)
        assert got["session_id"] == session_id and got["worker_id"] == "head"
        assert cluster.node("head").session_dir(session_id).exists()
        assert_files(client, session_id, FILES)
        assert_importable(client, session_id)

        retry = client.call(
            "run.python", {"code": INFLIGHT, "timeout_seconds": 120}, session_id=session_id
        )
        assert retry.structured["exit_code"] == 0, retry.structured["stderr"]
        assert read_bytes(client, session_id, "after.txt") == b"done"
        print(f"\nnode-b killed; session served from the head after {recovered:.2f}s")
        client.destroy_session(session_id)
