"""Outputs written all at once (ds_minimodel/staged_dir.py): a failure half-way leaves the old
directory exactly as it was, success replaces it whole, and the result has ordinary modes."""

import os

import pytest

from ds_minimodel.errors import UserError
from ds_minimodel.staged_dir import check_empty_or_overwrite, staged_dir


def test_failure_half_way_leaves_the_previous_directory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_dir(out) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging leftovers


def test_success_replaces_the_whole_directory_with_umask_modes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with staged_dir(out) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "new.txt").write_text("new")
        os.chmod(tmp / "sub" / "new.txt", 0o600)  # as safetensors writes
    assert [p.relative_to(out).as_posix() for p in sorted(out.rglob("*"))] == ["sub", "sub/new.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask
    assert ((out / "sub" / "new.txt").stat().st_mode & 0o777) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_non_empty_directory_needs_overwrite(tmp_path):
    (tmp_path / "keep").write_text("x")
    with pytest.raises(UserError, match="exists and is not empty .*--overwrite"):
        check_empty_or_overwrite(tmp_path, overwrite=False)
    check_empty_or_overwrite(tmp_path, overwrite=True)
    with pytest.raises(UserError, match="is not a directory"):
        check_empty_or_overwrite(tmp_path / "keep", overwrite=True)
