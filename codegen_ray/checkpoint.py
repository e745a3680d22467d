"""Content-addressed, incremental, verified checkpoints of a session workspace.

Layout in the blob store::

    blobs/<sha[:2]>/<sha>                          file contents, by sha256
    manifests/<session_id>/<checkpoint_id>.json    one per checkpoint, written last

A checkpoint id is ``<session_id>.<ms:013d>-<8 hex>``: it names its session (so ``get``
finds the manifest without an index) and sorts by creation time within the session.
A manifest carries a sha256 over its canonical JSON: the compact JSON of the model without
its ``checksum`` field. The stored file is that JSON with ``,"checksum":"<hex>"`` spliced
in before the final brace, so a load verifies the exact bytes without re-serialising.

Saves are incremental: a file whose (size, mtime_ns) match the parent manifest is not
re-read, and a blob the parent references is not looked up. Blobs go first and the
manifest last, so a save that dies halfway leaves the previous checkpoint the latest.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path, PurePosixPath
from typing import NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from codegen_ray.blobstore import MAX_CONCURRENCY, BlobStore, open_blob_store
from codegen_ray.config import Settings
from codegen_ray.errors import CodegenError, ErrorCode, invalid, not_found

# A file modified this close to the parent's save may have changed again within one
# timestamp tick after the parent saw it, so its (size, mtime) are not trusted.
RACY_WINDOW_NS = 2_000_000_000
# Unreferenced blobs younger than this may belong to a save still in flight.
GC_MIN_AGE_SECONDS = 600.0

_SESSION = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_SESSION_RE = re.compile(_SESSION)
_ID_RE = re.compile(rf"(?P<session>{_SESSION})\.\d{{13}}-[0-9a-f]{{8}}")
_BLOB_RE = re.compile(r"blobs/[0-9a-f]{2}/(?P<sha>[0-9a-f]{64})")
_CHECKSUM_TAIL = re.compile(rb',"checksum":"([0-9a-f]{64})"\}\Z')

T = TypeVar("T")
R = TypeVar("R")


class ManifestFile(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    mode: int
    size: int
    sha256: str
    mtime_ns: int = 0


class Manifest(BaseModel):
    checkpoint_id: str
    session_id: str
    name: str = ""
    created_ms: int
    parent: str | None
    files: list[ManifestFile]
    packages: list[str]
    env: dict[str, str]
    metadata: dict[str, str]
    total_bytes: int
    checksum: str = ""


def blob_key(sha: str) -> str:
    return f"blobs/{sha[:2]}/{sha}"


def manifest_key(session_id: str, checkpoint_id: str) -> str:
    return f"manifests/{session_id}/{checkpoint_id}.json"


def encode_manifest(manifest: Manifest) -> tuple[Manifest, bytes]:
    """The manifest with its checksum filled in, and its stored bytes."""
    body = manifest.model_dump_json(exclude={"checksum"}).encode()
    checksum = hashlib.sha256(body).hexdigest()
    data = body[:-1] + b',"checksum":"' + checksum.encode() + b'"}'
    return manifest.model_copy(update={"checksum": checksum}), data


def decode_manifest(data: bytes, where: str) -> Manifest:
    tail = _CHECKSUM_TAIL.search(data)
    if tail is None:
        raise _corrupt(f"manifest {where} is corrupt: no checksum")
    if hashlib.sha256(data[: tail.start()] + b"}").hexdigest() != tail[1].decode():
        raise _corrupt(f"manifest {where} is corrupt: checksum mismatch")
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as e:
        raise _corrupt(f"manifest {where} is invalid: {e}") from e


def _corrupt(message: str) -> CodegenError:
    return CodegenError(ErrorCode.FAILED_PRECONDITION, message)


def _local_error(what: str, e: OSError) -> CodegenError:
    full = e.errno in (errno.ENOSPC, errno.EDQUOT)
    return CodegenError(
        ErrorCode.RESOURCE_EXHAUSTED if full else ErrorCode.FAILED_PRECONDITION, f"{what}: {e}"
    )


def _parallel(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """``map`` over a thread pool that stops at the first failure and re-raises it."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(MAX_CONCURRENCY, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in futures:
            if future.done() and not future.cancelled() and future.exception() is not None:
                future.result()  # re-raises the first failure, not a CancelledError
        return [future.result() for future in futures]


