"""Ingest one interaction block: read, validate, map ids, split, write to the lake, catalog it.

The order of the steps is what makes ingest safe to crash and to repeat:

1. read and validate (a rejected block goes to quarantine; nothing else changes);
2. compare its content hash with the catalog (same content → no-op; other content → refused
   unless `replace`, and always for a block that later blocks build on);
3. map external ids to internal ids and split, in memory;
4. write the Parquet part under a content-addressed name, atomically;
5. commit the block record, new id-map rows and the validation result in ONE catalog
   transaction (a replace also clears the block's recorded stages there, so what was trained
   on the old content runs again): only now does the block exist;
6. delete parts of the block that the catalog no longer names (an older version, or an orphan
   of a crash between steps 4 and 5); the next ingest also removes the orphan parts and
   temporary files a killed ingest left behind.

The whole ingest holds the `ingest` lock, so two ingests of the same home serialize.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ccd import atomic, stages
from ccd.config import LakeConfig
from ccd.errors import BadInputError, BlockOrderError, ValidationFailedError
from ccd.home import Home, block_number
from ccd.lake import catalog
from ccd.lake.make_blocks import BLOCK_FILE
from ccd.lake.readers import read_interactions
from ccd.lake.split import split_block
from ccd.lake.validate import BlockContext, ValidationReport, validate_block
from ccd.locking import file_lock

log = logging.getLogger(__name__)

PART_SCHEMA = pa.schema([
    ("user", pa.int64()),
    ("item", pa.int64()),
    ("split", pa.dictionary(pa.int8(), pa.string())),
    ("timestamp", pa.int64()),
])
# Seconds to wait for another ingest of the same home before giving up.
INGEST_LOCK_TIMEOUT = 600.0


@dataclass(frozen=True)
class IngestResult:
    """What an ingest did: `ingested` (new block), `replaced`, or `unchanged` (same content)."""

    block: int
    status: Literal["ingested", "replaced", "unchanged"]
    record: catalog.BlockRecord
    validation: ValidationReport | None
    report_path: str | None
    # sha256 of the file's bytes, so a caller can tell the same file again without reading it
    file_sha256: str

    def to_dict(self) -> dict:
        return {
            "block": self.block,
            "status": self.status,
            "record": self.record.to_dict(),
            "validation": self.validation.to_dict() if self.validation else None,
            "report_path": self.report_path,
            "file_sha256": self.file_sha256,
        }


def ingest_block(
    home: Home, path: str | Path, block: int, config: LakeConfig, replace: bool = False
) -> IngestResult:
    """Ingest the block file `path` as block number `block`.

    Raises
    ------
    BadInputError
        The file cannot be read.
    BlockOrderError
        `block` is neither the next block nor an existing one, or it exists with other content
        and `replace` is off.
    ValidationFailedError
        The block failed validation; it was quarantined and nothing else changed.
    """
    path = Path(path)
    block = block_number(block)
    with file_lock(home, "ingest", timeout=INGEST_LOCK_TIMEOUT):
        remove_orphans(home)
        blocks = {b.block: b for b in catalog.list_blocks(home)}
        _check_order(block, blocks)
        raw = read_interactions(path)
        cleaned, report = validate_block(raw, _context(block, blocks), config)
        if report.status == "rejected":
            _reject(home, path, block, report)
        frame = canonical_frame(cleaned)
        content_hash = hash_frame(frame)
        existing = blocks.get(block)
        if existing is not None and existing.content_hash == content_hash:
            log.info("block %d: same content as ingested on %s; nothing to do", block, existing.ingested_at)
            return IngestResult(block, "unchanged", existing, report, None, atomic.sha256_file(path))
        differs = (f"block {block} already holds different content than {path} "
                   f"(hash {existing.content_hash[:12]}, from {existing.source})") if existing is not None else ""
        later = sorted(k for k in blocks if k > block)
        if existing is not None and later:
            raise BlockOrderError(
                f"{differs}, and it cannot be replaced: blocks {later[0]}..{later[-1]} came after it and their ids "
                f"and models build on it; only the last block can be replaced (or ingest the stream into a new home)"
            )
        if existing is not None and not replace:
            raise BlockOrderError(f"{differs}; if this file is a correction, use --replace to overwrite it")
        with stages.idle_block(home, block) if existing is not None else contextlib.nullcontext():
            record, report_path = _commit(home, path, block, frame, content_hash, report, config, replacing=existing is not None)
        return IngestResult(block, "replaced" if existing else "ingested", record, report, report_path, atomic.sha256_file(path))


def canonical_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Ids as strings, timestamps as unix seconds, rows sorted: the form that is hashed and stored.

    Integer ids become their decimal string, so `123` read from CSV and from Parquet is the same
    external id.
    """
    out = pd.DataFrame({
        "user_id": _id_strings(frame["user_id"]),
        "item_id": _id_strings(frame["item_id"]),
    })
    if "timestamp" in frame:
        out["timestamp"] = to_unix_seconds(frame["timestamp"])
    if "split" in frame:
        out["split"] = frame["split"].astype("string").to_numpy(object)
    return out.sort_values(["user_id", "item_id"], kind="stable").reset_index(drop=True)


