"""Fuzzed ingest: hypothesis builds small blocks, breaks them in one way and ingests them.

Every case must end in one of two ways (README, "Clear errors" and "Validation"):

- rejected with a `CcdError` whose message is one line, leaving the lake files, the block table
  and the id maps exactly as they were;
- accepted, with exactly the rows the README promises (first row of each (user, item) pair,
  ids as their canonical text, the given split and timestamp), every id mapped back to itself
  through the id maps and the ids of block 0 keeping their internal ids.

Each fault below says which of the two the README requires; `either` is for truncation, where a
CSV or JSON-lines file cut after a row boundary is a valid shorter file. Any other exception
fails the test. The block is block 1 of a home that already holds block 0, so id reuse and the
checks against earlier blocks run too. Each example works on a fresh copy of that home (a
copy costs about 5 ms; an ingest about 0.3 s).

    .venv/bin/python -m pytest -q tests/test_fuzz_ingest.py            # fast subset (30 cases)
    .venv/bin/python -m pytest -q -m slow tests/test_fuzz_ingest.py    # 1,000 cases
"""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccd.cli import main
from ccd.config import LakeConfig
from ccd.errors import BadInputError, CcdError, ValidationFailedError
from ccd.home import Home
from ccd.lake import catalog, store
from ccd.lake.ingest import ingest_block
from tests.conftest import make_block
from tests.test_ingest import lake_state

CONFIG = LakeConfig()
FORMATS = ("csv", "parquet", "jsonl")
SPLITS = ("train", "valid", "test")
T0 = 1_700_000_000
# Id text that every format carries faithfully: no control characters or surrogates, not
# blank, not one of pandas' CSV null tokens, no surrounding space (a fault adds those).
_NA_TOKENS = {"NA", "N/A", "NaN", "nan", "null", "NULL", "None", "n/a", "<NA>", "#NA", "#N/A", "-NaN", "-nan", "1.#IND",
              "1.#QNAN", "#N/A N/A", "-1.#IND", "-1.#QNAN", "NAN", "-NAN", "Nan"}
ID_TEXT = st.text(
    st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="\u2028\u2029\x85"), min_size=1, max_size=8,
).filter(lambda s: s.strip() == s and s.strip() and s not in _NA_TOKENS)
# Texts that mean "a number" to a CSV reader would come back as ints or floats: keep them out of
# string ids so a clean block's ids are exactly what was written.
STRING_ID = ID_TEXT.filter(lambda s: not _looks_numeric(s)) | st.sampled_from(["\u202eevil", "😀", "ユーザー", "a,b", 'q"t'])
INT_ID = st.integers(-(2**63), 2**63 - 1) | st.integers(-5, 30)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class Block:
    """A block as Python values, before it is written in some format."""

    columns: dict[str, list[Any]]
    fmt: str

    @property
    def rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


@dataclass
class Case:
    """A block written to bytes, and what the README says ingest must do with it."""

    data: bytes
    fmt: str
    expect: str  # "accept", "reject" or "either"
    rows: list[tuple] = field(default_factory=list)  # expected stored rows when accepted
    label: str = ""


# --- clean blocks ----------------------------------------------------------------------------

@st.composite
def clean_blocks(draw) -> Block:
    """A valid block: one id type per column, optional valid timestamp and split columns.

    Ids come from small pools so repeated (user, item) pairs, which are dropped, are common.
    """
    fmt = draw(st.sampled_from(FORMATS))
    n = draw(st.integers(1, 8))
    columns = {}
    for name in ("user_id", "item_id"):
        pool = draw(st.lists(INT_ID if draw(st.booleans()) else STRING_ID, min_size=1, max_size=4, unique=True))
        columns[name] = [draw(st.sampled_from(pool)) for _ in range(n)]
    stamps = draw(st.sampled_from(["none", "int", "iso"]))
    if stamps != "none":
        seconds = [T0 + draw(st.integers(0, 10**6)) for _ in range(n)]
        columns["timestamp"] = seconds if stamps == "int" else [_iso(s) for s in seconds]
    if draw(st.booleans()):
        columns["split"] = [draw(st.sampled_from(SPLITS)) for _ in range(n)]
    return Block(columns, fmt)


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def expected_rows(block: Block) -> list[tuple]:
    """The rows ingest must store: first row of each (user, item) pair, canonical values."""
    seen, rows = set(), []
    for i in range(block.rows):
        pair = (_canonical(block.columns["user_id"][i]), _canonical(block.columns["item_id"][i]))
        if pair in seen:
            continue
        seen.add(pair)
        stamp = block.columns.get("timestamp", [None] * block.rows)[i]
        seconds = None if stamp is None else stamp if isinstance(stamp, int) else _seconds(stamp)
        rows.append((*pair, block.columns.get("split", [None] * block.rows)[i], seconds))
    return sorted(rows, key=repr)


