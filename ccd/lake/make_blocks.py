"""Cut a raw timestamped interaction log into a base block and incremental blocks.

This is the preprocessing step of the CCD protocol, done on your own data: `ccd make-blocks`
turns one log (CSV or Parquet with a user, an item and a timestamp column) into
`block_0..block_N` files that `ccd ingest` then takes one at a time. The steps, in order:

1. **Read** the three columns. Timestamps may be integer unix seconds or date/time strings
   (ISO 8601); they come out as int64 unix seconds (UTC).
2. **Sort by time** (stable: rows with equal timestamps keep their file order) and
   **deduplicate** (user, item) pairs keeping the first occurrence, so no pair repeats inside a
   block or across blocks.
3. **k-core** (optional, K > 0): drop users and items with fewer than K interactions, repeated
   until every remaining user and item has at least K. The CCD authors filtered in one pass
   instead, which can leave some below K; `single_pass=True` does that.
4. **Cut by count**: block 0 is the earliest `base_fraction` of the interactions; the rest is
   split into `n_blocks` slices of equal row count (sizes differ by at most one). Equal counts
   rather than equal time spans, so a quiet period never yields an empty or tiny block.

Ids are kept as they are (strings from CSV, the stored type from Parquet); the lake maps them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ccd.atomic import write_with
from ccd.errors import BadInputError

# A block file of a landing folder: `block_<K>.<format>` (what `write_blocks` writes and what
# `ccd ingest-folder` and the stream flow read).
BLOCK_FILE = re.compile(r"block_(\d+)\.(csv|parquet|pq|jsonl|ndjson|json)")

log = logging.getLogger(__name__)

COLUMNS = ("user_id", "item_id", "timestamp")
_INTEGER = r"\s*[+-]?\d+\s*"


def make_blocks(
    raw: str | Path,
    out: str | Path,
    n_blocks: int = 5,
    base_fraction: float = 0.5,
    kcore: int = 0,
    single_pass: bool = False,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    fmt: Literal["parquet", "csv"] = "parquet",
) -> dict[str, Any]:
    """Read `raw`, clean it and write `block_0..block_{n_blocks}` under `out`.

    Parameters
    ----------
    raw : path
        CSV (any pandas-readable compression) or Parquet log.
    out : path
        Output folder; files are `block_<k>.<fmt>` with columns user_id, item_id, timestamp.
    n_blocks : int
        Number of incremental blocks after the base block.
    base_fraction : float
        Share of the (cleaned) interactions in block 0, in (0, 1).
    kcore : int
        Minimum interactions per user and per item; 0 or 1 turns filtering off.
    single_pass : bool
        Filter once instead of until stable.
    user_col, item_col, time_col : str
        Column names in `raw`.
    fmt : {"parquet", "csv"}
        Output format.

    Returns
    -------
    dict
        `input_rows`, `duplicates_dropped`, `kcore_dropped`, `rows`, `out`, and `blocks`: one
        `block_stats` row per block.
    """
    if n_blocks < 1:
        raise BadInputError(f"--blocks must be at least 1, got {n_blocks}")
    if not 0.0 < base_fraction < 1.0:
        raise BadInputError(f"--base-fraction must be strictly between 0 and 1, got {base_fraction}")
    if kcore < 0:
        raise BadInputError(f"--kcore must be non-negative, got {kcore}")
    frame = read_log(raw, user_col, item_col, time_col)
    input_rows = len(frame)
    frame = deduplicate(frame)
    deduped_rows = len(frame)
    frame = kcore_filter(frame, kcore, single_pass)
    if len(frame) < n_blocks + 1:
        filtering = f" and {kcore}-core filtering" if kcore > 1 else ""
        raise BadInputError(
            f"{raw}: {len(frame)} interactions left after deduplication{filtering}, "
            f"fewer than the {n_blocks + 1} blocks asked for"
        )
    blocks = cut_blocks(frame, n_blocks, base_fraction)
    stats = write_blocks(blocks, Path(out), fmt)
    return {
        "input_rows": input_rows,
        "duplicates_dropped": input_rows - deduped_rows,
        "kcore_dropped": deduped_rows - len(frame),
        "rows": len(frame),
        "out": str(Path(out)),
        "blocks": stats,
    }


def read_log(path: str | Path, user_col: str = "user_id", item_col: str = "item_id", time_col: str = "timestamp") -> pd.DataFrame:
    """Read a raw log into columns user_id, item_id, timestamp (int64 unix seconds).

    Raises `BadInputError` for a missing or unreadable file, missing columns, empty ids or
    timestamps that are neither integers nor date/time strings.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"raw log {path} does not exist")
    wanted = [user_col, item_col, time_col]
    if len(set(wanted)) < 3:
        raise BadInputError(f"user, item and time columns must differ, got {wanted}")
    raw = _read_parquet(path, wanted) if _is_parquet(path) else _read_csv(path, wanted)
    for col in (user_col, item_col):
        empty = int(raw[col].isna().sum())
        if empty:
            raise BadInputError(f"{path}: {empty} row(s) have an empty {col!r}")
    return pd.DataFrame(
        {
            "user_id": raw[user_col].to_numpy(),
            "item_id": raw[item_col].to_numpy(),
            "timestamp": parse_timestamps(raw[time_col], f"{path}: column {time_col!r}"),
        }
    )


