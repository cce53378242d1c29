"""The cross-process file lock: exclusion between processes, timeouts, re-entry, crash release."""

import multiprocessing
import os
import signal
import threading
import time

import pytest

from ccd.errors import BadInputError, CcdError
from ccd.home import Home
from ccd.locking import LockTimeoutError, file_lock, lock_path

# Spawn, not fork: a clean interpreter per worker, whatever threads earlier tests left running
# (a forked copy of a live Dask or server thread can kill the child before it runs).
CTX = multiprocessing.get_context("spawn")


def _hold(root, name, ready, release, shared=False):
    with file_lock(Home(root), name, shared=shared):
        ready.set()
        release.wait(30)


def _increment(root, rounds, remove=False):
    counter = root / "counter.txt"
    for _ in range(rounds):
        with file_lock(Home(root), "counter", timeout=30, remove=remove):
            value = int(counter.read_text()) if counter.exists() else 0
            time.sleep(0.001)  # widen the read-modify-write window a race would need
            counter.write_text(str(value + 1))


def _start_holder(root, name, shared=False):
    ready, release = CTX.Event(), CTX.Event()
    proc = CTX.Process(target=_hold, args=(root, name, ready, release, shared))
    proc.start()
    assert ready.wait(10), "holder never took the lock"
    return proc, release


def test_lock_file_lives_under_home_locks(tmp_path):
    home = Home(tmp_path)
    with file_lock(home, "catalog") as path:
        assert path == lock_path(home, "catalog") == tmp_path / "locks" / "catalog.lock"
        assert path.read_text().strip() == str(os.getpid())


def test_unsafe_lock_name_is_rejected(tmp_path):
    with pytest.raises(BadInputError):
        with file_lock(Home(tmp_path), "../escape"):
            pass


def test_timeout_names_the_holder(tmp_path):
    proc, release = _start_holder(tmp_path, "registry")
    try:
        started = time.monotonic()
        with pytest.raises(LockTimeoutError, match=rf"lock 'registry'.*pid {proc.pid}"):
            with file_lock(Home(tmp_path), "registry", timeout=0.2):
                pass
        assert 0.2 <= time.monotonic() - started < 2
    finally:
        release.set()
        proc.join(10)
    with file_lock(Home(tmp_path), "registry", timeout=0):
        pass


@pytest.mark.parametrize("remove", [False, True])
def test_processes_serialize_read_modify_write(tmp_path, remove):
    """Also when every holder deletes the lock file on release: a waiter that then wins the lock
    of the deleted file must not run beside the holder of the new one."""
    procs = [CTX.Process(target=_increment, args=(tmp_path, 25, remove)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert int((tmp_path / "counter.txt").read_text()) == 100
    assert (tmp_path / "locks" / "counter.lock").exists() != remove


def test_a_removed_lock_leaves_no_file_and_only_after_the_outer_hold(tmp_path):
    home = Home(tmp_path)
    with file_lock(home, "stage-x", remove=True) as path:
        with file_lock(home, "stage-x", remove=True):
            pass
        assert path.exists()  # the inner, re-entrant hold releases nothing
    assert not path.exists()
    with pytest.raises(ValueError, match="exclusive"):
        with file_lock(home, "stage-x", shared=True, remove=True):
            pass


def test_shared_holders_coexist_and_block_exclusive(tmp_path):
    proc, release = _start_holder(tmp_path, "catalog", shared=True)
    try:
        with file_lock(Home(tmp_path), "catalog", timeout=0, shared=True):
            pass
        with pytest.raises(LockTimeoutError):
            with file_lock(Home(tmp_path), "catalog", timeout=0.1):
                pass
    finally:
        release.set()
        proc.join(10)


def test_reentrant_in_one_thread(tmp_path):
    home = Home(tmp_path)
    with file_lock(home, "registry", timeout=0):
        with file_lock(home, "registry", timeout=0):
            pass
        with file_lock(home, "registry", timeout=0, shared=True):
            pass
    with file_lock(home, "registry", timeout=0, shared=True):
        with pytest.raises(CcdError, match="exclusive"):
            with file_lock(home, "registry", timeout=0):
                pass


def test_a_waiter_on_a_removed_lock_file_locks_the_new_one(tmp_path):
    home = Home(tmp_path)
    acquired, release = threading.Event(), threading.Event()

    def waiter():
        with file_lock(home, "stage-y", remove=True):
            acquired.set()
            release.wait(10)

    with file_lock(home, "stage-y", remove=True) as path:
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.2)  # the waiter has opened the file about to be removed, and waits on it
        assert not acquired.is_set()
    assert acquired.wait(10) and path.exists()  # it locked a new file at the path...
    with pytest.raises(LockTimeoutError):  # ...which excludes everyone else
        with file_lock(home, "stage-y", timeout=0.1):
            pass
    release.set()
    thread.join(10)
    assert not path.exists()


def test_lock_of_killed_holder_is_released(tmp_path):
    proc, _ = _start_holder(tmp_path, "registry")
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    with file_lock(Home(tmp_path), "registry", timeout=1):
        pass
