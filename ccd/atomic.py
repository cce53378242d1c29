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


def copy_once(source: Path, target: Path) -> None:
    """Copy the file or folder `source` to `target` unless `target` exists, all at once.

    The copy is staged in a temporary sibling folder, synced, then renamed onto `target`, so
    `target` is either absent or complete. Meant for content-addressed targets (the registry's
    kept artifacts): when two writers race, whoever renames first wrote the same bytes.
    """
    source, target = Path(source), Path(target)
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=target.parent))
    staged = staging / target.name
    try:
        if source.is_dir():
            shutil.copytree(source, staged)
        else:
            shutil.copyfile(source, staged)
        for file in [staged] if staged.is_file() else [p for p in staged.rglob("*") if p.is_file()]:
            _fsync_file(file)
        try:
            os.rename(staged, target)
        except OSError:
            if not target.exists():
                raise
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def remove_temp_files(folder: Path) -> int:
    """Delete leftovers of killed writers under `folder`; return how many were removed."""
    if not folder.exists():
        return 0
    leftovers = [p for p in folder.rglob(f"{TMP_PREFIX}*") if p.is_file()]
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