def _canonical(value: Any) -> str:
    return value if isinstance(value, str) else str(int(value))


def _seconds(iso: str) -> int:
    return int(datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp())


# --- writing ---------------------------------------------------------------------------------

def to_bytes(block: Block, repeat_header: str | None = None) -> bytes:
    """The block in its format; `repeat_header` writes that column name twice."""
    frame = pd.DataFrame(block.columns)
    if block.fmt == "csv":
        if repeat_header:
            frame.insert(len(frame.columns), repeat_header, frame[repeat_header], allow_duplicates=True)
        return frame.to_csv(index=False).encode("utf-8")
    if block.fmt == "jsonl":
        records = [dict(zip(block.columns, values)) for values in zip(*block.columns.values())]
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        if repeat_header:
            lines = [line[:-1] + f", {json.dumps(repeat_header)}: 1}}" for line in lines]
        return "".join(line + "\n" for line in lines).encode("utf-8")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if repeat_header:
        table = table.append_column(repeat_header, table.column(repeat_header))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


# --- faults ----------------------------------------------------------------------------------
# Each fault draws what it needs and returns the case; formats it does not apply to are skipped
# by `cases`. Values a format cannot hold (a str in a Parquet int column) are avoided by design.

def _cell(draw, block: Block, column: str, value: Any) -> Block:
    row = draw(st.integers(0, block.rows - 1))
    values = list(block.columns[column])
    values[row] = value
    return Block({**block.columns, column: values}, block.fmt)


def _as_strings(block: Block, column: str) -> Block:
    return Block({**block.columns, column: [_canonical(v) for v in block.columns[column]]}, block.fmt)


def fault_none(draw, block: Block) -> Case:
    return Case(to_bytes(block), block.fmt, "accept", expected_rows(block), "clean")


def fault_null_id(draw, block: Block) -> Case:
    column = draw(st.sampled_from(["user_id", "item_id"]))
    return Case(to_bytes(_cell(draw, _as_strings(block, column), column, None)), block.fmt, "reject", label="null id")


def fault_bad_id_text(draw, block: Block) -> Case:
    """Blank ids, and ids holding a control character (NUL, newline, escape, DEL, C1)."""
    column = draw(st.sampled_from(["user_id", "item_id"]))
    text = draw(st.sampled_from(["", " ", "  \t", "a\x00b", "line\nbreak", "cr\r", "\x1b[31m", "del\x7f", "c1\x85"]))
    return Case(to_bytes(_cell(draw, _as_strings(block, column), column, text)), block.fmt, "reject", label="bad id text")


def fault_spaced_id(draw, block: Block) -> Case:
    """Surrounding space is part of the id: kept as written, never trimmed or parsed."""
    column = draw(st.sampled_from(["user_id", "item_id"]))
    spaced = _cell(draw, _as_strings(block, column), column, " " + draw(STRING_ID | INT_ID.map(str)) + " ")
    return Case(to_bytes(spaced), block.fmt, "accept", expected_rows(spaced), "spaced id")


def fault_float_ids(draw, block: Block) -> Case:
    column = draw(st.sampled_from(["user_id", "item_id"]))
    floats = [draw(st.floats(-1e6, 1e6, allow_nan=False)) + 0.5 for _ in range(block.rows)]
    return Case(to_bytes(Block({**block.columns, column: floats}, block.fmt)), block.fmt, "reject", label="float ids")


def fault_bool_ids(draw, block: Block) -> Case:
    column = draw(st.sampled_from(["user_id", "item_id"]))
    bools = [draw(st.booleans()) for _ in range(block.rows)]
    expect = "accept" if block.fmt == "csv" else "reject"  # CSV has no booleans: "True" is a string id
    changed = Block({**block.columns, column: bools}, block.fmt)
    rows = expected_rows(_as_text(changed, column)) if expect == "accept" else []
    return Case(to_bytes(changed), block.fmt, expect, rows, "bool ids")


