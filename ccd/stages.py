"""The stage ledger: which pipeline stages of which block have finished, and what they produced.

A block goes through stages (ingest, teacher members, student, distill, evaluate, register).
`run_stage` runs one of them and records it in the `stages` table of the lake catalog:

    outputs = run_stage(home, 3, "ingest", lambda: ingest_block(home, path, 3, config.lake))

- a stage already recorded as done is skipped and its recorded outputs are returned, so a re-run
  of an interrupted or failed flow resumes at the first unfinished stage and never redoes (or
  duplicates) finished work;
- a stage is marked done only after its function returns; the function's own writes are atomic
  (`ccd.atomic`, one catalog transaction), so a crash mid-stage leaves a `running` or `failed`
  record and no half-written output, and the re-run simply runs the stage again;
- `run_key` names one run of the pipeline over a block: the normal run is "default", a retrain
  re-runs stages under a new key and leaves the earlier records (and outputs) alone.

Two processes running the same (block, stage, run_key) at once serialize on a file lock: the
second waits, then finds the stage done and skips it. Replacing a block's data
(`ccd ingest --replace`) forgets its records under `idle_block`, which is refused while one of
its stages runs; a stage whose record was forgotten while it ran (it started in between) is not
marked done (`StageForgottenError`), so it runs again on the new data. The ledger is plain `ccd` (no Prefect): the
flows call `run_stage` inside their tasks, and `ccd stages` lists it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import duckdb

from ccd.errors import CcdError
from ccd.home import Home, safe_name
from ccd.lake import catalog
from ccd.locking import LockTimeoutError, file_lock

log = logging.getLogger(__name__)

DEFAULT_RUN_KEY = "default"
SCHEMA = """
CREATE TABLE IF NOT EXISTS stages (
    block INTEGER NOT NULL,
    stage VARCHAR NOT NULL,
    run_key VARCHAR NOT NULL,
    status VARCHAR NOT NULL,          -- running | done | failed
    attempts INTEGER NOT NULL,        -- how many times the stage was started under this key
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    outputs JSON,                     -- what the stage produced (paths relative to home, counts, ids)
    error VARCHAR,
    PRIMARY KEY (block, stage, run_key)
);
"""
_COLUMNS = "block, stage, run_key, status, attempts, started_at, finished_at, outputs, error"
# Catalog files whose `stages` table this process has already created.
_TABLE_READY: set = set()

StageFn = Callable[[], Any]


@dataclass(frozen=True)
class StageRecord:
    """One row of the ledger: the latest attempt of `stage` of `block` under `run_key`."""

    block: int
    stage: str
    run_key: str
    status: str
    attempts: int
    started_at: datetime
    finished_at: datetime | None
    outputs: dict[str, Any] | None
    error: str | None

    @property
    def seconds(self) -> float | None:
        """Duration of the latest attempt, once it has finished (done or failed)."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["started_at"] = self.started_at.isoformat()
        values["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        values["seconds"] = self.seconds
        return values


def run_stage(
    home: Home,
    block: int,
    stage: str,
    fn: StageFn,
    run_key: str = DEFAULT_RUN_KEY,
) -> dict[str, Any]:
    """Run `fn` as stage `stage` of `block` unless the ledger says it is done; return its outputs.

    Parameters
    ----------
    home : Home
    block : int
        Block number k (>= 0).
    stage : str
        Stage name, a safe path component such as "ingest" or "teacher-lightgcn-0".
    fn : callable
        Does the stage's work; called with no arguments. Returns a dict, an object with
        `to_dict()` (e.g. `IngestResult`), or None. The value must be JSON-serialisable
        (paths and datetimes become strings).
    run_key : str
        Which run of the pipeline this belongs to; "default" unless retraining.

    Returns
    -------
    dict
        The stage's outputs as recorded (JSON round-tripped), the same whether the stage ran now
        or was skipped, so callers behave identically on a fresh run and a resumed one.

    Raises
    ------
    Exception
        Whatever `fn` raised, after recording the stage as failed with the error message.
    """
    _check_key(block, stage, run_key)
    with file_lock(home, _lock_name(block, stage, run_key), timeout=None, remove=True):
        record = get(home, block, stage, run_key)
        if record is not None and record.status == "done":
            log.info("block %d stage %s (%s): done at %s, skipped", block, stage, run_key, record.finished_at)
            return record.outputs or {}
        _start(home, block, stage, run_key)
        try:
            outputs = _as_outputs(fn())
        except BaseException as exc:
            _fail(home, block, stage, run_key, exc)
            raise
        _finish(home, block, stage, run_key, outputs)
        return outputs


def is_done(home: Home, block: int, stage: str, run_key: str = DEFAULT_RUN_KEY) -> bool:
    """Whether `stage` of `block` has finished successfully under `run_key`."""
    record = get(home, block, stage, run_key)
    return record is not None and record.status == "done"


def get(home: Home, block: int, stage: str, run_key: str = DEFAULT_RUN_KEY) -> StageRecord | None:
    """The ledger record of one stage, or None if it never started."""
    rows = _select(home, "WHERE block = ? AND stage = ? AND run_key = ?", [block, stage, run_key])
    return rows[0] if rows else None


def done_outputs(home: Home, block: int, stage: str, run_keys: tuple[str, ...] = (DEFAULT_RUN_KEY,)) -> dict[str, Any] | None:
    """Outputs of `stage` of `block` under the first of `run_keys` where it is done, else None.

    A retrain that re-runs only later stages reads what it builds on (e.g. the teacher) this
    way: `done_outputs(home, k, "teacher", (new_key, "default"))`.
    """
    for run_key in run_keys:
        record = get(home, block, stage, run_key)
        if record is not None and record.status == "done":
            return record.outputs or {}
    return None


def list_stages(home: Home, block: int | None = None, run_key: str | None = None) -> list[StageRecord]:
    """Ledger records ordered by block, then start time; optionally of one block or run key."""
    clauses, params = [], []
    if block is not None:
        clauses.append("block = ?")
        params.append(block)
    if run_key is not None:
        clauses.append("run_key = ?")
        params.append(run_key)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return _select(home, where, params)


class StageBusyError(CcdError):
    """A stage of the block is running now, so its data cannot be replaced under it."""


class StageForgottenError(CcdError):
    """A stage's record was forgotten while it ran (its block was replaced): its result is void."""


@contextmanager
def idle_block(home: Home, block: int) -> Iterator[None]:
    """Hold the lock of every recorded stage of `block` (its ingest aside) for the `with` body.

    Refused at once (`StageBusyError`) when one is held: that stage is running, and would
    finish on the data the body replaces. A recorded stage that starts meanwhile waits for the
    body; one without a record yet is not held back, but finds its record gone when it ends
    (`StageForgottenError`).
    """
    with ExitStack() as held:
        for record in list_stages(home, block):
            if record.stage == "ingest":
                continue
            try:
                held.enter_context(file_lock(home, _lock_name(block, record.stage, record.run_key), timeout=0, remove=True))
            except LockTimeoutError:
                raise StageBusyError(
                    f"block {block} is being trained now (stage {record.stage}, run key {record.run_key}): "
                    f"replace it once that run has stopped"
                ) from None
        yield


def forget_block(con: duckdb.DuckDBPyConnection, block: int) -> int:
    """Delete every record of `block` but its ingest, under every run key, inside the caller's
    catalog transaction: its data was replaced, so what was trained on it must run again.
    Returns how many records went."""
    con.execute(SCHEMA)
    (count,) = con.execute("SELECT count(*) FROM stages WHERE block = ? AND stage <> 'ingest'", [block]).fetchone()
    con.execute("DELETE FROM stages WHERE block = ? AND stage <> 'ingest'", [block])
    return count


@contextmanager
def _connect(home: Home, read_only: bool = False, timeout: float | None = 60.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A catalog connection whose `stages` table exists (created by the first writer)."""
    if home.catalog_path not in _TABLE_READY:
        with catalog.connect(home, timeout=timeout) as con:
            con.execute(SCHEMA)
        _TABLE_READY.add(home.catalog_path)
    with catalog.connect(home, read_only=read_only, timeout=timeout) as con:
        yield con


def _select(home: Home, where: str, params: list) -> list[StageRecord]:
    with _connect(home, read_only=True) as con:
        rows = con.execute(f"SELECT {_COLUMNS} FROM stages {where} ORDER BY block, started_at, stage", params).fetchall()
    return [_record(row) for row in rows]


def _record(row: tuple) -> StageRecord:
    block, stage, run_key, status, attempts, started, finished, outputs, error = row
    return StageRecord(block, stage, run_key, status, attempts, started, finished,
                       json.loads(outputs) if outputs is not None else None, error)


def _start(home: Home, block: int, stage: str, run_key: str) -> None:
    with _connect(home) as con:
        con.execute(
            "INSERT INTO stages VALUES (?, ?, ?, 'running', 1, ?, NULL, NULL, NULL) "
            "ON CONFLICT (block, stage, run_key) DO UPDATE SET status = 'running', attempts = stages.attempts + 1, "
            "started_at = excluded.started_at, finished_at = NULL, outputs = NULL, error = NULL",
            [block, stage, run_key, catalog.utc_now()],
        )


def _finish(home: Home, block: int, stage: str, run_key: str, outputs: dict[str, Any]) -> None:
    # However long the catalog is busy (a long ingest commit): the stage's work is done, and
    # giving up would throw it away.
    with _connect(home, timeout=None) as con:
        (updated,) = con.execute(
            "UPDATE stages SET status = 'done', finished_at = ?, outputs = ? WHERE block = ? AND stage = ? AND run_key = ?",
            [catalog.utc_now(), json.dumps(outputs), block, stage, run_key],
        ).fetchone()
    if not updated:
        raise StageForgottenError(
            f"block {block} was replaced while stage {stage} (run key {run_key}) ran: its result is discarded; "
            f"run it again to train on the new data"
        )
    log.info("block %d stage %s (%s): done", block, stage, run_key)


def _fail(home: Home, block: int, stage: str, run_key: str, exc: BaseException) -> None:
    message = f"{type(exc).__name__}: {exc}"
    with _connect(home) as con:
        con.execute(
            "UPDATE stages SET status = 'failed', finished_at = ?, error = ? WHERE block = ? AND stage = ? AND run_key = ?",
            [catalog.utc_now(), message, block, stage, run_key],
        )
    log.warning("block %d stage %s (%s) failed: %s", block, stage, run_key, message)


def _as_outputs(value: Any) -> dict[str, Any]:
    """The stage function's result as a JSON-safe dict (round-tripped, so it equals what is stored)."""
    if value is None:
        return {}
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if not isinstance(value, dict):
        raise TypeError(f"a stage function must return a dict, an object with to_dict() or None, got {type(value).__name__}")
    return json.loads(json.dumps(value, default=str))


def _check_key(block: int, stage: str, run_key: str) -> None:
    if isinstance(block, bool) or not isinstance(block, int) or block < 0:
        raise ValueError(f"block must be an integer >= 0, got {block!r}")
    safe_name(stage, "stage name")
    safe_name(run_key, "run key")


def _lock_name(block: int, stage: str, run_key: str) -> str:
    """A lock per (block, stage, run_key); hashed so any safe stage name and key fit one file name."""
    digest = hashlib.sha256(f"{block}/{stage}/{run_key}".encode()).hexdigest()[:20]
    return f"stage-{digest}"
