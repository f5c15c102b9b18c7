"""Atomic writes: a file appears whole or not at all; leftovers of a kill are recognised."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from unetseg.errors import UserError
from unetseg.files import atomic_path, is_temp_file, remove_stale_temps, write_text_atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "metrics.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize("code,fix", [(errno.ENOSPC, "free disk space"),
                                      (errno.EROFS, "writable output folder")])
def test_full_or_read_only_disk_is_a_user_error(tmp_path: Path, code: int, fix: str):
    target = tmp_path / "pred.png"
    with pytest.raises(UserError, match=f"pred.png: cannot write.*{fix}"), \
            atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise OSError(code, "simulated")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_hold_files(tmp_path: Path):
    (tmp_path / "blocker").write_text("")
    with pytest.raises(UserError, match=r"blocker/x\.png: cannot write"):
        write_text_atomic(tmp_path / "blocker" / "x.png", "x")


def test_stale_temporary_files_are_recognised_and_removed(tmp_path: Path):
    with atomic_path(tmp_path / "resume.safetensors") as tmp:
        assert is_temp_file(tmp)
        tmp.write_bytes(b"x")
        (tmp_path / tmp.name.replace("resume", "last")).write_bytes(b"half")  # a kill's leftover
    keep = [tmp_path / "resume.safetensors", tmp_path / ".hidden.png", tmp_path / "a.tmp.png"]
    for p in keep[1:]:
        p.write_text("")
    removed = remove_stale_temps(tmp_path)
    assert [p.name.startswith(".last.") for p in removed] == [True]
    assert all(p.exists() for p in keep)