def hash_frame(frame: pd.DataFrame) -> str:
    """sha256 of a canonical frame's content (column names, then row hashes in order)."""
    digest = hashlib.sha256(",".join(frame.columns).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def to_unix_seconds(values: pd.Series) -> np.ndarray:
    """Integer seconds since the epoch from integer seconds, datetimes or date strings."""
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy(np.int64)
    stamps = pd.to_datetime(values, utc=True, format="mixed")
    return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def remove_orphans(home: Home) -> int:
    """Delete lake files the catalog does not name (leftovers of a crash); return how many.

    Temporary files of killed writes go too, in every folder only ingest writes (the lake, the
    validation reports, the quarantine): the caller holds the ingest lock, so none of them
    belongs to a write still in progress.
    """
    named = {home.root / b.file for b in catalog.list_blocks(home)}
    owned = (home.interactions, home.reports / "validation", home.quarantine)
    removed = sum(atomic.remove_temp_files(folder) for folder in owned)
    for part in home.interactions.glob("block=*/*.parquet") if home.interactions.exists() else []:
        if part not in named:
            log.warning("removing orphan lake file %s (not in the catalog)", part)
            part.unlink()
            removed += 1
    return removed


def _check_order(block: int, blocks: dict[int, catalog.BlockRecord]) -> None:
    expected = max(blocks, default=-1) + 1
    if block in blocks or block == expected:
        return
    raise BlockOrderError(f"block {block} is out of order: the next block to ingest is {expected}")


def _context(block: int, blocks: dict[int, catalog.BlockRecord]) -> BlockContext:
    earlier = [b for k, b in sorted(blocks.items()) if k < block]
    stamps = [b.max_timestamp for b in earlier if b.max_timestamp is not None]
    return BlockContext(block, max(stamps) if stamps else None, tuple(b.rows for b in earlier))


def _id_strings(values: pd.Series) -> np.ndarray:
    if pd.api.types.is_integer_dtype(values):  # any width or sign: uint64 ids past 2**63 stay positive
        return values.astype(str).to_numpy(object)
    return values.map(lambda v: str(int(v)) if isinstance(v, (int, np.integer)) else str(v)).to_numpy(object)


def _reject(home: Home, path: Path, block: int, report: ValidationReport) -> None:
    """Put the input and its report in quarantine, record the verdict, raise."""
    file_hash = atomic.sha256_file(path)
    folder = home.quarantine / f"block={block}" / f"{catalog.utc_now():%Y%m%dT%H%M%S}-{file_hash[:12]}"
    report_path = _write_reports(home, folder / "report", report)
    atomic.write_with(folder / f"input{path.suffix}", lambda tmp: shutil.copyfile(path, tmp))
    with catalog.connect(home) as con:
        catalog.record_validation(con, block, file_hash, str(path), report.status, report.summary(), report_path, report.to_dict())
    raise ValidationFailedError(f"{report.summary()} (report: {home.root / report_path})")


def _commit(
    home: Home, source: Path, block: int, frame: pd.DataFrame, content_hash: str,
    report: ValidationReport, config: LakeConfig, replacing: bool = False,
) -> tuple[catalog.BlockRecord, str]:
    report_path = _write_reports(home, home.reports / "validation" / f"block={block}-{content_hash[:12]}", report)
    part = home.block_dir(block) / f"part-{content_hash[:16]}.parquet"
    with catalog.connect(home) as con:
        users, new_users = _map_ids(con, "user_map", frame["user_id"], block)
        items, new_items = _map_ids(con, "item_map", frame["item_id"], block)
        table = _partition(frame, users, items, config)
        atomic.write_with(part, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
        record = _record(home, source, block, frame, content_hash, part, table, new_users, new_items, report, con)
        con.begin()
        catalog.insert_ids(con, "user_map", new_users)
        catalog.insert_ids(con, "item_map", new_items)
        catalog.upsert_block(con, record)
        catalog.record_validation(con, block, content_hash, str(source), report.status, report.summary(), report_path, report.to_dict())
        if replacing:  # what was trained on the old content must run again
            forgotten = stages.forget_block(con, block)
            log.info("block %d replaced: %d recorded stages of it will run again", block, forgotten)
        con.commit()
    for stale in home.block_dir(block).glob("*.parquet"):
        if stale != part:
            stale.unlink()
    log.info("block %d: %d rows, %d new users, %d new items", block, record.rows, record.new_users, record.new_items)
    return record, report_path


def _map_ids(con, table: str, external: pd.Series, block: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Internal ids for every row; new external ids get the next free ids in order of appearance."""
    ids = catalog.lookup_ids(con, table, pd.Series(external))
    unknown = pd.unique(external[ids < 0])
    start = catalog.next_internal_id(con, table)
    new = pd.DataFrame({
        "external_id": unknown,
        "internal_id": np.arange(start, start + len(unknown), dtype=np.int64),
        "first_block": np.full(len(unknown), block, dtype=np.int32),
    })
    if len(unknown):
        ids[ids < 0] = pd.Series(new["internal_id"].to_numpy(), index=unknown)[external[ids < 0]].to_numpy()
    return ids, new


def _partition(frame: pd.DataFrame, users: np.ndarray, items: np.ndarray, config: LakeConfig) -> pa.Table:
    mapped = pd.DataFrame({"user": users, "item": items})
    split = frame["split"] if "split" in frame else split_block(mapped, config)
    stamps = frame["timestamp"].to_numpy(np.int64) if "timestamp" in frame else None
    return pa.table({
        "user": pa.array(users, pa.int64()),
        "item": pa.array(items, pa.int64()),
        "split": pa.array(np.asarray(split, dtype=object), pa.string()).dictionary_encode().cast(PART_SCHEMA.field("split").type),
        "timestamp": pa.array(stamps, pa.int64()) if stamps is not None else pa.nulls(len(frame), pa.int64()),
    }, schema=PART_SCHEMA)


def _record(home, source, block, frame, content_hash, part, table, new_users, new_items, report, con) -> catalog.BlockRecord:
    splits = pd.Series(table.column("split").to_pylist()).value_counts()
    stamps = frame["timestamp"] if "timestamp" in frame else None
    return catalog.BlockRecord(
        block=block,
        source=str(source),
        content_hash=content_hash,
        file=str(part.relative_to(home.root)),
        rows=table.num_rows,
        train_rows=int(splits.get("train", 0)),
        valid_rows=int(splits.get("valid", 0)),
        test_rows=int(splits.get("test", 0)),
        users=int(frame["user_id"].nunique()),
        items=int(frame["item_id"].nunique()),
        new_users=len(new_users),
        new_items=len(new_items),
        n_users=catalog.next_internal_id(con, "user_map") + len(new_users),
        n_items=catalog.next_internal_id(con, "item_map") + len(new_items),
        min_timestamp=int(stamps.min()) if stamps is not None else None,
        max_timestamp=int(stamps.max()) if stamps is not None else None,
        duplicates_dropped=report.duplicates_dropped,
        validation_status=report.status,
        ingested_at=catalog.utc_now(),
    )


def _write_reports(home: Home, stem: Path, report: ValidationReport) -> str:
    """Write `<stem>.md`, `.html` and `.json`; return the markdown path relative to home."""
    atomic.write_text(stem.with_suffix(".md"), report.to_markdown())
    atomic.write_text(stem.with_suffix(".html"), report.to_html())
    atomic.write_text(stem.with_suffix(".json"), json.dumps(report.to_dict(), indent=2, default=str))
    return str(stem.with_suffix(".md").relative_to(home.root))


def block_files(folder: str | Path) -> list[tuple[int, Path]]:
    """Block files in `folder`, named `block_<K>.<csv|parquet|jsonl>`, sorted by K.

    This is the landing-folder convention used by `ccd ingest-folder` and the stream flow.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: no such folder")
    found: dict[int, Path] = {}
    for path in folder.iterdir():
        match = BLOCK_FILE.fullmatch(path.name)
        if not match:
            continue
        block = int(match.group(1))
        if block in found:
            raise BadInputError(f"{folder}: two files for block {block}: {found[block].name} and {path.name}")
        found[block] = path
    return sorted(found.items())


def ingest_folder(home: Home, folder: str | Path, config: LakeConfig) -> list[IngestResult]:
    """Ingest every block file of `folder` in block order; blocks already ingested are no-ops.

    A gap in the folder's numbering is refused before anything is ingested, rather than after
    the blocks before it.
    """
    files = block_files(folder)
    numbers = [block for block, _ in files]
    expected = max((b.block for b in catalog.list_blocks(home)), default=-1) + 1
    missing = sorted(set(range(min(numbers, default=0), max(numbers, default=-1) + 1)) - set(numbers))
    if numbers and numbers[0] > expected:
        missing = list(range(expected, numbers[0])) + missing
    if missing:
        raise BlockOrderError(f"{folder}: no file for block(s) {', '.join(map(str, missing))}, "
                              f"so the blocks after them would be out of order; nothing was ingested")
    return [ingest_block(home, path, block, config) for block, path in files]
