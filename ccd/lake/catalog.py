"""The DuckDB catalog of the lake: blocks, external-to-internal id maps, validation results.

The catalog is the source of truth: a Parquet file in the lake counts only once the catalog
names it. Connections are short-lived (a DuckDB file open for writing cannot be opened by a
second process at all), and every multi-row change runs in one transaction, so a crash leaves
either the old state or the new one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import duckdb
import numpy as np
import pandas as pd

from ccd.home import Home
from ccd.locking import file_lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    block INTEGER PRIMARY KEY,
    source VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    file VARCHAR NOT NULL,            -- path of the Parquet part, relative to the home folder
    rows BIGINT NOT NULL,
    train_rows BIGINT NOT NULL,
    valid_rows BIGINT NOT NULL,
    test_rows BIGINT NOT NULL,
    users BIGINT NOT NULL,
    items BIGINT NOT NULL,
    new_users BIGINT NOT NULL,
    new_items BIGINT NOT NULL,
    n_users BIGINT NOT NULL,          -- size of the id space after this block
    n_items BIGINT NOT NULL,
    min_timestamp BIGINT,
    max_timestamp BIGINT,
    duplicates_dropped BIGINT NOT NULL,
    validation_status VARCHAR NOT NULL,
    ingested_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS user_map (
    external_id VARCHAR PRIMARY KEY, internal_id BIGINT NOT NULL UNIQUE, first_block INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS item_map (
    external_id VARCHAR PRIMARY KEY, internal_id BIGINT NOT NULL UNIQUE, first_block INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS validations (
    block INTEGER NOT NULL,
    content_hash VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    status VARCHAR NOT NULL,          -- passed | warning | rejected
    summary VARCHAR NOT NULL,
    report_path VARCHAR NOT NULL,     -- relative to the home folder
    report JSON NOT NULL,
    checked_at TIMESTAMP NOT NULL
);
"""


# Catalog files whose tables this process has already created (DDL costs a few ms per connect).
_SCHEMA_READY: set = set()


@dataclass(frozen=True)
class BlockRecord:
    """One row of the `blocks` table."""

    block: int
    source: str
    content_hash: str
    file: str
    rows: int
    train_rows: int
    valid_rows: int
    test_rows: int
    users: int
    items: int
    new_users: int
    new_items: int
    n_users: int
    n_items: int
    min_timestamp: int | None
    max_timestamp: int | None
    duplicates_dropped: int
    validation_status: str
    ingested_at: datetime

    def to_dict(self) -> dict:
        values = asdict(self)
        values["ingested_at"] = self.ingested_at.isoformat()
        return values


@contextmanager
def connect(home: Home, read_only: bool = False, timeout: float | None = 60.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the catalog for one short operation, creating its tables on first use.

    Readers share the catalog lock and writers take it alone, because DuckDB refuses a second
    process on a file that is open for writing. `timeout`: seconds to wait for the lock (None:
    as long as it takes).
    """
    missing = not home.catalog_path.exists()
    if read_only and missing:
        read_only = False  # nothing to read yet: create the empty catalog once
    with file_lock(home, "catalog", timeout=timeout, shared=read_only):
        con = duckdb.connect(str(home.catalog_path), read_only=read_only)
        try:
            # A missing file is created empty even if this process once made the tables at this
            # path: the home folder may have been deleted and recreated since.
            if not read_only and (missing or home.catalog_path not in _SCHEMA_READY):
                con.execute(SCHEMA)
                _SCHEMA_READY.add(home.catalog_path)
            yield con
        finally:
            con.close()


def list_blocks(home: Home) -> list[BlockRecord]:
    with connect(home, read_only=True) as con:
        rows = con.execute("SELECT * FROM blocks ORDER BY block").fetchall()
        names = [d[0] for d in con.description]
    return [BlockRecord(**dict(zip(names, row))) for row in rows]


def get_block(home: Home, block: int) -> BlockRecord | None:
    return next((b for b in list_blocks(home) if b.block == block), None)


def lookup_ids(con: duckdb.DuckDBPyConnection, table: str, external: pd.Series) -> np.ndarray:
    """Internal ids for `external` ids (strings); -1 where the id is not mapped yet."""
    con.register("lookup_frame", pd.DataFrame({"external_id": external.to_numpy(object), "pos": np.arange(len(external))}))
    found = con.execute(
        f"SELECT l.pos, m.internal_id FROM lookup_frame l JOIN {table} m USING (external_id)"
    ).fetchnumpy()
    con.unregister("lookup_frame")
    result = np.full(len(external), -1, dtype=np.int64)
    result[found["pos"]] = found["internal_id"]
    return result


def next_internal_id(con: duckdb.DuckDBPyConnection, table: str) -> int:
    # fetchall, not fetchone: DuckDB 2 keeps a result open until a fetch comes back empty.
    return int(con.execute(f"SELECT coalesce(max(internal_id) + 1, 0) FROM {table}").fetchall()[0][0])


def insert_ids(con: duckdb.DuckDBPyConnection, table: str, new_ids: pd.DataFrame) -> None:
    """Insert rows (external_id, internal_id, first_block) into an id map."""
    con.register("new_ids_frame", new_ids)
    con.execute(f"INSERT INTO {table} SELECT external_id, internal_id, first_block FROM new_ids_frame")
    con.unregister("new_ids_frame")


def upsert_block(con: duckdb.DuckDBPyConnection, record: BlockRecord) -> None:
    values = asdict(record)
    con.execute("DELETE FROM blocks WHERE block = ?", [record.block])
    columns = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    con.execute(f"INSERT INTO blocks ({columns}) VALUES ({marks})", list(values.values()))


def record_validation(
    con: duckdb.DuckDBPyConnection, block: int, content_hash: str, source: str,
    status: str, summary: str, report_path: str, report: dict,
) -> None:
    con.execute(
        "INSERT INTO validations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [block, content_hash, source, status, summary, report_path, json.dumps(report), utc_now()],
    )


def list_validations(home: Home, block: int | None = None) -> list[dict]:
    with connect(home, read_only=True) as con:
        where, params = ("WHERE block = ?", [block]) if block is not None else ("", [])
        rows = con.execute(
            f"SELECT block, content_hash, source, status, summary, report_path, checked_at "
            f"FROM validations {where} ORDER BY checked_at", params,
        ).fetchall()
        names = [d[0] for d in con.description]
    return [dict(zip(names, row)) for row in rows]


def id_map(home: Home, kind: str) -> pd.DataFrame:
    """The full external→internal map for `kind` in {"user", "item"}, ordered by internal id."""
    with connect(home, read_only=True) as con:
        return con.execute(f"SELECT external_id, internal_id, first_block FROM {kind}_map ORDER BY internal_id").df()


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)
