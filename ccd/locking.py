"""Cross-process file locks under `Home.locks`.

DuckDB lets only one process open a database file for writing, and not even a reader may open it
meanwhile; the lake catalog and the model registry therefore wrap every short-lived connection in
one of these locks, so concurrent CLI calls, flow tasks and the server wait their turn instead of
failing. The lock is `fcntl.flock` on `<home>/locks/<name>.lock`: the kernel drops it when the
holder dies, even by SIGKILL, so a killed process never leaves a stale lock behind.

Example
-------
>>> with file_lock(home, "registry", timeout=30):
...     ...  # open DuckDB, write in a transaction, close
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ccd.errors import CcdError
from ccd.home import Home, safe_name

# How often a waiter retries a busy lock: short against the seconds a catalog write takes.
POLL_SECONDS = 0.02

_held = threading.local()


class LockTimeoutError(CcdError):
    """Another process held a lock for longer than the caller was willing to wait."""


def lock_path(home: Home, name: str) -> Path:
    """The lock file of `name` (a safe single path component, e.g. "catalog", "registry")."""
    return home.locks / f"{safe_name(name, 'lock name')}.lock"


@contextmanager
def file_lock(home: Home, name: str, timeout: float | None = 60.0, shared: bool = False,
              remove: bool = False) -> Iterator[Path]:
    """Hold the lock `name` of `home` for the duration of the `with` block.

    Parameters
    ----------
    home : Home
        The home folder; the lock file lives in `home.locks`.
    name : str
        Which resource to lock; one name per database file.
    timeout : float or None
        Seconds to wait for a busy lock before raising `LockTimeoutError`; `None` waits forever,
        0 tries once.
    shared : bool
        Take a shared lock (many holders, e.g. read-only DuckDB connections) instead of an
        exclusive one (one holder, excludes shared holders too).
    remove : bool
        Delete the lock file on release (an exclusive lock of a one-off name, such as one stage
        of one block, so `locks/` does not keep a file per name ever locked).

    Yields
    ------
    Path
        The lock file.

    Notes
    -----
    Re-entrant within one thread: a nested `file_lock` on a lock this thread already holds
    (exclusive, or shared inside shared) passes straight through, so a locked function may call
    another locked function. Other threads and other processes wait. Taking an exclusive lock
    inside a shared one of the same name is refused, because upgrading a flock is not atomic.
    A waiter that wins the lock of a file its holder has just removed locks the new file instead.
    """
    if remove and shared:
        raise ValueError("only an exclusive lock can remove its file")
    path = lock_path(home, name)
    held: dict[Path, tuple[int, bool]] = _held.__dict__.setdefault("locks", {})
    if path in held:
        depth, held_shared = held[path]
        if held_shared and not shared:
            raise CcdError(f"lock {name!r} is held shared by this thread; cannot take it exclusive inside")
        held[path] = (depth + 1, held_shared)
        try:
            yield path
        finally:
            held[path] = (held[path][0] - 1, held_shared)
            if held[path][0] == 0:
                del held[path]
        return
    fd = _open_locked(path, name, timeout, shared)
    try:
        if not shared:
            _write_owner(fd)
        held[path] = (1, shared)
        try:
            yield path
        finally:
            del held[path]
            if remove:  # before unlocking: a waiter then sees the file is gone and retries
                with contextlib.suppress(OSError):  # best effort: the holder's work is done
                    path.unlink()
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_locked(path: Path, name: str, timeout: float | None, shared: bool) -> int:
    """A descriptor of `path` holding its lock, once the locked file is still the one at `path`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _acquire(fd, path, name, timeout, deadline, shared)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError) and exc.errno == errno.ESTALE:  # NFS: its holder removed it
                continue
            raise
        if _still_at(fd, path):
            return fd
        os.close(fd)  # its holder removed the file while we waited: lock the one at `path` now


def _still_at(fd: int, path: Path) -> bool:
    """Whether `path` still names the file locked through `fd`. Opened again rather than
    stat'ed: an open revalidates the name on NFS, where a stat may answer from a cache."""
    try:
        current = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return os.path.samestat(os.fstat(fd), os.fstat(current))
    except OSError as exc:
        if exc.errno == errno.ESTALE:  # NFS: the locked file is gone
            return False
        raise
    finally:
        os.close(current)


def _acquire(fd: int, path: Path, name: str, timeout: float | None, deadline: float | None, shared: bool) -> None:
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    while True:
        try:
            fcntl.flock(fd, mode)
            return
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"timed out after {timeout:g}s waiting for lock {name!r} ({path}); "
                    f"held by {_owner(path)}; retry when it finishes"
                ) from None
            time.sleep(POLL_SECONDS)


def _write_owner(fd: int) -> None:
    """Record the holder's pid in the lock file, for the timeout message only."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _owner(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"
