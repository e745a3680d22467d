"""Where checkpoint bytes live: a flat key -> bytes store on a directory or an S3 bucket.

Keys are relative, ``/``-separated paths (``blobs/ab/ab12...``). Every ``put`` is atomic:
a reader sees the old object, the new one or none, never half of one. Failures become
``CodegenError``: a missing key is NOT_FOUND, an unreachable store UNAVAILABLE (retriable).
"""

from __future__ import annotations

import builtins
import errno
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from codegen_ray.config import CheckpointSettings
from codegen_ray.errors import CodegenError, ErrorCode, invalid, not_found, unavailable

# Concurrent requests a caller may run against one store (sizes the S3 connection pool).
MAX_CONCURRENCY = 16


class BlobStore(ABC):
    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def modified_times(self, prefix: str) -> dict[str, float]:
        """Key -> last-modified time (epoch seconds) for every key under ``prefix``."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    def delete_many(self, keys: builtins.list[str]) -> None:
        for key in keys:
            self.delete(key)


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise invalid(f"bad blob key {key!r}")
    return key


class FileBlobStore(BlobStore):
    """A directory, local or a shared volume. Temp files are dot-files, never listed."""

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.root = root
        self.durable = durable  # fsync before rename, so a power cut cannot expose a torn file
        with self._errors("create store directory"):
            root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FileBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    @contextmanager
    def _errors(self, what: str, key: str = "") -> Iterator[None]:
        try:
            yield
        except FileNotFoundError as e:
            raise not_found(f"no such object {key!r} in {self.root}") from e
        except PermissionError as e:
            raise CodegenError(ErrorCode.PERMISSION_DENIED, f"{what} {key!r}: {e}") from e
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CodegenError(ErrorCode.RESOURCE_EXHAUSTED, f"{what} {key!r}: {e}") from e
            raise unavailable(f"checkpoint store {self.root}: {what} {key!r}: {e}") from e

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
        with self._errors("write", key):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    if self.durable:
                        f.flush()
                        os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def get(self, key: str) -> bytes:
        with self._errors("read", key):
            return self._path(key).read_bytes()

    def _walk(self, prefix: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
        # Start at the deepest directory the prefix names, then filter by the full prefix.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base if base else self.root
        stack = [(start, base + "/" if base else "")]
        while stack:
            directory, rel = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                key = rel + entry.name
                if entry.is_dir(follow_symlinks=False):
                    if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                        stack.append((Path(entry.path), key + "/"))
                elif entry.is_file(follow_symlinks=False) and key.startswith(prefix):
                    yield key, entry

    def list(self, prefix: str) -> list[str]:
        with self._errors("list", prefix):
            return sorted(key for key, _ in self._walk(prefix))

    def modified_times(self, prefix: str) -> dict[str, float]:
        out: dict[str, float] = {}
        with self._errors("list", prefix):
            for key, entry in self._walk(prefix):
                try:
                    out[key] = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
        return out

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self._path(key).unlink(missing_ok=True)


class S3BlobStore(BlobStore):
    """An S3 (or MinIO) bucket under a key prefix. The bucket must exist."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client

    def __repr__(self) -> str:
        return f"S3BlobStore('s3://{self.bucket}/{self.prefix}')"

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _unkey(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    @contextmanager
    def _errors(self, what: str, key: str = "") -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = f"s3://{self.bucket}/{self.prefix}"
        try:
            yield
        except ClientError as e:
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            msg = f"{where}: {what} {key!r}: {code} {err.get('Message', '')}".rstrip()
            if code in ("NoSuchKey", "404", "NotFound"):
                raise not_found(f"no such object {key!r} in {where}") from e
            if code == "NoSuchBucket":
                raise CodegenError(ErrorCode.FAILED_PRECONDITION, msg) from e
            if code in ("AccessDenied", "403", "Forbidden"):
                raise CodegenError(ErrorCode.PERMISSION_DENIED, msg) from e
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise CodegenError(ErrorCode.UNAUTHENTICATED, msg) from e
            raise unavailable(msg, retriable=status >= 500 or status in (0, 429)) from e
        except NoCredentialsError as e:
            raise CodegenError(ErrorCode.UNAUTHENTICATED, f"{where}: {e}") from e
        except BotoCoreError as e:  # connection refused, timeouts, DNS: the store is down
            raise unavailable(f"checkpoint store {where} unreachable: {e}") from e

    def exists(self, key: str) -> bool:
        try:
            with self._errors("head", key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except CodegenError as e:
            if e.code is ErrorCode.NOT_FOUND:
                return False
            raise
        return True

    def put(self, key: str, data: bytes) -> None:
        with self._errors("put", key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        with self._errors("get", key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            with body:
                data: bytes = body.read()
        return data

    def _pages(self, prefix: str) -> Iterator[dict[str, Any]]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            yield from page.get("Contents", [])

    def list(self, prefix: str) -> list[str]:
        with self._errors("list", prefix):
            return sorted(self._unkey(obj["Key"]) for obj in self._pages(prefix))

    def modified_times(self, prefix: str) -> dict[str, float]:
        with self._errors("list", prefix):
            return {
                self._unkey(obj["Key"]): obj["LastModified"].timestamp()
                for obj in self._pages(prefix)
            }

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_many(self, keys: builtins.list[str]) -> None:
        for start in range(0, len(keys), 1000):  # the DeleteObjects limit
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            with self._errors("delete", batch[0]["Key"]):
                resp = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise unavailable(f"delete {first.get('Key')!r}: {first.get('Message', '')}")


def make_s3_client(settings: CheckpointSettings) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=5,
        read_timeout=30,
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=MAX_CONCURRENCY,
        # MinIO and other self-hosted endpoints rarely have per-bucket DNS names.
        s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.s3_region or None,
        aws_access_key_id=settings.s3_access_key_id or None,
        aws_secret_access_key=settings.s3_secret_access_key or None,
        config=config,
    )


def open_blob_store(uri: str, settings: CheckpointSettings) -> BlobStore:
    """``file:///abs/path`` or ``s3://bucket/prefix``."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = unquote(parsed.path)
        if parsed.netloc not in ("", "localhost") or not path.startswith("/"):
            raise invalid(f"checkpoint store {uri!r}: want file:///absolute/path")
        return FileBlobStore(Path(path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise invalid(f"checkpoint store {uri!r}: want s3://bucket/prefix")
        return S3BlobStore(parsed.netloc, parsed.path, make_s3_client(settings))
    raise invalid(f"checkpoint store {uri!r}: scheme must be file:// or s3://")
