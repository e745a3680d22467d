"""A session's files, reached only beneath its root.

Every path is relative to the workspace root. It is checked lexically first
(no NUL, no leading ``/``, ``..`` may not climb above the root), then opened by
file descriptor from a descriptor of the root: with ``openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`` where the kernel has it, else by an
``O_NOFOLLOW`` walk one component at a time. No path string is ever re-resolved
after a check, so code in the sandbox cannot swap a directory for a symlink
between the check and the use.

Symlink policy: file tools never follow symbolic links, even ones that stay
inside the workspace; a path through one is refused (PERMISSION_DENIED) with the
link's target in the message. ``delete`` removes a link itself (never its
target), ``list`` shows links as non-directory entries without descending, and
``iter_files`` skips them.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import os
import platform
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, Field

from codegen_ray.errors import CodegenError, ErrorCode, denied, exhausted, invalid, not_found


class FileEntry(BaseModel):
    path: str = Field(description="Path relative to the workspace root, '/'-separated.")
    name: str = Field(description="Last component of the path.")
    size_bytes: int = Field(description="Size in bytes; 0 for directories.")
    is_directory: bool
    modified_time_ms: int = Field(description="Last modification, ms since the Unix epoch.")


# openat2(2) has the same number on every architecture that uses the unified
# syscall table (x86_64, aarch64, arm, riscv64, ppc64le, s390x); others fall back.
_OPENAT2_NR = 437
_OPENAT2_ARCHES = {"x86_64", "amd64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x"}
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LIST_ENTRIES = 100_000


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Openat2:
    """openat2 through ctypes; ``available`` is probed once per process."""

    def __init__(self) -> None:
        self._syscall = None
        if platform.machine().lower() in _OPENAT2_ARCHES:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                self._syscall = libc.syscall
                self._syscall.restype = ctypes.c_long
            except (OSError, AttributeError):
                self._syscall = None
        self.available = self._syscall is not None and self._probe()

    def _probe(self) -> bool:
        try:
            os.close(self.open(os.open("/", _DIR_FLAGS), ".", _DIR_FLAGS, close_dirfd=True))
        except OSError:
            # ENOSYS on old kernels, EPERM from seccomp filters that predate openat2.
            return False
        return True

    def open(
        self, dirfd: int, path: str, flags: int, mode: int = 0, *, close_dirfd: bool = False
    ) -> int:
        assert self._syscall is not None
        how = _OpenHow(flags | os.O_CLOEXEC, mode, _RESOLVE)
        try:
            for _ in range(8):  # EAGAIN: a concurrent rename raced the lookup; retry
                fd = self._syscall(
                    ctypes.c_long(_OPENAT2_NR),
                    ctypes.c_int(dirfd),
                    ctypes.c_char_p(os.fsencode(path)),
                    ctypes.byref(how),
                    ctypes.c_size_t(ctypes.sizeof(how)),
                )
                if fd >= 0:
                    return int(fd)
                err = ctypes.get_errno()
                if err != errno.EAGAIN:
                    break
            raise OSError(err, os.strerror(err), path)
        finally:
            if close_dirfd:
                os.close(dirfd)


_openat2 = _Openat2()


def openat2_available() -> bool:
    return _openat2.available


def _normalize(path: str) -> list[str]:
    """The components of a workspace-relative path; [] is the root."""
    if not isinstance(path, str):
        raise invalid(f"path must be a string, not {type(path).__name__}")
    if "\x00" in path:
        raise invalid("path contains a NUL byte; remove it")
    if path.startswith("/"):
        raise denied(
            f"absolute path {path!r} refused: paths are relative to the workspace root "
            f"(write {path.lstrip('/')!r}, or '' for the root)"
        )
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise denied(
                    f"path {path!r} climbs out of the workspace with '..'; "
                    "paths are relative to the workspace root and must stay beneath it"
                )
            parts.pop()
        else:
            parts.append(part)
    return parts


class Workspace:
    """File operations confined to ``root``; safe against symlinks made by sandboxed code."""

    def __init__(
        self,
        root: Path,
        *,
        max_file_bytes: int,
        max_read_bytes: int,
        owner: tuple[int, int] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        # (uid, gid) given to what is made here, so the session's own code, running as
        # that uid, can change it; None: files stay this process's.
        self.owner = owner
        self.max_file_bytes = max_file_bytes
        self.max_read_bytes = max_read_bytes
        self.use_openat2 = _openat2.available  # tests turn it off to cover the fallback

    # -- public API ---------------------------------------------------------------------

    def resolve(self, path: str) -> Path:
        """The host path for ``path``, for handing to a sandboxed process.

        Checked like every other call (no escape, no symlinked component that
        exists now), but a path string is not TOCTOU-safe: host-side file access
        goes through the descriptor-based methods instead.
        """
        parts = _normalize(path)
        rootfd = self._open_root()
        try:
            self._explain_symlinks(rootfd, parts)
        finally:
            os.close(rootfd)
        return self.root.joinpath(*parts)

    def read(self, path: str, offset: int = 0, length: int | None = None) -> tuple[bytes, int]:
        parts = _normalize(path)
        if offset < 0:
            raise invalid(f"offset must be >= 0, got {offset}")
        if length is not None and length < 0:
            raise invalid(f"length must be >= 0, got {length}")
        rel = _display(parts)
        with _Fd(self._open(parts, os.O_RDONLY | os.O_NONBLOCK)) as fd:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise invalid(f"{rel!r} is a directory; use fs.list to see its contents")
            if not stat.S_ISREG(st.st_mode):
                raise invalid(f"{rel!r} is not a regular file (a FIFO, socket or device)")
            total = st.st_size
            wanted = max(total - offset, 0)
            if length is not None:
                wanted = min(wanted, length)
            if wanted > self.max_read_bytes:
                raise exhausted(
                    f"{rel!r} is {total} bytes; a read returns at most {self.max_read_bytes} "
                    f"bytes. Read it in pages: offset=0, length={self.max_read_bytes}, then "
                    f"offset={self.max_read_bytes}, and so on"
                )
            chunks: list[bytes] = []
            got = 0
            while got < wanted:
                chunk = os.pread(fd, wanted - got, offset + got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks), total

    def write(
        self, path: str, data: bytes, *, create_dirs: bool = True, append: bool = False
    ) -> int:
        parts = _normalize(path)
        if not parts:
            raise invalid("path '' is the workspace root, a directory; name a file to write")
        rel = _display(parts)
        if len(data) > self.max_file_bytes:
            raise exhausted(
                f"refused to write {len(data)} bytes to {rel!r}: files are limited to "
                f"{self.max_file_bytes} bytes"
            )
        name = parts[-1]
        try:
            parent = self._open_dir(parts[:-1], create=create_dirs, full=parts)
        except CodegenError as e:
            if e.code is ErrorCode.NOT_FOUND and not create_dirs:
                raise not_found(
                    f"the directory {_display(parts[:-1])!r} does not exist; create it first "
                    "or pass create_dirs=true"
                ) from None
            raise
        with _Fd(parent) as dirfd:
            current = _lstat_at(dirfd, name)
            if current is not None:
                if stat.S_ISLNK(current.st_mode):
                    raise self._symlink_error(dirfd, name, rel)
                if stat.S_ISDIR(current.st_mode):
                    raise invalid(f"{rel!r} is a directory; choose a file name inside it")
                if not stat.S_ISREG(current.st_mode):
                    raise invalid(f"{rel!r} exists and is not a regular file")
            if append:
                return self._append(dirfd, name, rel, data)
            return self._replace(dirfd, name, rel, data, current)

    def list(
        self, path: str = "", *, recursive: bool = False, pattern: str | None = None
    ) -> list[FileEntry]:
        parts = _normalize(path)
        if pattern is not None and "\x00" in pattern:
            raise invalid("pattern contains a NUL byte; remove it")
        rel = _display(parts)
        with _Fd(self._open(parts, os.O_RDONLY | os.O_NONBLOCK)) as fd:
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode):
                entries = [_entry(rel, st)]
            else:
                entries = [_entry(p, s) for p, s in _walk(fd, parts, recursive)]
        if pattern:
            entries = [
                e
                for e in entries
                if fnmatch.fnmatchcase(e.path, pattern) or fnmatch.fnmatchcase(e.name, pattern)
            ]
        entries.sort(key=lambda e: e.path)
        return entries

    def delete(self, path: str, *, recursive: bool = False) -> None:
        parts = _normalize(path)
        if not parts:
            raise denied("the workspace root itself cannot be deleted; delete what is inside it")
        rel = _display(parts)
        name = parts[-1]
        with _Fd(self._open_dir(parts[:-1], create=False, full=parts)) as dirfd:
            st = _lstat_at(dirfd, name)
            if st is None:
                raise not_found(f"{rel!r} does not exist")
            try:
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=dirfd)  # a symlink goes, its target stays
                elif recursive:
                    shutil.rmtree(name, dir_fd=dirfd)  # the fd-based, symlink-safe variant
                else:
                    os.rmdir(name, dir_fd=dirfd)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise invalid(
                        f"{rel!r} is a directory that is not empty; pass recursive=true "
                        "to delete it with everything inside"
                    ) from None
                raise _os_error(e, rel) from None

    def iter_files(self) -> Iterator[tuple[str, os.stat_result]]:
        """Every regular file as (relative path, lstat); symlinks and special files skipped."""
        rootfd = self._open_root()
        try:
            for rel, st in _walk(rootfd, [], recursive=True):
                if stat.S_ISREG(st.st_mode):
                    yield rel, st
        finally:
            os.close(rootfd)

    # -- opening beneath the root -------------------------------------------------------

    def _open_root(self) -> int:
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CodegenError(
                ErrorCode.FAILED_PRECONDITION, "the workspace directory no longer exists"
            ) from None

    def _open(self, parts: list[str], flags: int, mode: int = 0) -> int:
        """Open ``parts`` beneath the root with ``flags``; no symlink is ever followed."""
        rootfd = self._open_root()
        try:
            if not parts:
                return os.dup(rootfd)
            try:
                if self.use_openat2:
                    return _openat2.open(rootfd, "/".join(parts), flags | os.O_NOFOLLOW, mode)
                with _Fd(self._walk_dirs(rootfd, parts[:-1], create=False)) as dirfd:
                    return os.open(
                        parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dirfd
                    )
            except OSError as e:
                raise self._explain(rootfd, parts, e) from None
        finally:
            os.close(rootfd)

    def _open_dir(self, parts: list[str], *, create: bool, full: list[str]) -> int:
        """A directory fd for ``parts``, made (mkdirat) along the way if ``create``."""
        rootfd = self._open_root()
        try:
            if not parts:
                return os.dup(rootfd)
            if self.use_openat2 and not create:
                try:
                    return _openat2.open(rootfd, "/".join(parts), _DIR_FLAGS)
                except OSError as e:
                    raise self._explain(rootfd, full, e) from None
            try:
                return self._walk_dirs(rootfd, parts, create=create, owner=self.owner)
            except OSError as e:
                raise self._explain(rootfd, full, e) from None
        finally:
            os.close(rootfd)

    @staticmethod
    def _walk_dirs(
        rootfd: int, parts: list[str], *, create: bool, owner: tuple[int, int] | None = None
    ) -> int:
        fd = os.dup(rootfd)
        try:
            for part in parts:
                made = False
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        made = True
                    except FileExistsError:
                        pass  # a directory, or something the O_NOFOLLOW open refuses
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
                if made and owner is not None:
                    os.fchown(fd, *owner)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- writing ------------------------------------------------------------------------

    def _replace(
        self, dirfd: int, name: str, rel: str, data: bytes, current: os.stat_result | None
    ) -> int:
        # A reader sees the old file or the new one, never half of either.
        tmp = f".{name[:200]}.{secrets.token_hex(6)}.tmp"
        mode = stat.S_IMODE(current.st_mode) if current is not None else 0o644
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, mode, dir_fd=dirfd)
        except OSError as e:
            raise _os_error(e, rel) from None
        try:
            try:
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
                if current is not None:
                    os.fchmod(fd, mode)  # keep e.g. the executable bit of a replaced script
                _write_all(fd, data)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        except OSError as e:
            _unlink_quietly(tmp, dirfd)
            raise _os_error(e, rel) from None
        except BaseException:
            _unlink_quietly(tmp, dirfd)
            raise
        return len(data)

    def _append(self, dirfd: int, name: str, rel: str, data: bytes) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(name, flags | os.O_CLOEXEC, 0o644, dir_fd=dirfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise self._symlink_error(dirfd, name, rel) from None
            raise _os_error(e, rel) from None
        with _Fd(fd):
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise invalid(f"{rel!r} exists and is not a regular file")
            if self.owner is not None and st.st_uid != self.owner[0] and st.st_nlink == 1:
                os.fchown(fd, *self.owner)  # just made by O_CREAT
            if st.st_size + len(data) > self.max_file_bytes:
                raise exhausted(
                    f"appending {len(data)} bytes would make {rel!r} {st.st_size + len(data)} "
                    f"bytes; files are limited to {self.max_file_bytes} bytes"
                )
            try:
                _write_all(fd, data)
            except OSError as e:
                raise _os_error(e, rel) from None
        return len(data)

    # -- errors an agent can act on -----------------------------------------------------

    def _explain(self, rootfd: int, parts: list[str], err: OSError) -> CodegenError:
        rel = _display(parts)
        if err.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR, errno.ENOENT):
            try:
                self._explain_symlinks(rootfd, parts)
            except CodegenError as found:
                return found
        return _os_error(err, rel)

    def _explain_symlinks(self, rootfd: int, parts: list[str]) -> None:
        """Raise for the first component that is a symlink or a non-directory."""
        rel = _display(parts)
        with _Fd(os.dup(rootfd)) as fd:
            for i, part in enumerate(parts):
                st = _lstat_at(fd, part)
                if st is None:
                    return
                if stat.S_ISLNK(st.st_mode):
                    raise self._symlink_error(fd, part, _display(parts[: i + 1]), rel)
                if i == len(parts) - 1:
                    return
                if not stat.S_ISDIR(st.st_mode):
                    raise not_found(
                        f"{rel!r} does not exist: {_display(parts[: i + 1])!r} is a file, "
                        "not a directory"
                    )
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    return
                os.dup2(nfd, fd, inheritable=False)
                os.close(nfd)

    def _symlink_error(
        self, dirfd: int, name: str, link_rel: str, rel: str | None = None
    ) -> CodegenError:
        try:
            target = os.readlink(name, dir_fd=dirfd)
        except OSError:
            target = "?"
        via = "" if rel is None or rel == link_rel else f"the path {rel!r} goes through "
        base = self.root.joinpath(*link_rel.split("/")[:-1])
        inside = not target.startswith("/") and _is_beneath(
            os.path.normpath(base / target), self.root
        )
        where = "inside" if inside else "outside"
        return denied(
            f"{via}{link_rel!r} is a symbolic link (-> {target!r}, {where} the workspace); "
            "file tools never follow symbolic links. Use the real path within the workspace"
        )


# -- helpers ----------------------------------------------------------------------------


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _display(parts: list[str]) -> str:
    return "/".join(parts)


def _is_beneath(path: str, root: Path) -> bool:
    return os.path.commonpath([path, str(root)]) == str(root)


def _lstat_at(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _unlink_quietly(name: str, dirfd: int) -> None:
    try:
        os.unlink(name, dir_fd=dirfd)
    except OSError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _entry(rel: str, st: os.stat_result) -> FileEntry:
    is_dir = stat.S_ISDIR(st.st_mode)
    return FileEntry(
        path=rel,
        name=rel.rsplit("/", 1)[-1],
        size_bytes=0 if is_dir else st.st_size,
        is_directory=is_dir,
        modified_time_ms=st.st_mtime_ns // 1_000_000,
    )


def _walk(dirfd: int, prefix: list[str], recursive: bool) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of the entries under ``dirfd``; never descends a symlink."""
    count = 0
    stack: list[tuple[int, list[str]]] = [(os.dup(dirfd), prefix)]
    try:
        while stack:
            fd, base = stack.pop()
            try:
                with os.scandir(fd) as it:
                    found = [(e.name, e.stat(follow_symlinks=False)) for e in it]
                for name, st in found:
                    count += 1
                    if count > _MAX_LIST_ENTRIES:
                        raise exhausted(
                            f"more than {_MAX_LIST_ENTRIES} entries; list a subdirectory "
                            "or pass a pattern"
                        )
                    yield _display([*base, name]), st
                    if recursive and stat.S_ISDIR(st.st_mode):
                        try:
                            stack.append((os.open(name, _DIR_FLAGS, dir_fd=fd), [*base, name]))
                        except OSError:
                            pass  # removed or swapped for a symlink meanwhile: skip it
            finally:
                os.close(fd)
    finally:
        for fd, _ in stack:
            os.close(fd)


