"""Workspace: real files, real symlinks made the way sandboxed code would make them."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from codegen_ray.errors import CodegenError, ErrorCode
from codegen_ray.workspace import Workspace, openat2_available

KiB = 1024


@pytest.fixture(params=["openat2", "walk"])
def ws(request: pytest.FixtureRequest, tmp_path: Path) -> Workspace:
    """Each test runs against openat2 (when the kernel has it) and the O_NOFOLLOW walk."""
    if request.param == "openat2" and not openat2_available():
        pytest.skip("openat2 is not available on this kernel")
    (tmp_path / "ws_other").mkdir()
    (tmp_path / "ws_other" / "secret.txt").write_text("sibling secret")
    (tmp_path / "outside.txt").write_text("outside secret")
    w = Workspace(tmp_path / "ws", max_file_bytes=64 * KiB, max_read_bytes=16 * KiB)
    w.use_openat2 = request.param == "openat2"
    return w


def code_of(excinfo: pytest.ExceptionInfo[CodegenError]) -> ErrorCode:
    return excinfo.value.code


# -- ordinary use --------------------------------------------------------------------------


def test_write_read_roundtrip_binary(ws: Workspace) -> None:
    data = bytes(range(256)) * 4
    assert ws.write("bin/blob.dat", data) == len(data)
    assert ws.read("bin/blob.dat") == (data, len(data))
    assert (ws.root / "bin" / "blob.dat").read_bytes() == data


def test_read_pages_with_offset_and_length(ws: Workspace) -> None:
    ws.write("a.txt", b"0123456789")
    assert ws.read("a.txt", offset=3, length=4) == (b"3456", 10)
    assert ws.read("a.txt", offset=8) == (b"89", 10)
    assert ws.read("a.txt", offset=50) == (b"", 10)
    assert ws.read("a.txt", length=10_000) == (b"0123456789", 10)


def test_append_and_overwrite(ws: Workspace) -> None:
    ws.write("log.txt", b"one\n", append=True)
    ws.write("log.txt", b"two\n", append=True)
    assert ws.read("log.txt")[0] == b"one\ntwo\n"
    ws.write("log.txt", b"fresh")
    assert ws.read("log.txt")[0] == b"fresh"


def test_overwrite_keeps_mode_and_leaves_no_temp_files(ws: Workspace) -> None:
    ws.write("run.sh", b"#!/bin/sh\n")
    os.chmod(ws.root / "run.sh", 0o755)
    ws.write("run.sh", b"#!/bin/sh\necho hi\n")
    assert stat.S_IMODE((ws.root / "run.sh").stat().st_mode) == 0o755
    assert sorted(p.name for p in ws.root.iterdir()) == ["run.sh"]


def test_dot_segments_that_stay_inside_are_fine(ws: Workspace) -> None:
    ws.write("src/./pkg/../main.py", b"print(1)")
    assert ws.read("src/main.py")[0] == b"print(1)"
    assert ws.resolve("src/../src/main.py") == ws.root / "src" / "main.py"
    assert ws.resolve("") == ws.root


def test_list_flat_recursive_and_pattern(ws: Workspace) -> None:
    ws.write("b.py", b"x")
    ws.write("a/c.py", b"yy")
    ws.write("a/d/e.txt", b"zzz")
    assert [e.path for e in ws.list()] == ["a", "b.py"]
    entries = ws.list(recursive=True)
    assert [e.path for e in entries] == ["a", "a/c.py", "a/d", "a/d/e.txt", "b.py"]
    by_path = {e.path: e for e in entries}
    assert by_path["a/d/e.txt"].name == "e.txt"
    assert by_path["a/d/e.txt"].size_bytes == 3
    assert by_path["a"].is_directory and by_path["a"].size_bytes == 0
    assert by_path["b.py"].modified_time_ms > 0
    assert [e.path for e in ws.list("a")] == ["a/c.py", "a/d"]
    assert [e.path for e in ws.list(recursive=True, pattern="*.py")] == ["a/c.py", "b.py"]
    assert [e.path for e in ws.list(recursive=True, pattern="a/d/*")] == ["a/d/e.txt"]
    assert [e.path for e in ws.list("b.py")] == ["b.py"]


def test_delete_file_dir_and_tree(ws: Workspace) -> None:
    ws.write("f.txt", b"x")
    ws.write("tree/x/y.txt", b"y")
    (ws.root / "empty").mkdir()
    ws.delete("f.txt")
    ws.delete("empty")
    with pytest.raises(CodegenError) as e:
        ws.delete("tree")
    assert code_of(e) is ErrorCode.INVALID_ARGUMENT
    assert "recursive=true" in e.value.message
    ws.delete("tree", recursive=True)
    assert ws.list() == []


def test_iter_files_yields_regular_files_only(ws: Workspace) -> None:
    ws.write("a.txt", b"1")
    ws.write("d/b.txt", b"22")
    os.symlink("a.txt", ws.root / "link")
    os.symlink("/etc", ws.root / "etc")
    os.mkfifo(ws.root / "fifo")
    files = dict(ws.iter_files())
    assert sorted(files) == ["a.txt", "d/b.txt"]
    assert files["d/b.txt"].st_size == 2


# -- errors an agent can act on ------------------------------------------------------------


def test_missing_paths_are_not_found(ws: Workspace) -> None:
    for call in (lambda: ws.read("nope.txt"), lambda: ws.delete("nope"), lambda: ws.list("no")):
        with pytest.raises(CodegenError) as e:
            call()
        assert code_of(e) is ErrorCode.NOT_FOUND
    with pytest.raises(CodegenError) as e:
        ws.write("no/dir/f.txt", b"x", create_dirs=False)
    assert code_of(e) is ErrorCode.NOT_FOUND and "create_dirs" in e.value.message


def test_reading_a_directory_says_use_list(ws: Workspace) -> None:
    ws.write("d/f", b"")
    for path in ("d", ""):
        with pytest.raises(CodegenError) as e:
            ws.read(path)
        assert code_of(e) is ErrorCode.INVALID_ARGUMENT and "fs.list" in e.value.message


def test_file_below_a_file_is_not_found(ws: Workspace) -> None:
    ws.write("f.txt", b"x")
    with pytest.raises(CodegenError) as e:
        ws.read("f.txt/inner")
    assert code_of(e) is ErrorCode.NOT_FOUND and "not a directory" in e.value.message


def test_writing_over_a_directory_is_refused(ws: Workspace) -> None:
    ws.write("d/f", b"")
    with pytest.raises(CodegenError) as e:
        ws.write("d", b"x")
    assert code_of(e) is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(CodegenError) as e:
        ws.write("", b"x")
    assert code_of(e) is ErrorCode.INVALID_ARGUMENT


def test_root_cannot_be_deleted(ws: Workspace) -> None:
    for path in ("", ".", "a/.."):
        with pytest.raises(CodegenError) as e:
            ws.delete(path, recursive=True)
        assert code_of(e) is ErrorCode.PERMISSION_DENIED
    assert ws.root.is_dir()


def test_huge_read_must_be_paged(ws: Workspace) -> None:
    (ws.root / "big.bin").write_bytes(os.urandom(40 * KiB))
    with pytest.raises(CodegenError) as e:
        ws.read("big.bin")
    assert code_of(e) is ErrorCode.RESOURCE_EXHAUSTED
    assert "offset" in e.value.message and "length" in e.value.message
    with pytest.raises(CodegenError) as e:
        ws.read("big.bin", offset=0, length=17 * KiB)
    assert code_of(e) is ErrorCode.RESOURCE_EXHAUSTED
    pages = [ws.read("big.bin", offset=o, length=16 * KiB)[0] for o in range(0, 40 * KiB, 16 * KiB)]
    assert b"".join(pages) == (ws.root / "big.bin").read_bytes()


def test_huge_write_is_refused(ws: Workspace) -> None:
    with pytest.raises(CodegenError) as e:
        ws.write("big.bin", b"\0" * (64 * KiB + 1))
    assert code_of(e) is ErrorCode.RESOURCE_EXHAUSTED
    assert not (ws.root / "big.bin").exists()
    ws.write("grow.bin", b"\0" * (60 * KiB))
    with pytest.raises(CodegenError) as e:
        ws.write("grow.bin", b"\0" * (8 * KiB), append=True)
    assert code_of(e) is ErrorCode.RESOURCE_EXHAUSTED
    assert (ws.root / "grow.bin").stat().st_size == 60 * KiB


def test_nul_bytes_are_invalid(ws: Workspace) -> None:
    with pytest.raises(CodegenError) as e:
        ws.write("a\0b", b"x")
    assert code_of(e) is ErrorCode.INVALID_ARGUMENT


def test_fifo_is_not_read(ws: Workspace) -> None:
    os.mkfifo(ws.root / "pipe")
    with pytest.raises(CodegenError) as e:
        ws.read("pipe")  # would block forever without O_NONBLOCK
    assert code_of(e) is ErrorCode.INVALID_ARGUMENT


# -- escapes -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/etc/passwd", "/", "//etc/passwd"])
def test_absolute_paths_are_refused(ws: Workspace, path: str) -> None:
    with pytest.raises(CodegenError) as e:
        ws.read(path)
    assert code_of(e) is ErrorCode.PERMISSION_DENIED
    assert "relative to the workspace root" in e.value.message


@pytest.mark.parametrize(
    "path", ["..", "../outside.txt", "../ws_other/secret.txt", "a/../../ws_other", "./../x"]
)
def test_dotdot_out_of_the_root_is_refused(ws: Workspace, path: str) -> None:
    for call in (
        lambda: ws.read(path),
        lambda: ws.write(path, b"pwned"),
        lambda: ws.list(path),
        lambda: ws.delete(path, recursive=True),
        lambda: ws.resolve(path),
    ):
        with pytest.raises(CodegenError) as e:
            call()
        assert code_of(e) is ErrorCode.PERMISSION_DENIED
    assert (ws.root.parent / "ws_other" / "secret.txt").read_text() == "sibling secret"
    assert (ws.root.parent / "outside.txt").read_text() == "outside secret"


def test_symlink_to_etc_is_refused(ws: Workspace) -> None:
    os.symlink("/etc", ws.root / "evil")  # what `ln -s /etc evil` in the sandbox does
    with pytest.raises(CodegenError) as e:
        ws.read("evil/passwd")
    assert code_of(e) is ErrorCode.PERMISSION_DENIED
    assert "symbolic link" in e.value.message and "outside" in e.value.message
    for call in (
        lambda: ws.write("evil/codegen-ray-pwned", b"x"),
        lambda: ws.list("evil"),
        lambda: ws.resolve("evil/passwd"),
        lambda: ws.delete("evil/hostname"),
    ):
        with pytest.raises(CodegenError) as e:
            call()
        assert code_of(e) is ErrorCode.PERMISSION_DENIED
    assert not Path("/etc/codegen-ray-pwned").exists()


def test_symlink_to_sibling_session_is_refused(ws: Workspace) -> None:
    os.symlink("../ws_other", ws.root / "sib")
    os.symlink("../ws_other/secret.txt", ws.root / "secret")
    os.symlink(str(ws.root.parent / "outside.txt"), ws.root / "abs")
    for path in ("sib/secret.txt", "secret", "abs"):
        with pytest.raises(CodegenError) as e:
            ws.read(path)
        assert code_of(e) is ErrorCode.PERMISSION_DENIED
    for path in ("secret", "abs", "sib/new.txt"):
        with pytest.raises(CodegenError) as e:
            ws.write(path, b"pwned")
        assert code_of(e) is ErrorCode.PERMISSION_DENIED
        with pytest.raises(CodegenError) as e:
            ws.write(path, b"pwned", append=True)
        assert code_of(e) is ErrorCode.PERMISSION_DENIED
    assert (ws.root.parent / "ws_other" / "secret.txt").read_text() == "sibling secret"
    assert (ws.root.parent / "outside.txt").read_text() == "outside secret"
    assert not (ws.root.parent / "ws_other" / "new.txt").exists()


def test_dangling_symlink_is_not_created_through(ws: Workspace) -> None:
    os.symlink("../ws_other/planted.txt", ws.root / "dangling")
    for append in (False, True):
        with pytest.raises(CodegenError) as e:
            ws.write("dangling", b"pwned", append=append)
        assert code_of(e) is ErrorCode.PERMISSION_DENIED
    assert not (ws.root.parent / "ws_other" / "planted.txt").exists()


def test_create_dirs_does_not_walk_through_a_symlink(ws: Workspace) -> None:
    os.symlink("../ws_other", ws.root / "out")
    with pytest.raises(CodegenError) as e:
        ws.write("out/deep/er/f.txt", b"x", create_dirs=True)
    assert code_of(e) is ErrorCode.PERMISSION_DENIED
    assert sorted(os.listdir(ws.root.parent / "ws_other")) == ["secret.txt"]


def test_symlinks_inside_the_workspace_are_refused_too(ws: Workspace) -> None:
    """Policy: never follow, even inside; the message names the real path to use."""
    ws.write("real/data.txt", b"data")
    os.symlink("real", ws.root / "alias")
    os.symlink("real/data.txt", ws.root / "data-link")
    for path in ("alias/data.txt", "data-link"):
        with pytest.raises(CodegenError) as e:
            ws.read(path)
        assert code_of(e) is ErrorCode.PERMISSION_DENIED
        assert "inside the workspace" in e.value.message


def test_delete_removes_the_link_not_its_target(ws: Workspace) -> None:
    os.symlink("../ws_other", ws.root / "sib")
    (ws.root.parent / "outside.txt").write_text("keep")
    os.symlink(str(ws.root.parent / "outside.txt"), ws.root / "host")
    ws.delete("sib", recursive=True)
    ws.delete("host")
    assert (ws.root.parent / "ws_other" / "secret.txt").exists()
    assert (ws.root.parent / "outside.txt").read_text() == "keep"
    assert ws.list() == []


def test_list_shows_links_without_descending(ws: Workspace) -> None:
    os.symlink("/etc", ws.root / "evil")
    ws.write("a.txt", b"x")
    entries = ws.list(recursive=True)
    assert [(e.path, e.is_directory) for e in entries] == [("a.txt", False), ("evil", False)]


def test_recursive_delete_does_not_follow_links_inside_the_tree(ws: Workspace) -> None:
    ws.write("tree/f.txt", b"x")
    os.symlink("../../ws_other", ws.root / "tree" / "sib")
    ws.delete("tree", recursive=True)
    assert (ws.root.parent / "ws_other" / "secret.txt").read_text() == "sibling secret"


def test_swapping_a_dir_for_a_symlink_during_writes_never_escapes(ws: Workspace) -> None:
    """A sandboxed process flips d between a directory and a symlink out while we write."""
    target = ws.root.parent / "ws_other"
    stop = threading.Event()

    def flipper() -> None:
        d, real, link = ws.root / "d", ws.root / "real", ws.root / "link"
        real.mkdir()
        os.symlink("../ws_other", link)
        while not stop.is_set():
            for src, dst in ((real, d), (d, real), (link, d), (d, link)):
                try:
                    os.rename(src, dst)  # each step atomic: d is a dir, gone, or a symlink
                except OSError:
                    pass

    t = threading.Thread(target=flipper)
    t.start()
    try:
        for i in range(300):
            try:
                ws.write(f"d/f{i}.txt", b"x", create_dirs=False)
            except CodegenError as e:
                assert e.code in (ErrorCode.PERMISSION_DENIED, ErrorCode.NOT_FOUND)
    finally:
        stop.set()
        t.join()
    assert sorted(os.listdir(target)) == ["secret.txt"]


def test_readers_never_see_half_a_file(ws: Workspace) -> None:
    a, b = b"a" * (60 * KiB), b"b" * (60 * KiB)
    ws.write("f.bin", a)
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data, _ = ws.read("f.bin", length=16 * KiB)
            seen.add(data[:1] + data[-1:])

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(200):
            ws.write("f.bin", a if i % 2 else b)
    finally:
        stop.set()
        t.join()
    assert seen <= {b"aa", b"bb"}