class _Entry(NamedTuple):
    rel: str
    path: str
    size: int
    mtime_ns: int
    mode: int


def scan_workspace(root: Path, exclude: Collection[str] = ()) -> list[_Entry]:
    """Regular files under ``root`` by relative ``/`` path; symlinks are skipped."""
    out: list[_Entry] = []
    stack = [(str(root), "")]
    while stack:
        directory, rel = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue  # removed while we walked
        except OSError as e:
            raise _local_error(f"scan {directory}", e) from e
        for entry in entries:
            name = rel + entry.name
            if name in exclude:
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, name + "/"))
            elif entry.is_file(follow_symlinks=False):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                out.append(_Entry(name, entry.path, st.st_size, st.st_mtime_ns, st.st_mode))
    return out


class CheckpointStore:
    def __init__(self, blobs: BlobStore, *, keep_last: int = 5) -> None:
        if keep_last < 1:
            raise invalid("keep_last must be at least 1")
        self.blobs = blobs
        self.keep_last = keep_last
        self._lock = threading.Lock()
        self._last_ms: dict[str, int] = {}

    def _new_id(self, session_id: str, parent: Manifest | None) -> tuple[str, int]:
        # Strictly increasing per session, so ids sort in save order even within one ms.
        with self._lock:
            floor = max(self._last_ms.get(session_id, 0), parent.created_ms if parent else 0)
            ms = max(time.time_ns() // 1_000_000, floor + 1)
            self._last_ms[session_id] = ms
        return f"{session_id}.{ms:013d}-{secrets.token_hex(4)}", ms

    def save(
        self,
        session_id: str,
        root: Path,
        *,
        packages: list[str],
        env: dict[str, str],
        metadata: dict[str, str],
        name: str = "",
        parent: Manifest | None = None,
        exclude: Collection[str] = (),
    ) -> Manifest:
        """Checkpoint ``root``. ``exclude`` names relative paths to skip (e.g. ``.venv``)."""
        if not _SESSION_RE.fullmatch(session_id):
            raise invalid(f"bad session id {session_id!r}")
        if not root.is_dir():  # never record a vanished workspace as an empty checkpoint
            raise CodegenError(ErrorCode.FAILED_PRECONDITION, f"workspace {root} is missing")
        checkpoint_id, created_ms = self._new_id(session_id, parent)
        entries = scan_workspace(root, exclude)

        previous = {f.path: f for f in parent.files} if parent else {}
        trust_before = parent.created_ms * 1_000_000 - RACY_WINDOW_NS if parent else 0
        files: dict[str, ManifestFile] = {}
        todo: list[_Entry] = []
        for entry in entries:
            old = previous.get(entry.rel)
            if (
                old is not None
                and old.size == entry.size
                and old.mtime_ns == entry.mtime_ns
                and entry.mtime_ns < trust_before
            ):
                mode = stat.S_IMODE(entry.mode)
                files[entry.rel] = (
                    old if old.mode == mode else old.model_copy(update={"mode": mode})
                )
            else:
                todo.append(entry)

        uploader = _Uploader(self.blobs, {f.sha256 for f in previous.values()})
        for stored in _parallel(uploader.store, todo):
            if stored is not None:
                files[stored.path] = stored

        ordered = [files[p] for p in sorted(files)]
        manifest = Manifest(
            checkpoint_id=checkpoint_id,
            session_id=session_id,
            name=name,
            created_ms=created_ms,
            parent=parent.checkpoint_id if parent else None,
            files=ordered,
            packages=list(packages),
            env=dict(env),
            metadata=dict(metadata),
            total_bytes=sum(f.size for f in ordered),
        )
        manifest, data = encode_manifest(manifest)
        self.blobs.put(manifest_key(session_id, checkpoint_id), data)
        return manifest

    def get(self, checkpoint_id: str) -> Manifest:
        match = _ID_RE.fullmatch(checkpoint_id)
        if match is None:
            raise not_found(f"no checkpoint {checkpoint_id!r}")
        key = manifest_key(match["session"], checkpoint_id)
        try:
            data = self.blobs.get(key)
        except CodegenError as e:
            if e.code is ErrorCode.NOT_FOUND:
                raise not_found(f"no checkpoint {checkpoint_id!r}") from e
            raise
        manifest = decode_manifest(data, checkpoint_id)
        if manifest.checkpoint_id != checkpoint_id:
            raise _corrupt(f"manifest {checkpoint_id} holds {manifest.checkpoint_id}")
        return manifest

    def _ids(self, session_id: str) -> builtins.list[str]:
        """Checkpoint ids of a session, oldest first."""
        prefix = f"manifests/{session_id}/"
        ids = (k[len(prefix) : -len(".json")] for k in self.blobs.list(prefix))
        return sorted(i for i in ids if _ID_RE.fullmatch(i))

    def list(self, session_id: str) -> list[Manifest]:
        """Newest first."""
        return _parallel(self.get, self._ids(session_id)[::-1])

    def latest(self, session_id: str) -> Manifest | None:
        ids = self._ids(session_id)
        return self.get(ids[-1]) if ids else None

    def restore_files(
        self, manifest: Manifest, dest: Path, owner: tuple[int, int] | None = None
    ) -> None:
        """Make ``dest`` hold exactly the checkpoint's files, or leave it untouched.

        With ``owner`` (uid, gid) the restored tree is theirs and ``dest`` mode 0700.
        """
        for f in manifest.files:
            p = PurePosixPath(f.path)
            if p.is_absolute() or ".." in p.parts or not f.path or str(p) != f.path:
                raise _corrupt(f"checkpoint {manifest.checkpoint_id}: bad path {f.path!r}")
        dest = dest.absolute()
        token = secrets.token_hex(4)
        staging = dest.parent / f".{dest.name}.restore-{token}"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir()
        except OSError as e:
            raise _local_error(f"restore into {dest}", e) from e
        try:
            _parallel(lambda f: self._restore_one(manifest, f, staging), manifest.files)
            if owner is not None:
                _give(staging, owner)
            _swap(staging, dest, dest.parent / f".{dest.name}.old-{token}")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _restore_one(self, manifest: Manifest, f: ManifestFile, staging: Path) -> None:
        where = f"checkpoint {manifest.checkpoint_id}: file {f.path!r}"
        try:
            data = self.blobs.get(blob_key(f.sha256))
        except CodegenError as e:
            if e.code is ErrorCode.NOT_FOUND:
                raise _corrupt(f"{where}: blob {f.sha256} is missing from the store") from e
            raise
        if len(data) != f.size or hashlib.sha256(data).hexdigest() != f.sha256:
            raise _corrupt(f"{where}: blob {f.sha256} is corrupt (checksum mismatch)")
        target = staging / f.path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                out.write(data)
            os.chmod(target, f.mode)
            os.utime(target, ns=(f.mtime_ns, f.mtime_ns))
        except OSError as e:
            raise _local_error(f"{where}: write", e) from e

    def prune(self, session_id: str) -> int:
        """Delete all but the ``keep_last`` newest manifests; blobs wait for GC."""
        doomed = self._ids(session_id)[: -self.keep_last]
        self.blobs.delete_many([manifest_key(session_id, i) for i in doomed])
        return len(doomed)

    def collect_garbage(self, *, min_age_seconds: float = GC_MIN_AGE_SECONDS) -> int:
        """Delete blobs no manifest references and older than ``min_age_seconds``.

        Blobs are listed before manifests and young blobs are spared, so the blobs of a
        save still in flight (its manifest not yet written) survive. An unreadable
        manifest aborts the collection: nothing is deleted on a guess.
        """
        blob_times = self.blobs.modified_times("blobs/")
        referenced: set[str] = set()
        for key in self.blobs.list("manifests/"):
            if not key.endswith(".json"):
                continue
            try:
                data = self.blobs.get(key)
            except CodegenError as e:
                if e.code is ErrorCode.NOT_FOUND:
                    continue  # pruned meanwhile
                raise
            referenced.update(f.sha256 for f in decode_manifest(data, key).files)
        now = time.time()
        doomed = [
            key
            for key, mtime in blob_times.items()
            if (m := _BLOB_RE.fullmatch(key))
            and m["sha"] not in referenced
            and now - mtime >= min_age_seconds
        ]
        self.blobs.delete_many(doomed)
        return len(doomed)


class _Uploader:
    """Reads, hashes and (when the store lacks it) uploads one file per call; thread-safe."""

    def __init__(self, blobs: BlobStore, known: Iterable[str]) -> None:
        self.blobs = blobs
        self.claimed = set(known)  # present in the store, or being put by another thread
        self.lock = threading.Lock()

    def store(self, entry: _Entry) -> ManifestFile | None:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(entry.path, flags)
        except (FileNotFoundError, NotADirectoryError):
            return None  # removed since the scan
        except OSError as e:
            raise _local_error(f"read {entry.rel}", e) from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None  # replaced by something else since the scan
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read()
        except OSError as e:
            raise _local_error(f"read {entry.rel}", e) from e
        finally:
            os.close(fd)
        sha = hashlib.sha256(data).hexdigest()
        with self.lock:
            fresh = sha not in self.claimed
            self.claimed.add(sha)
        if fresh and not self.blobs.exists(blob_key(sha)):
            self.blobs.put(blob_key(sha), data)
        # The stat taken before reading: a write during the read bumps mtime past it.
        return ManifestFile(
            path=entry.rel,
            mode=stat.S_IMODE(st.st_mode),
            size=len(data),
            sha256=sha,
            mtime_ns=st.st_mtime_ns if st.st_size == len(data) else 0,
        )


def _swap(staging: Path, dest: Path, old: Path) -> None:
    """Put ``staging`` at ``dest``; the previous ``dest`` is removed only once replaced."""
    try:
        if os.path.lexists(dest):
            os.rename(dest, old)
            try:
                os.rename(staging, dest)
            except OSError:
                os.rename(old, dest)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, dest)
    except OSError as e:
        raise _local_error(f"restore into {dest}", e) from e


