"""Read a raw interaction block from CSV, Parquet or JSON lines into a DataFrame.

Readers do no validation beyond "this is a readable table": column checks, types and nulls are
the validation suite's job (`ccd.lake.validate`), so every problem is reported in one place.
What readers do refuse is input they could only read by silently changing it: text that is
not UTF-8, NUL bytes (pandas' CSV parser cuts a value at the first one), repeated column names
(pandas would rename them), repeated keys in a JSON object (the last would win) and JSON
integers beyond 64 bits.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ccd.errors import BadInputError

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
ID_COLUMNS = ("user_id", "item_id")
# Byte-order marks of encodings other than UTF-8, checked before a text file is parsed.
_FOREIGN_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}
# CSV ids that are read as integers: canonical decimals short enough for int64. Anything else
# ("007", "-0", " 7", 20-digit numbers) stays the string it is, so no id changes on the way in.
_CANONICAL_INT = r"0|-?[1-9][0-9]{0,17}"
# CSV ids that are all decimal numbers with a point or exponent are read as floats, as from
# Parquet, so validation rejects them as a float id column (ints that went through a float).
_DECIMAL = r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?"
_CHUNK = 1 << 20


def detect_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BadInputError(f"{path}: unknown file type {path.suffix!r}; use .csv, .parquet or .jsonl")
    return fmt


def read_interactions(path: str | Path) -> pd.DataFrame:
    """Read a block file; raise `BadInputError` with one clear line if it cannot be read.

    Ids keep their natural type (integers stay integers, anything else is a string), so `123`
    in a CSV and `123` in a Parquet file map to the same external id later.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise BadInputError(f"{path}: no such file")
        if path.stat().st_size == 0:
            raise BadInputError(f"{path}: file is empty")
    except OSError as exc:  # a name too long for the file system, a folder without permission
        raise BadInputError(f"{str(path)[:200]}: cannot open ({exc.strerror})") from None
    fmt = detect_format(path)
    try:
        if fmt == "parquet":
            return pq.read_table(path).to_pandas()
        _check_text(path)
        return _read_csv(path) if fmt == "csv" else _read_jsonl(path)
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except (pa.ArrowException, OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise BadInputError(f"{path}: not a readable {fmt} file ({_first_line(exc)})") from None


def _check_text(path: Path) -> None:
    """Refuse UTF-16/32 files and NUL bytes before a text parser can misread them."""
    with open(path, "rb") as handle:
        head = handle.read(4)
        for bom, encoding in _FOREIGN_BOMS.items():
            if head.startswith(bom):
                raise BadInputError(f"{path}: file is {encoding} text (byte-order mark); save it as UTF-8")
        handle.seek(0)
        offset = 0
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            at = chunk.find(b"\0")
            if at >= 0:
                raise BadInputError(f"{path}: NUL byte at offset {offset + at}; not a text file")
            offset += len(chunk)


def _read_csv(path: Path) -> pd.DataFrame:
    header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, encoding="utf-8")
    names = [n for n in (header.iloc[0].tolist() if len(header) else []) if n != ""]
    repeated = _repeated(names)
    if repeated:
        raise BadInputError(f"{path}: repeated column name(s) {', '.join(map(repr, repeated))}")
    frame = pd.read_csv(path, dtype={"user_id": str, "item_id": str, "split": "string"}, encoding="utf-8")
    for column in ID_COLUMNS:
        if column in frame:
            frame[column] = _natural_ids(frame[column])
    return frame


def _natural_ids(values: pd.Series) -> pd.Series:
    """The ids as int64 if every one is a canonical decimal integer, as float64 if every one is
    a decimal number and some have a point or exponent, else the unchanged strings."""
    if values.isna().any():
        return values  # validation reports the nulls
    if values.str.fullmatch(_CANONICAL_INT).all():
        return values.astype(np.int64)
    if values.str.fullmatch(_DECIMAL).all() and values.str.contains("[.eE]").any():
        return values.astype(np.float64)
    return values


def _read_jsonl(path: Path) -> pd.DataFrame:
    """One JSON object per non-blank line; columns are the union of the objects' keys."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line, object_pairs_hook=_object, parse_int=_int64)
            except ValueError as exc:  # JSONDecodeError, repeated key, integer too large
                raise BadInputError(f"{path}: line {number}: not valid JSON lines ({_first_line(exc)})") from None
            if not isinstance(record, dict):
                raise BadInputError(f"{path}: line {number}: expected a JSON object, got {type(record).__name__}")
            if "\\ud" in line.lower() and not _encodable(record):
                raise BadInputError(f"{path}: line {number}: a \\u escape gives a lone surrogate, not a character")
            records.append(record)
    return pd.DataFrame.from_records(records)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    repeated = _repeated([k for k, _ in pairs])
    if repeated:
        raise ValueError(f"repeated key {', '.join(map(repr, repeated))}")
    return dict(pairs)


def _encodable(record: dict[str, Any]) -> bool:
    """False if a JSON `\\ud800`-style escape left a lone surrogate, which no UTF-8 text can hold."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _repeated(names: list[str]) -> list[str]:
    return sorted(name for name, count in Counter(names).items() if count > 1)


def _int64(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value < 2**64:
        raise ValueError(f"integer {text[:30]}{'...' if len(text) > 30 else ''} does not fit in 64 bits")
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
