"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A reader (or a re-run after a crash) therefore sees either the old file or the complete new
one, never a half-written file. Temporary files start with `.tmp-` so a cleanup can find
leftovers of a killed process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target`.

    The caller writes the file (with any library) to the yielded path. On an exception the
    temporary file is removed and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; other readers (workers, containers) need 0644
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_with(target: Path, writer: Callable[[Path], None]) -> None:
    """Atomically create `target` by calling `writer(tmp_path)`."""
    with atomic_path(target) as tmp:
        writer(tmp)


def write_once(target: Path, data: bytes) -> bool:
    """Create `target` with `data` unless it exists (`os.link` never overwrites); whether we did.

    The staged file has a unique name, so concurrent first writers (threads of one flow run, or
    processes) never collide: one creates `target`, the others leave it as it is.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, staged = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=target.suffix, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(staged, _FILE_MODE)
        os.link(staged, target)
        _fsync_dir(target.parent)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(staged)


def copy_whole(source: Path, target: Path) -> None:
    """Copy the file or folder `source` onto `target`, replacing it, so that `target` is never a
    partial copy: staged in a temporary sibling folder, synced, then renamed into place.

    One writer at a time (the caller holds a lock). A killed copy leaves only its staging
    folder, which `remove_staging` clears.
    """
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=target.parent))
    staged = staging / "new"
    try:
        if source.is_dir():
            shutil.copytree(source, staged)
        else:
            shutil.copyfile(source, staged)
        _fsync_tree(staged)
        if target.exists():
            os.rename(target, staging / "old")  # a damaged earlier copy, deleted with the staging folder
        os.rename(staged, target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_staging(folder: Path) -> None:
    """Delete the staging folders that killed `copy_whole` calls left in `folder` (the caller
    holds the lock its writers take, so none is in use)."""
    for path in Path(folder).glob(f"{TMP_PREFIX}*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(path: Path) -> None:
    """Sync a file, or a folder's files and the folders themselves, deepest first."""
    if path.is_file():
        _fsync_file(path)
        return
    for item in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if item.is_file():
            _fsync_file(item)
        else:
            _fsync_dir(item)
    _fsync_dir(path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def remove_temp_files(folder: Path, recursive: bool = True) -> int:
    """Delete leftovers of killed writers in `folder` (and its subfolders unless `recursive` is
    False, for a folder that holds other writers' folders); return how many were removed."""
    folder = Path(folder)
    if not folder.exists():
        return 0
    found = folder.rglob(f"{TMP_PREFIX}*") if recursive else folder.glob(f"{TMP_PREFIX}*")
    leftovers = [p for p in found if p.is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return len(leftovers)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