def _as_text(block: Block, column: str) -> Block:
    return Block({**block.columns, column: [str(v) for v in block.columns[column]]}, block.fmt)


def fault_mixed_ids(draw, block: Block) -> Case:
    """Ints and strings in one JSON column (in CSV every value is text, in Parquet impossible)."""
    column = draw(st.sampled_from(["user_id", "item_id"]))
    values = [draw(INT_ID) for _ in range(block.rows)] + [draw(STRING_ID)]
    changed = Block({k: (values if k == column else v + v[-1:]) for k, v in block.columns.items()}, block.fmt)
    return Case(to_bytes(changed), block.fmt, "reject", label="mixed ids")


def fault_huge_ids(draw, block: Block) -> Case:
    """Integers beyond int64: uint64 range is a valid id; beyond 64 bits JSON refuses it and CSV
    keeps it as the text it is."""
    column = draw(st.sampled_from(["user_id", "item_id"]))
    huge = draw(st.integers(2**63, 2**64 - 1) | st.integers(2**64, 2**80) | st.integers(-(2**80), -(2**63) - 1))
    fits = 0 <= huge < 2**64
    if block.fmt == "parquet" and not fits:
        huge = 2**64 - 1
        fits = True
    values = [huge if fits or block.fmt == "jsonl" else str(huge)] + [abs(hash((huge, i))) % 1000 for i in range(block.rows - 1)]
    changed = Block({**block.columns, column: values}, block.fmt)
    if block.fmt == "jsonl" and not fits:
        return Case(to_bytes(changed), block.fmt, "reject", label="huge id")
    return Case(to_bytes(changed), block.fmt, "accept", expected_rows(changed), "huge id")


def fault_missing_column(draw, block: Block) -> Case:
    column = draw(st.sampled_from(["user_id", "item_id"]))
    kept = {k: v for k, v in block.columns.items() if k != column}
    return Case(to_bytes(Block(kept, block.fmt)), block.fmt, "reject", label="missing column")


def fault_repeated_header(draw, block: Block) -> Case:
    column = draw(st.sampled_from(list(block.columns)))
    return Case(to_bytes(block, repeat_header=column), block.fmt, "reject", label="repeated header")


def fault_bad_split(draw, block: Block) -> Case:
    splits = [draw(st.sampled_from(SPLITS)) for _ in range(block.rows)]
    bad = _cell(draw, Block({**block.columns, "split": splits}, block.fmt), "split",
                draw(st.sampled_from(["", "TRAIN", "holdout", " test", "tes\x00t", None])))
    return Case(to_bytes(bad), block.fmt, "reject", label="bad split")


def fault_bad_timestamp(draw, block: Block) -> Case:
    """Out of range (milliseconds, year 3000, before 1677), unparseable text, floats."""
    bad = draw(st.sampled_from([T0 * 1000, 2**63 - 1, -(2**40), "not a date", "3000-01-01", "2020-13-45", 1.5e9 + 0.5]))
    stamps = [T0 + i for i in range(block.rows)]
    stamps[draw(st.integers(0, block.rows - 1))] = bad
    if isinstance(bad, float) or (isinstance(bad, str) and block.fmt == "parquet"):
        stamps = [bad] * block.rows  # one type per Parquet column
    return Case(to_bytes(Block({**block.columns, "timestamp": stamps}, block.fmt)), block.fmt, "reject",
                label="bad timestamp")


def fault_no_rows(draw, block: Block) -> Case:
    empty = Block({k: [] for k in block.columns}, block.fmt)
    data = to_bytes(empty) if block.fmt != "jsonl" else draw(st.sampled_from([b"\n", b"\n  \n"]))
    return Case(data, block.fmt, "reject", label="no rows")


def fault_empty_file(draw, block: Block) -> Case:
    return Case(b"", block.fmt, "reject", label="empty file")


def fault_encoding(draw, block: Block) -> Case:
    """Latin-1 text with an accented id, UTF-16 with its BOM, or invalid UTF-8 bytes."""
    column = draw(st.sampled_from(["user_id", "item_id"]))
    accented = _cell(draw, _as_strings(block, column), column, "café")
    text = to_bytes(accented).decode("utf-8")
    kind = draw(st.sampled_from(["latin-1", "utf-16", "invalid"]))
    if kind == "invalid":
        raw = text.encode("utf-8")
        at = draw(st.integers(0, len(raw)))
        data = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"])) + raw[at:]
    else:
        data = text.encode(kind, errors="replace")  # latin-1 cannot hold every id; "café" stays
    return Case(data, block.fmt, "reject", label=f"encoding {kind}")


