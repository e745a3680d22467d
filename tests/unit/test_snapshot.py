from __future__ import annotations

import os
from pathlib import Path

from codegen_ray import snapshot


def test_changed_lists_new_and_modified_files_not_untouched_or_hidden(tmp_path: Path) -> None:
    (tmp_path / "same.txt").write_text("x")
    (tmp_path / "edit.txt").write_text("x")
    (tmp_path / "d").mkdir()
    before = snapshot.take(tmp_path)
    (tmp_path / "edit.txt").write_text("xy")
    (tmp_path / "d" / "new.bin").write_bytes(b"\0")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "font.json").write_text("{}")
    (tmp_path / ".env").write_text("A=1")  # a hidden file is listed; hidden dirs are not
    os.symlink("/etc/passwd", tmp_path / "link")
    after = snapshot.take(tmp_path)
    assert snapshot.changed(before, after, 100) == [".env", "d/new.bin", "edit.txt"]
    assert snapshot.changed(before, after, 1) == [".env"]


def test_a_big_workspace_is_not_scanned(tmp_path: Path) -> None:
    for i in range(6):
        (tmp_path / f"f{i}").write_text("x")
    assert snapshot.take(tmp_path, max_entries=5) is None
    assert snapshot.changed(None, {"f0": (1, 1)}, 100) == []
