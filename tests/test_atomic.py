"""Atomic writes: all or nothing, readable permissions, leftovers cleaned."""

from __future__ import annotations

import stat

import pytest

from ccd import atomic


def test_write_is_all_or_nothing(tmp_path):
    target = tmp_path / "a" / "file.txt"
    atomic.write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert list(target.parent.iterdir()) == [target]


def test_written_files_are_readable_by_others(tmp_path):
    target = tmp_path / "f.bin"
    atomic.write_bytes(target, b"x")
    assert stat.S_IMODE(target.stat().st_mode) & 0o044 == 0o044


def test_remove_temp_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / f"{atomic.TMP_PREFIX}abc.parquet").write_bytes(b"partial")
    (tmp_path / "d" / "keep.parquet").write_bytes(b"ok")
    assert atomic.remove_temp_files(tmp_path) == 1
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["keep.parquet"]
    assert atomic.sha256_file(tmp_path / "d" / "keep.parquet") == __import__("hashlib").sha256(b"ok").hexdigest()
