"""pluralign.atomic: a file or directory appears whole or not at all, whatever goes wrong."""

from __future__ import annotations

import os

import pytest

from pluralign import atomic
from pluralign.atomic import atomic_dir, write_file_atomic


def test_file_write_and_failure_leave_no_sibling(tmp_path):
    path = tmp_path / "x.json"
    write_file_atomic(path, lambda f: f.write(b"one"))
    with pytest.raises(ZeroDivisionError):
        write_file_atomic(path, lambda f: (f.write(b"half"), 1 / 0))
    assert path.read_bytes() == b"one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_dir_failure_keeps_the_old_version(tmp_path):
    root = tmp_path / "d"
    with atomic_dir(root, overwrite=False) as tmp:
        (tmp / "f").write_text("old")
    with pytest.raises(FileExistsError):
        with atomic_dir(root, overwrite=False) as tmp:
            (tmp / "f").write_text("new")
    with pytest.raises(RuntimeError):
        with atomic_dir(root, overwrite=True) as tmp:
            (tmp / "f").write_text("new")
            raise RuntimeError("disk full")
    assert (root / "f").read_text() == "old"
    with atomic_dir(root, overwrite=True) as tmp:
        (tmp / "f").write_text("new")
    assert (root / "f").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_failed_final_rename_puts_the_old_directory_back(tmp_path, monkeypatch):
    root = tmp_path / "d"
    with atomic_dir(root, overwrite=False) as tmp:
        (tmp / "f").write_text("old")
    rename = os.rename

    def failing(src, dst):
        if str(dst) == str(root) and ".tmp-" in str(src):
            raise OSError("rename failed")
        return rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", failing)
    with pytest.raises(OSError, match="rename failed"):
        with atomic_dir(root, overwrite=True) as tmp:
            (tmp / "f").write_text("new")
    assert (root / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_leftovers_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    dead = tmp_path / ".d.tmp-999999999-00ff"  # a write killed midway, by a process long gone
    dead.mkdir()
    (tmp_path / ".d.old-999999999").mkdir()  # the artifact writer's older naming
    live = tmp_path / f".d.tmp-{os.getpid()}-abcd"  # this process: maybe still writing
    live.mkdir()
    with atomic_dir(tmp_path / "d", overwrite=False):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "d"]
