"""`ccd make-blocks`: raw log (CSV or Parquet) to time-ordered, deduplicated, k-core blocks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ccd.cli import main
from ccd.config import SampleConfig
from ccd.errors import BadInputError
from ccd.lake.make_blocks import cut_blocks, deduplicate, kcore_filter, make_blocks, parse_timestamps
from ccd.lake.synthetic import generate_stream

SMALL = SampleConfig(n_users=200, n_items=300, base_mean_interactions=10.0, block_mean_interactions=6.0)


@pytest.fixture(scope="module")
def raw_log() -> pd.DataFrame:
    """The small synthetic stream as one shuffled log with 50 repeated (user, item) pairs appended later."""
    log = pd.concat(generate_stream(SMALL), ignore_index=True)
    log = log.sample(frac=1.0, random_state=0).reset_index(drop=True)
    repeats = log.sample(50, random_state=1).assign(timestamp=lambda f: f["timestamp"] + 10)
    return pd.concat([log, repeats], ignore_index=True)


def _read(folder: Path, fmt: str = "parquet") -> list[pd.DataFrame]:
    files = sorted(folder.glob(f"block_*.{fmt}"), key=lambda p: int(p.stem.split("_")[1]))
    return [pd.read_parquet(p) if fmt == "parquet" else pd.read_csv(p, dtype={"user_id": str, "item_id": str}) for p in files]


def test_csv_log_with_iso_times_gives_ordered_blocks(tmp_path: Path, raw_log: pd.DataFrame) -> None:
    csv = tmp_path / "log.csv"
    iso = pd.to_datetime(raw_log["timestamp"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    raw_log.assign(timestamp=iso).rename(columns={"user_id": "who", "item_id": "what", "timestamp": "when"}).to_csv(csv, index=False)
    report = make_blocks(csv, tmp_path / "out", n_blocks=5, base_fraction=0.5, user_col="who", item_col="what", time_col="when")
    blocks = _read(tmp_path / "out")

    assert len(blocks) == 6 and report["input_rows"] == len(raw_log)
    assert report["duplicates_dropped"] == 50 and report["kcore_dropped"] == 0
    every = pd.concat(blocks, ignore_index=True)
    assert len(every) == report["rows"] == len(raw_log) - 50
    assert not every.duplicated(["user_id", "item_id"]).any()
    assert every["timestamp"].is_monotonic_increasing  # within and across blocks
    assert list(every.columns) == ["user_id", "item_id", "timestamp"]
    assert every["timestamp"].min() == int(raw_log["timestamp"].min())
    assert len(blocks[0]) == round(0.5 * len(every))
    sizes = [len(b) for b in blocks[1:]]
    assert max(sizes) - min(sizes) <= 1
    assert [s["rows"] for s in report["blocks"]] == [len(b) for b in blocks]
    assert all(s["new_users"] > 0 and s["new_items"] > 0 for s in report["blocks"][1:])


def test_parquet_with_int_times_matches_csv_with_iso_times(tmp_path: Path, raw_log: pd.DataFrame) -> None:
    raw_log.to_parquet(tmp_path / "log.parquet")
    iso = pd.to_datetime(raw_log["timestamp"], unit="s", utc=True).dt.strftime("%Y-%m-%d %H:%M:%S+00:00")
    raw_log.assign(timestamp=iso).to_csv(tmp_path / "log.csv", index=False)
    make_blocks(tmp_path / "log.parquet", tmp_path / "p", kcore=3)
    make_blocks(tmp_path / "log.csv", tmp_path / "c", kcore=3, fmt="csv")
    for a, b in zip(_read(tmp_path / "p"), _read(tmp_path / "c", "csv"), strict=True):
        pd.testing.assert_frame_equal(a, b, check_dtype=False)


def test_a_new_cut_leaves_no_block_file_of_an_earlier_one(tmp_path: Path, raw_log: pd.DataFrame) -> None:
    """Left behind, block_3..5 of a five-block cut would be ingested after a two-block one."""
    raw_log.to_parquet(tmp_path / "log.parquet")
    make_blocks(tmp_path / "log.parquet", tmp_path / "out", n_blocks=5, kcore=3)
    (tmp_path / "out" / "notes.txt").write_text("kept")
    make_blocks(tmp_path / "log.parquet", tmp_path / "out", n_blocks=2, kcore=3, fmt="csv")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["block_0.csv", "block_1.csv", "block_2.csv", "notes.txt"]


def test_iterative_kcore_leaves_every_user_and_item_with_k(raw_log: pd.DataFrame) -> None:
    frame = kcore_filter(deduplicate(raw_log), 8)
    assert 0 < len(frame) < len(raw_log) - 50
    assert frame.groupby("user_id").size().min() >= 8
    assert frame.groupby("item_id").size().min() >= 8


def test_single_pass_kcore_can_leave_users_below_k() -> None:
    # Item c has one interaction: dropping it leaves user y with 1 < 2; only iteration drops y.
    frame = pd.DataFrame({"user_id": ["x", "x", "y", "y", "z", "z"], "item_id": ["a", "b", "a", "c", "a", "b"], "timestamp": range(6)})
    once = kcore_filter(frame, 2, single_pass=True)
    assert once.groupby("user_id").size().to_dict() == {"x": 2, "y": 1, "z": 2}
    stable = kcore_filter(frame, 2)
    assert set(stable["user_id"]) == {"x", "z"} and stable.groupby("item_id").size().min() >= 2


def test_deduplicate_keeps_the_earliest_occurrence() -> None:
    frame = pd.DataFrame({"user_id": ["u", "u", "v"], "item_id": ["i", "i", "i"], "timestamp": [50, 20, 30]})
    assert deduplicate(frame).to_dict("list") == {"user_id": ["u", "v"], "item_id": ["i", "i"], "timestamp": [20, 30]}


def test_cut_blocks_sizes() -> None:
    frame = pd.DataFrame({"user_id": ["u"] * 23, "item_id": [f"i{n}" for n in range(23)], "timestamp": range(23)})
    assert [len(b) for b in cut_blocks(frame, 4, 0.3)] == [7, 4, 4, 4, 4]
    assert [len(b) for b in cut_blocks(frame, 5, 0.99)] == [18, 1, 1, 1, 1, 1]


def test_parse_timestamps_accepts_ints_floats_datetimes_and_iso() -> None:
    expected = np.array([0, 86_400], np.int64)
    assert parse_timestamps(pd.Series([0, 86_400])).tolist() == expected.tolist()
    assert parse_timestamps(pd.Series([0.0, 86_400.7])).tolist() == expected.tolist()
    assert parse_timestamps(pd.Series(["0", " 86400"])).tolist() == expected.tolist()
    assert parse_timestamps(pd.Series(["1970-01-01", "1970-01-02T00:00:00Z"])).tolist() == expected.tolist()
    assert parse_timestamps(pd.Series(["1970-01-01T01:00:00+01:00", "1970-01-02"])).tolist() == expected.tolist()
    assert parse_timestamps(pd.Series(pd.to_datetime(["1970-01-01", "1970-01-02"]))).tolist() == expected.tolist()


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        (None, {}, "does not exist"),
        ("user_id,item_id,time\nu,i,1\n", {}, "lacks column"),
        ("user_id,item_id,timestamp\nu,i,yesterday\nv,i,2\n", {}, "unparseable timestamp"),
        ("user_id,item_id,timestamp\nu,i,\nv,i,2\n", {}, "empty timestamp"),
        ("user_id,item_id,timestamp\n,i,1\nv,i,2\n", {}, "empty 'user_id'"),
        ("user_id,item_id,timestamp\n", {}, "0 interactions left"),
        ("user_id,item_id,timestamp\nu,i,1\nu,j,2\nv,i,3\n", {"kcore": 5}, "interactions left"),
        ("user_id,item_id,timestamp\nu,i,1\n", {"base_fraction": 1.0}, "base-fraction"),
        ("", {}, "cannot read"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path: Path, content: str | None, kwargs: dict, message: str) -> None:
    raw = tmp_path / "log.csv"
    if content is not None:
        raw.write_text(content)
    with pytest.raises(BadInputError, match=message):
        make_blocks(raw, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_parquet_missing_column_and_non_parquet_file(tmp_path: Path) -> None:
    pd.DataFrame({"user_id": ["u"], "item_id": ["i"]}).to_parquet(tmp_path / "a.parquet")
    with pytest.raises(BadInputError, match="timestamp"):
        make_blocks(tmp_path / "a.parquet", tmp_path / "out")
    (tmp_path / "b.parquet").write_text("not parquet")
    with pytest.raises(BadInputError, match="as Parquet"):
        make_blocks(tmp_path / "b.parquet", tmp_path / "out")


def test_cli_json_prints_one_object(tmp_path: Path, raw_log: pd.DataFrame, capsys: pytest.CaptureFixture) -> None:
    raw_log.to_csv(tmp_path / "log.csv", index=False)
    code = main(["make-blocks", str(tmp_path / "log.csv"), "--out", str(tmp_path / "out"), "--blocks", "3", "--kcore", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [s["block"] for s in report["blocks"]] == [0, 1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"block_{k}.parquet" for k in range(4)]


def test_cli_table_and_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["make-sample", "--out", str(tmp_path / "s"), "--set", "sample.n_users=100", "--set", "sample.n_items=150"]) == 0
    out = capsys.readouterr().out
    assert "new_users" in out and "block" in out
    assert main(["make-blocks", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "does not exist" in captured.err