def parse_timestamps(values: pd.Series, where: str = "timestamps") -> np.ndarray:
    """Unix seconds (int64, shape (N,)) from integers, floats, datetimes or ISO 8601 strings.

    Naive date/times are taken as UTC. Fractions of a second are truncated.
    """
    if pd.api.types.is_bool_dtype(values):
        raise BadInputError(f"{where} holds booleans, not timestamps")
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy(np.int64)
    if pd.api.types.is_float_dtype(values):
        if not np.isfinite(values.to_numpy()).all():
            raise BadInputError(f"{where} has {int((~np.isfinite(values.to_numpy())).sum())} empty or non-finite timestamp(s)")
        return np.floor(values.to_numpy()).astype(np.int64)
    if pd.api.types.is_datetime64_any_dtype(values):
        return _seconds(pd.to_datetime(values, utc=True), values, where)
    text = values.astype("string")
    if text.isna().any():
        raise BadInputError(f"{where} has {int(text.isna().sum())} empty timestamp(s)")
    if text.str.fullmatch(_INTEGER).all():
        return text.str.strip().astype("int64").to_numpy(np.int64)
    parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    return _seconds(parsed, text, where)


def deduplicate(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort by time (stable) and keep each (user, item) pair's first occurrence."""
    ordered = frame.sort_values("timestamp", kind="stable")
    return ordered.drop_duplicates(["user_id", "item_id"], keep="first").reset_index(drop=True)


def kcore_filter(frame: pd.DataFrame, k: int, single_pass: bool = False) -> pd.DataFrame:
    """Keep interactions whose user and item both have at least `k` of them.

    Iterative by default: dropping a sparse item can push a user below `k`, so filtering repeats
    until nothing changes and the result is a true k-core. `single_pass=True` filters once.
    """
    if k <= 1:
        return frame
    while True:
        user_counts = frame.groupby("user_id", sort=False)["user_id"].transform("size")
        item_counts = frame.groupby("item_id", sort=False)["item_id"].transform("size")
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            return frame
        frame = frame[keep.to_numpy()].reset_index(drop=True)
        log.info("k-core: %d interactions left", len(frame))
        if single_pass or frame.empty:
            return frame


def cut_blocks(frame: pd.DataFrame, n_blocks: int, base_fraction: float) -> list[pd.DataFrame]:
    """Split a time-sorted frame into a base block and `n_blocks` equal-count blocks.

    Returns `n_blocks + 1` frames; block 0 has `round(base_fraction * N)` rows (at least 1 and
    leaving at least one row per later block).
    """
    n = len(frame)
    base = min(max(int(round(base_fraction * n)), 1), n - n_blocks)
    later = np.array_split(np.arange(base, n), n_blocks)
    bounds = [0, base, *(int(part[-1]) + 1 for part in later)]
    return [frame.iloc[a:b].reset_index(drop=True) for a, b in zip(bounds[:-1], bounds[1:])]


def block_stats(blocks: list[pd.DataFrame]) -> list[dict[str, Any]]:
    """Per block: rows, users, items, new users/items (never seen in earlier blocks), time range."""
    seen_users: set = set()
    seen_items: set = set()
    stats = []
    for k, block in enumerate(blocks):
        users, items = set(block["user_id"].unique()), set(block["item_id"].unique())
        stats.append(
            {
                "block": k,
                "rows": len(block),
                "users": len(users),
                "items": len(items),
                "new_users": len(users - seen_users),
                "new_items": len(items - seen_items),
                "min_timestamp": int(block["timestamp"].min()),
                "max_timestamp": int(block["timestamp"].max()),
            }
        )
        seen_users |= users
        seen_items |= items
    return stats


def write_blocks(blocks: list[pd.DataFrame], out: Path, fmt: Literal["parquet", "csv"] = "parquet") -> list[dict[str, Any]]:
    """Write `block_<k>.<fmt>` files atomically (Parquet with zstd); return `block_stats(blocks)`.

    Block files of an earlier cut in `out` that this one does not overwrite are removed.

    The Arrow table carries no pandas metadata, so equal frames give byte-identical files.
    """
    if fmt not in ("parquet", "csv"):
        raise BadInputError(f"--format must be parquet or csv, got {fmt!r}")
    out.mkdir(parents=True, exist_ok=True)
    written = {f"block_{k}.{fmt}" for k in range(len(blocks))}
    for stale in [p for p in out.iterdir() if BLOCK_FILE.fullmatch(p.name) and p.name not in written]:
        stale.unlink()  # an earlier cut's blocks would otherwise be ingested with these
    for k, block in enumerate(blocks):
        table = pa.Table.from_pandas(block[list(COLUMNS)], preserve_index=False).replace_schema_metadata(None)
        if fmt == "parquet":
            write_with(out / f"block_{k}.parquet", lambda tmp, t=table: pq.write_table(t, tmp, compression="zstd"))
        else:
            write_with(out / f"block_{k}.csv", lambda tmp, t=table: pacsv.write_csv(t, tmp))
    return block_stats(blocks)


def _is_parquet(path: Path) -> bool:
    if path.suffix.lower() in (".parquet", ".pq"):
        return True
    with open(path, "rb") as handle:
        return handle.read(4) == b"PAR1"


def _read_parquet(path: Path, wanted: list[str]) -> pd.DataFrame:
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as exc:
        raise BadInputError(f"cannot read {path} as Parquet: {exc}") from None
    _require(path, names, wanted)
    return pq.read_table(path, columns=wanted).to_pandas()


def _read_csv(path: Path, wanted: list[str]) -> pd.DataFrame:
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        header = pd.read_csv(path, sep=sep, nrows=0).columns
        _require(path, list(header), wanted)
        return pd.read_csv(path, sep=sep, usecols=wanted, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read {path} as CSV: {str(exc).splitlines()[0]}") from None


def _require(path: Path, names: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in names]
    if missing:
        raise BadInputError(
            f"{path} lacks column(s) {', '.join(missing)} (has: {', '.join(map(str, names))}); "
            "name them with --user-col/--item-col/--time-col"
        )


def _seconds(parsed: pd.Series, original: pd.Series, where: str) -> np.ndarray:
    bad = parsed.isna()
    if bad.any():
        example = original[bad].iloc[0]
        raise BadInputError(f"{where} has {int(bad.sum())} unparseable timestamp(s), e.g. {example!r}")
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