def fault_truncated(draw, block: Block) -> Case:
    data = to_bytes(block)
    cut = draw(st.integers(1, len(data) - 1))
    expect = "reject" if block.fmt == "parquet" else "either"
    return Case(data[:cut], block.fmt, expect, expected_rows(block), "truncated")


FAULTS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "none": (fault_none, FORMATS),
    "null id": (fault_null_id, FORMATS),
    "bad id text": (fault_bad_id_text, FORMATS),
    "spaced id": (fault_spaced_id, FORMATS),
    "float ids": (fault_float_ids, FORMATS),
    "bool ids": (fault_bool_ids, FORMATS),
    "mixed ids": (fault_mixed_ids, ("jsonl",)),
    "huge ids": (fault_huge_ids, FORMATS),
    "missing column": (fault_missing_column, FORMATS),
    "repeated header": (fault_repeated_header, FORMATS),
    "bad split": (fault_bad_split, FORMATS),
    "bad timestamp": (fault_bad_timestamp, FORMATS),
    "no rows": (fault_no_rows, FORMATS),
    "empty file": (fault_empty_file, FORMATS),
    "encoding": (fault_encoding, ("csv", "jsonl")),
    "truncated": (fault_truncated, FORMATS),
}


@st.composite
def cases(draw) -> Case:
    name = draw(st.sampled_from(sorted(FAULTS)))
    fault, formats = FAULTS[name]
    block = draw(clean_blocks())
    block = Block(block.columns, draw(st.sampled_from(formats)))
    return fault(draw, block)


# --- the home and the checks -----------------------------------------------------------------

@dataclass(frozen=True)
class Base:
    """A home holding block 0 (string ids u0..u29, i0..i39), and its lake state and user map."""

    home: Home
    state: tuple
    users: pd.DataFrame


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    root = tmp_path_factory.mktemp("fuzz-base")
    home = Home.resolve(root / "home")
    path = root / "b0.csv"
    make_block().to_csv(path, index=False)
    ingest_block(home, path, 0, CONFIG)
    return Base(home, lake_state(home), catalog.id_map(home, "user"))


@pytest.fixture
def fresh_home(base, tmp_path_factory) -> Callable[[], Home]:
    """Returns a new copy of the base home on each call (one per hypothesis example)."""
    root = tmp_path_factory.mktemp("fuzz")
    counter = itertools.count()

    def copy() -> Home:
        return Home.resolve(shutil.copytree(base.home.root, root / f"h{next(counter)}"))

    return copy


def check_case(base: Base, home: Home, case: Case, folder: Path) -> None:
    """Ingest `case` as block 1 of `home` (a copy of `base`) and check the outcome against what it
    must be."""
    path = folder / f"block_1.{case.fmt}"
    path.write_bytes(case.data)
    try:
        result = ingest_block(home, path, 1, CONFIG)
    except CcdError as exc:
        assert case.expect in ("reject", "either"), f"{case.label}: rejected a valid block: {exc}"
        assert isinstance(exc, (BadInputError, ValidationFailedError)), type(exc)
        assert "\n" not in str(exc) and str(exc).strip(), f"{case.label}: error is not one line: {exc!r}"
        assert lake_state(home) == base.state, f"{case.label}: a rejected block changed the lake"
        return
    assert case.expect in ("accept", "either"), f"{case.label}: accepted a block the README rejects"
    stored = _stored_rows(home, has_split=any(r[2] for r in case.rows))
    assert result.record.rows == len(stored)
    if case.expect == "accept":
        assert sorted(stored, key=repr) == case.rows, case.label
    else:  # a truncated text file: all rows but a cut last one come from the original
        original = {r[:2] for r in case.rows}
        assert sum(r[:2] not in original for r in stored) <= 1, case.label
    users = catalog.id_map(home, "user").set_index("external_id")["internal_id"]
    assert (users[base.users["external_id"]].to_numpy() == base.users["internal_id"].to_numpy()).all()


