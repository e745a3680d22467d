"""CheckpointStore against both backends: a directory and a real (moto) S3 server."""

from __future__ import annotations

import os
import secrets
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from codegen_ray.blobstore import BlobStore, FileBlobStore, open_blob_store
from codegen_ray.checkpoint import CheckpointStore, Manifest, blob_key, manifest_key
from codegen_ray.config import CheckpointSettings
from codegen_ray.errors import CodegenError, ErrorCode

HOUR_NS = 3600 * 1_000_000_000


@pytest.fixture(scope="module")
def s3_settings() -> Iterator[CheckpointSettings]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield CheckpointSettings(
        s3_endpoint_url=f"http://{host}:{port}",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
    )
    server.stop()


@pytest.fixture(params=["file", "s3"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return (tmp_path / "store").as_uri()
    settings: CheckpointSettings = request.getfixturevalue("s3_settings")
    bucket = f"ckpt-{secrets.token_hex(6)}"
    boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/checkpoints"


@pytest.fixture
def blobs(store_uri: str, request: pytest.FixtureRequest) -> BlobStore:
    settings = request.getfixturevalue("s3_settings") if store_uri.startswith("s3") else None
    return open_blob_store(store_uri, settings or CheckpointSettings())


class CountingStore(BlobStore):
    """Delegates to ``inner``; counts calls and can fail after ``fail_after`` blob puts."""

    def __init__(self, inner: BlobStore, fail_after: int | None = None) -> None:
        self.inner = inner
        self.fail_after = fail_after
        self.puts: list[str] = []
        self.exists_calls = 0
        self._lock = threading.Lock()  # CheckpointStore calls from a thread pool

    def exists(self, key: str) -> bool:
        with self._lock:
            self.exists_calls += 1
        return self.inner.exists(key)

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            if self.fail_after is not None and len(self.puts) >= self.fail_after:
                raise CodegenError(ErrorCode.UNAVAILABLE, "injected failure", retriable=True)
            self.puts.append(key)
        self.inner.put(key, data)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def modified_times(self, prefix: str) -> dict[str, float]:
        return self.inner.modified_times(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def write(root: Path, rel: str, data: bytes, mode: int = 0o644, age_ns: int = 0) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    if age_ns:
        then = time.time_ns() - age_ns
        os.utime(path, ns=(then, then))


def make_workspace(root: Path, age_ns: int = 0) -> dict[str, tuple[bytes, int]]:
    files = {
        "main.py": (b"print('hi')\n", 0o644),
        "bin/run.sh": (b"#!/bin/sh\necho run\n", 0o755),
        "data/blob.bin": (bytes(range(256)) * 41 + os.urandom(3000), 0o600),
        "data/empty": (b"", 0o644),
        "a/b/c/d/deep.txt": ("ünïcode\n".encode(), 0o444),
        "snake ü.txt": (b"\x00\xff\x00", 0o640),
    }
    for rel, (data, mode) in files.items():
        write(root, rel, data, mode, age_ns)
    (root / "link").symlink_to("main.py")
    (root / "dangling").symlink_to("nowhere")
    (root / "emptydir").mkdir()
    return files


def read_tree(root: Path) -> dict[str, tuple[bytes, int]]:
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            out[path.relative_to(root).as_posix()] = (
                path.read_bytes(),
                stat.S_IMODE(path.stat().st_mode),
            )
    return out


def save(store: CheckpointStore, root: Path, parent: Manifest | None = None) -> Manifest:
    return store.save(
        "s1", root, packages=["numpy==2.1.0"], env={"A": "1"}, metadata={}, parent=parent
    )


def test_round_trip(blobs: BlobStore, tmp_path: Path) -> None:
    store = CheckpointStore(blobs)
    files = make_workspace(tmp_path / "ws")
    m = store.save(
        "s1",
        tmp_path / "ws",
        packages=["numpy==2.1.0"],
        env={"PYTHONHASHSEED": "0"},
        metadata={"k": "v"},
        name="first",
    )
    assert sorted(f.path for f in m.files) == sorted(files)
    assert m.total_bytes == sum(len(d) for d, _ in files.values())
    assert m.parent is None and m.checkpoint_id.startswith("s1.")

    assert store.get(m.checkpoint_id) == m
    assert store.latest("s1") == m
    assert store.list("s1") == [m]
    assert store.latest("other") is None and store.list("other") == []

    dest = tmp_path / "restored" / "ws"
    store.restore_files(store.get(m.checkpoint_id), dest)
    assert read_tree(dest) == files
    assert not (dest / "link").exists() and not (dest / "emptydir").exists()
    assert sorted(os.listdir(dest.parent)) == ["ws"]  # no staging left behind


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_restore_gives_the_tree_to_an_owner(blobs: BlobStore, tmp_path: Path) -> None:
    store = CheckpointStore(blobs)
    make_workspace(tmp_path / "ws")
    m = save(store, tmp_path / "ws")
    dest = tmp_path / "dest"
    store.restore_files(m, dest, owner=(265001, 265002))
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    for path in (dest, *dest.rglob("*")):
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (265001, 265002), path


def test_restore_replaces_existing_dest(blobs: BlobStore, tmp_path: Path) -> None:
    store = CheckpointStore(blobs)
    files = make_workspace(tmp_path / "ws")
    m = save(store, tmp_path / "ws")
    dest = tmp_path / "dest"
    write(dest, "stale.txt", b"old")
    write(dest, "main.py", b"overwritten")
    store.restore_files(m, dest)
    assert read_tree(dest) == files
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_incremental_uploads_only_the_change(blobs: BlobStore, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    for i in range(50):
        write(ws, f"pkg/mod_{i}.py", f"x = {i}\n".encode(), age_ns=HOUR_NS)
    counting = CountingStore(blobs)
    store = CheckpointStore(counting)
    first = save(store, ws)
    blob_count = len(blobs.list("blobs/"))
    assert blob_count == 50

    counting.puts.clear()
    counting.exists_calls = 0
    write(ws, "pkg/mod_7.py", b"x = 'changed'\n")
    second = save(store, ws, parent=first)

    assert len(blobs.list("blobs/")) == blob_count + 1
    assert [k for k in counting.puts if k.startswith("blobs/")] == [
        blob_key(next(f.sha256 for f in second.files if f.path == "pkg/mod_7.py"))
    ]
    assert counting.exists_calls <= 1  # no per-file round trips for what the parent holds
    assert second.parent == first.checkpoint_id

    # Nothing changed: no blob traffic at all.
    counting.puts.clear()
    third = save(store, ws, parent=second)
    assert [k for k in counting.puts if k.startswith("blobs/")] == []
    assert [f.sha256 for f in third.files] == [f.sha256 for f in second.files]


def test_unchanged_stat_is_trusted_but_recent_files_are_rehashed(
    blobs: BlobStore, tmp_path: Path
) -> None:
    store = CheckpointStore(blobs)
    ws = tmp_path / "ws"
    write(ws, "old.txt", b"aaaa", age_ns=HOUR_NS)
    write(ws, "new.txt", b"bbbb")
    first = save(store, ws)
    old_mtime = (ws / "old.txt").stat().st_mtime_ns
    new_mtime = (ws / "new.txt").stat().st_mtime_ns
    # Same size, same mtime: an old file is taken from the parent without reading it.
    for rel, data, mtime in (("old.txt", b"AAAA", old_mtime), ("new.txt", b"BBBB", new_mtime)):
        (ws / rel).write_bytes(data)
        os.utime(ws / rel, ns=(mtime, mtime))
    second = save(store, ws, parent=first)
    shas = {f.path: f.sha256 for f in second.files}
    before = {f.path: f.sha256 for f in first.files}
    assert shas["old.txt"] == before["old.txt"]
    # ...but one modified close to the parent's save is re-read (racy timestamps).
    assert shas["new.txt"] != before["new.txt"]


def test_mode_change_alone_is_recorded(blobs: BlobStore, tmp_path: Path) -> None:
    store = CheckpointStore(blobs)
    ws = tmp_path / "ws"
    write(ws, "tool", b"#!/bin/sh\n", 0o644, age_ns=HOUR_NS)
    first = save(store, ws)
    (ws / "tool").chmod(0o755)
    second = save(store, ws, parent=first)
    assert second.files[0].mode == 0o755 and second.files[0].sha256 == first.files[0].sha256
    store.restore_files(second, tmp_path / "dest")
    assert stat.S_IMODE((tmp_path / "dest" / "tool").stat().st_mode) == 0o755


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_damaged_blob_refuses_restore(blobs: BlobStore, tmp_path: Path, damage: str) -> None:
    store = CheckpointStore(blobs)
    make_workspace(tmp_path / "ws")
    m = save(store, tmp_path / "ws")
    target = next(f for f in m.files if f.path == "data/blob.bin")
    key = blob_key(target.sha256)
    if damage == "flip":
        data = bytearray(blobs.get(key))
        data[100] ^= 0x01
        blobs.put(key, bytes(data))
    else:
        blobs.delete(key)

    dest = tmp_path / "dest"
    write(dest, "mine.txt", b"precious")
    with pytest.raises(CodegenError) as info:
        store.restore_files(m, dest)
    assert info.value.code is ErrorCode.FAILED_PRECONDITION
    assert "data/blob.bin" in info.value.message
    assert read_tree(dest) == {"mine.txt": (b"precious", 0o644)}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_tampered_manifest_is_refused(blobs: BlobStore, tmp_path: Path) -> None:
    store = CheckpointStore(blobs)
    make_workspace(tmp_path / "ws")
    m = save(store, tmp_path / "ws")
    key = manifest_key("s1", m.checkpoint_id)
    blobs.put(key, blobs.get(key).replace(b'"numpy==2.1.0"', b'"numpy==2.2.0"'))
    with pytest.raises(CodegenError) as info:
        store.get(m.checkpoint_id)
    assert info.value.code is ErrorCode.FAILED_PRECONDITION
    assert "checksum" in info.value.message


def test_failure_mid_save_keeps_previous_checkpoint(blobs: BlobStore, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    files = make_workspace(ws)
    good = save(CheckpointStore(blobs), ws)
    for i in range(20):
        write(ws, f"new/{i}.txt", f"new {i}".encode())
    failing = CountingStore(blobs, fail_after=5)
    with pytest.raises(CodegenError):
        save(CheckpointStore(failing), ws, parent=good)
    assert len([k for k in failing.puts if k.startswith("blobs/")]) == 5

    store = CheckpointStore(blobs)
    assert store.latest("s1") == good
    assert store.list("s1") == [good]
    store.restore_files(store.get(good.checkpoint_id), tmp_path / "dest")
    assert read_tree(tmp_path / "dest") == files


_KILLER = """
import os, signal, sys, threading
from pathlib import Path
from codegen_ray.blobstore import open_blob_store
from codegen_ray.checkpoint import CheckpointStore
from codegen_ray.config import CheckpointSettings

uri, settings_json, ws, kill_after = sys.argv[1:]
inner = open_blob_store(uri, CheckpointSettings.model_validate_json(settings_json))
put = inner.put
count = 0
lock = threading.Lock()

def put_then_die(key, data):
    global count
    put(key, data)
    with lock:
        count += 1
        if count >= int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)

inner.put = put_then_die
store = CheckpointStore(inner)
store.save("s1", Path(ws), packages=[], env={}, metadata={}, parent=store.latest("s1"))
"""


def test_killed_mid_save_keeps_previous_checkpoint(
    store_uri: str, blobs: BlobStore, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = request.getfixturevalue("s3_settings") if store_uri.startswith("s3") else None
    settings = settings or CheckpointSettings()
    ws = tmp_path / "ws"
    files = make_workspace(ws)
    good = save(CheckpointStore(blobs), ws)
    for i in range(20):
        write(ws, f"new/{i}.txt", f"new {i}".encode())
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, store_uri, settings.model_dump_json(), str(ws), "3"],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr.decode()

    store = CheckpointStore(blobs)
    assert len(blobs.list("blobs/")) > len(files)  # the dead save did write some blobs
    assert store.latest("s1") == good
    store.restore_files(good, tmp_path / "dest")
    assert read_tree(tmp_path / "dest") == files


def test_unknown_checkpoint_is_not_found(blobs: BlobStore) -> None:
    store = CheckpointStore(blobs)
    for bad in ("nope", "s1.0000000000001-deadbeef", "../etc.0000000000001-deadbeef"):
        with pytest.raises(CodegenError) as info:
            store.get(bad)
        assert info.value.code is ErrorCode.NOT_FOUND


def test_prune_and_collect_garbage(blobs: BlobStore, tmp_path: Path) -> None:
    store = CheckpointStore(blobs, keep_last=3)
    ws = tmp_path / "ws"
    write(ws, "shared.txt", b"in every checkpoint")
    saved: list[Manifest] = []
    for i in range(7):
        write(ws, "version.txt", f"version {i}".encode())
        saved.append(save(store, ws, parent=saved[-1] if saved else None))
    assert [m.checkpoint_id for m in store.list("s1")] == [m.checkpoint_id for m in reversed(saved)]
    assert len(blobs.list("blobs/")) == 8

    assert store.prune("s1") == 4
    assert store.list("s1") == saved[:3:-1]
    assert store.prune("s1") == 0
    # Freshly written blobs are spared: they could belong to a save still in flight.
    assert store.collect_garbage() == 0
    assert store.collect_garbage(min_age_seconds=0) == 4
    assert store.collect_garbage(min_age_seconds=0) == 0
    assert len(blobs.list("blobs/")) == 4
    for m in saved[4:]:
        dest = tmp_path / f"dest-{m.checkpoint_id}"
        store.restore_files(m, dest)
        assert (dest / "version.txt").read_bytes() == f"version {saved.index(m)}".encode()
        assert (dest / "shared.txt").read_bytes() == b"in every checkpoint"


def test_missing_workspace_is_refused(blobs: BlobStore, tmp_path: Path) -> None:
    store = CheckpointStore(blobs)
    with pytest.raises(CodegenError) as info:
        save(store, tmp_path / "gone")
    assert info.value.code is ErrorCode.FAILED_PRECONDITION
    assert store.latest("s1") is None


def test_exclude_skips_paths(blobs: BlobStore, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write(ws, "keep.py", b"1")
    write(ws, ".venv/lib/site.py", b"2")
    m = CheckpointStore(blobs).save("s1", ws, packages=[], env={}, metadata={}, exclude={".venv"})
    assert [f.path for f in m.files] == ["keep.py"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_s3_is_unavailable_and_retriable(tmp_path: Path) -> None:
    settings = CheckpointSettings(
        s3_endpoint_url=f"http://127.0.0.1:{_closed_port()}",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
    )
    store = CheckpointStore(open_blob_store("s3://bucket/prefix", settings))
    write(tmp_path / "ws", "a.txt", b"a")
    calls: list[Callable[[], object]] = [
        lambda: store.latest("s1"),
        lambda: store.get("s1.0000000000001-deadbeef"),
        lambda: save(store, tmp_path / "ws"),
    ]
    for call in calls:
        with pytest.raises(CodegenError) as info:
            call()
        assert info.value.code is ErrorCode.UNAVAILABLE and info.value.retriable


@pytest.mark.parametrize(
    "uri", ["ftp://host/x", "file://relative/path", "s3:///no-bucket", "/bare/path"]
)
def test_bad_store_uri_is_invalid(uri: str) -> None:
    with pytest.raises(CodegenError) as info:
        open_blob_store(uri, CheckpointSettings())
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_file_store_put_is_atomic_and_lists_no_temp_files(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "s")
    store.put("blobs/ab/abc", b"1")
    (tmp_path / "s" / "blobs" / "ab" / ".abc.tmp-dead").write_bytes(b"partial")
    store.put("blobs/ab/abc", b"2")
    assert store.list("blobs/") == ["blobs/ab/abc"] and store.get("blobs/ab/abc") == b"2"
    with pytest.raises(CodegenError) as info:
        store.get("../outside")
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
