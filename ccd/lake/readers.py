"""Read a raw interaction block from CSV, Parquet or JSON lines into a DataFrame.

Readers do no validation beyond "this is a readable table": column checks, types and nulls are
the validation suite's job (`ccd.lake.validate`), so every problem is reported in one place.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ccd.errors import BadInputError

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def detect_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BadInputError(f"{path}: unknown file type {path.suffix!r}; use .csv, .parquet or .jsonl")
    return fmt


def read_interactions(path: str | Path) -> pd.DataFrame:
    """Read a block file; raise `BadInputError` with one clear line if it cannot be read.

    CSV ids keep their natural type (integers stay integers, anything else is a string), so
    `123` in a CSV and `123` in a Parquet file map to the same external id later.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path}: file is empty")
    fmt = detect_format(path)
    try:
        if fmt == "parquet":
            return pq.read_table(path).to_pandas()
        if fmt == "csv":
            return pd.read_csv(path, dtype={"split": "string"}, keep_default_na=True, encoding="utf-8")
        return pd.read_json(path, lines=True, dtype=False)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise BadInputError(f"{path}: not a readable {fmt} file ({_first_line(exc)})") from None
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise BadInputError(f"{path}: not a readable {fmt} file ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