def _stored_rows(home: Home, has_split: bool) -> list[tuple]:
    """Block 1 as stored, mapped back to external ids through the catalog's id maps."""
    frame = store.read_block(home, 1)
    users = catalog.id_map(home, "user").set_index("internal_id")["external_id"]
    items = catalog.id_map(home, "item").set_index("internal_id")["external_id"]
    assert users.index.is_unique and items.index.is_unique and users.is_unique and items.is_unique
    stamps = [None if pd.isna(t) else int(t) for t in frame["timestamp"]]
    splits = frame["split"].astype(str) if has_split else [None] * len(frame)
    return list(zip(users[frame["user"]].tolist(), items[frame["item"]].tolist(), splits, stamps))


FUZZ = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow, HealthCheck.filter_too_much])


@settings(max_examples=30, **FUZZ)
@given(case=cases())
def test_fuzzed_blocks_are_rejected_cleanly_or_stored_exactly(base, fresh_home, tmp_path, case):
    check_case(base, fresh_home(), case, tmp_path)


@pytest.mark.slow
@settings(max_examples=1000, **FUZZ)
@given(case=cases())
def test_fuzzed_blocks_many(base, fresh_home, tmp_path, case):
    check_case(base, fresh_home(), case, tmp_path)


# --- regressions found by the fuzzer, and the CLI ------------------------------------------------

REGRESSIONS = {
    # uint64 ids past 2**63 wrapped to negative numbers (2**64 - 1 became "-1").
    "uint64 id": ("parquet", pa.table({"user_id": pa.array([2**64 - 1, 1], pa.uint64()), "item_id": [1, 2]}), "accept"),
    # pandas' CSV parser cut ids at a NUL byte, so a\0b and a\0c both became "a".
    "NUL in CSV": ("csv", b"user_id,item_id\na\x00b,1\na\x00c,1\n", "reject"),
    # pandas renamed a repeated CSV header to user_id.1 and used the first column.
    "repeated CSV header": ("csv", b"user_id,user_id,item_id\n1,2,3\n", "reject"),
    # the JSON reader kept the last of two equal keys.
    "repeated JSON key": ("jsonl", b'{"user_id": 1, "user_id": 2, "item_id": 3}\n', "reject"),
    # a lone surrogate escape crashed validation (UnicodeEncodeError while hashing rows).
    "lone surrogate": ("jsonl", b'{"user_id": "a\\ud800", "item_id": 2}\n', "reject"),
    # a Parquet timestamp outside the nanosecond range crashed validation (OutOfBoundsDatetime).
    "far timestamp": ("parquet", pa.table({"user_id": [1], "item_id": [1], "timestamp": pa.array([10**17], pa.timestamp("ms"))}), "reject"),
    # "007" in a CSV became the integer 7, another id than "007" in Parquet or JSON.
    "leading zeros": ("csv", b"user_id,item_id\n007,1\n7,1\n", "accept"),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_fuzzing_regressions(base, fresh_home, tmp_path, name):
    fmt, content, expect = REGRESSIONS[name]
    if isinstance(content, pa.Table):
        sink = pa.BufferOutputStream()
        pq.write_table(content, sink)
        content = sink.getvalue().to_pybytes()
    home = fresh_home()
    rows = {"uint64 id": [("1", "2", None, None), (str(2**64 - 1), "1", None, None)],
            "leading zeros": [("007", "1", None, None), ("7", "1", None, None)]}.get(name, [])
    check_case(base, home, Case(content, fmt, expect, sorted(rows, key=repr), name), tmp_path)


CLI_CASES = {
    "NUL byte": ("csv", b"user_id,item_id\nu\x001,i1\n", "NUL byte"),
    "UTF-16": ("csv", "user_id,item_id\nu1,i1\n".encode("utf-16"), "UTF-16"),
    "truncated parquet": ("parquet", b"PAR1\x15\x04\x15", "not a readable parquet file"),
    "bad split": ("csv", b"user_id,item_id,split\nu1,i1,holdout\n", "split values"),
    "control character": ("jsonl", b'{"user_id": "u\\n1", "item_id": "i1"}\n', "control characters"),
}


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_cli_rejects_malformed_blocks_in_one_line(base, fresh_home, tmp_path, capsys, name):
    fmt, content, message = CLI_CASES[name]
    home = fresh_home()
    path = tmp_path / f"block_1.{fmt}"
    path.write_bytes(content)
    assert main(["ingest", str(path), "--block", "1", "--home", str(home.root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ccd ingest: error: ") and message in err
    assert lake_state(home) == base.state