class SessionMarkers:
    """Small JSON records beside the checkpoints: which sessions are hibernated.

    They live in the store so hibernated sessions survive a gateway restart.
    """

    PREFIX = "hibernated/"

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    def put(self, session_id: str, info: dict[str, object]) -> None:
        self.blobs.put(f"{self.PREFIX}{session_id}.json", json.dumps(info).encode())

    def delete(self, session_id: str) -> None:
        self.blobs.delete(f"{self.PREFIX}{session_id}.json")

    def all(self) -> dict[str, dict[str, object]]:
        out = {}
        for key in self.blobs.list(self.PREFIX):
            session_id = key[len(self.PREFIX) : -len(".json")]
            try:
                out[session_id] = json.loads(self.blobs.get(key))
            except (CodegenError, ValueError):
                continue  # deleted meanwhile, or half-written by an old writer
        return out


def open_checkpoint_store(settings: Settings) -> CheckpointStore:
    blobs = open_blob_store(settings.resolved_store_uri(), settings.checkpoint)
    return CheckpointStore(blobs, keep_last=settings.checkpoint.keep_last)


def _give(root: Path, owner: tuple[int, int]) -> None:
    """chown a freshly restored tree (no symlinks in it: only files are restored)."""
    os.chmod(root, 0o700)
    for top, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            os.lchown(os.path.join(top, name), *owner)
    os.lchown(root, *owner)
