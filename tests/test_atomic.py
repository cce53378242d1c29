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


def test_write_once_never_overwrites_and_leaves_a_readable_file(tmp_path):
    target = tmp_path / "runs" / "pin.json"
    assert atomic.write_once(target, b"first")
    assert not atomic.write_once(target, b"second")
    assert target.read_bytes() == b"first" and list(target.parent.iterdir()) == [target]
    assert stat.S_IMODE(target.stat().st_mode) & 0o044 == 0o044  # workers running as another user read pins


def test_copy_whole_replaces_the_target_and_leaves_no_staging(tmp_path):
    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "w.bin").write_bytes(b"weights")
    target = tmp_path / "kept" / "abc"
    atomic.copy_whole(source, target)
    (source / "sub" / "w.bin").write_bytes(b"changed")
    atomic.copy_whole(source, target)  # over an earlier copy
    assert (target / "sub" / "w.bin").read_bytes() == b"changed"
    atomic.copy_whole(source / "sub" / "w.bin", tmp_path / "kept" / "w.bin")  # a single file
    assert (tmp_path / "kept" / "w.bin").read_bytes() == b"changed"
    (tmp_path / "kept" / f"{atomic.TMP_PREFIX}killed" / "new").mkdir(parents=True)  # a killed copy's staging
    atomic.remove_staging(tmp_path / "kept")
    assert sorted(p.name for p in target.parent.iterdir()) == ["abc", "w.bin"]


def test_remove_temp_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / f"{atomic.TMP_PREFIX}abc.parquet").write_bytes(b"partial")
    (tmp_path / "d" / "keep.parquet").write_bytes(b"ok")
    assert atomic.remove_temp_files(tmp_path) == 1
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["keep.parquet"]
    assert atomic.sha256_file(tmp_path / "d" / "keep.parquet") == __import__("hashlib").sha256(b"ok").hexdigest()


def test_remove_temp_files_of_one_folder_only(tmp_path):
    for folder in (tmp_path, tmp_path / "sub"):
        folder.mkdir(exist_ok=True)
        (folder / f"{atomic.TMP_PREFIX}x").write_bytes(b"partial")
    assert atomic.remove_temp_files(tmp_path, recursive=False) == 1
    assert (tmp_path / "sub" / f"{atomic.TMP_PREFIX}x").exists()