_ERRNO_CODES = {
    errno.ENOENT: (ErrorCode.NOT_FOUND, "does not exist"),
    errno.ENOTDIR: (ErrorCode.NOT_FOUND, "does not exist (a parent is a file, not a directory)"),
    errno.EISDIR: (ErrorCode.INVALID_ARGUMENT, "is a directory"),
    errno.ELOOP: (ErrorCode.PERMISSION_DENIED, "goes through a symbolic link, which is refused"),
    errno.EXDEV: (ErrorCode.PERMISSION_DENIED, "leads outside the workspace"),
    errno.EACCES: (ErrorCode.PERMISSION_DENIED, "is not accessible (permission denied)"),
    errno.EPERM: (ErrorCode.PERMISSION_DENIED, "is not accessible (operation not permitted)"),
    errno.ENAMETOOLONG: (ErrorCode.INVALID_ARGUMENT, "is too long a name"),
    errno.ENOSPC: (ErrorCode.RESOURCE_EXHAUSTED, "could not be written: the disk is full"),
    errno.EDQUOT: (ErrorCode.RESOURCE_EXHAUSTED, "could not be written: disk quota exceeded"),
    errno.EFBIG: (ErrorCode.RESOURCE_EXHAUSTED, "would be larger than the file size limit"),
    errno.EEXIST: (ErrorCode.ALREADY_EXISTS, "already exists"),
}


def _os_error(err: OSError, rel: str) -> CodegenError:
    code, text = _ERRNO_CODES.get(
        err.errno or 0, (ErrorCode.INTERNAL, f"failed: {os.strerror(err.errno or 0)}")
    )
    return CodegenError(code, f"{rel or 'the workspace root'!r} {text}")
