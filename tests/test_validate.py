"""Block validation: each kind of bad input fails the right GX check with the right status."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from ccd.config import LakeConfig
from ccd.errors import BadInputError
from ccd.lake import validate
from ccd.lake.validate import BlockContext, ValidationReport, validate_block

FIRST = BlockContext(block=0, previous_max_timestamp=None, earlier_row_counts=())
T0 = 1_600_000_000


def block(n: int = 12, ids: str = "int") -> pd.DataFrame:
    """A valid block: distinct pairs, increasing timestamps, every split present."""
    users, items = np.arange(n) % 4, np.arange(n)
    frame = pd.DataFrame({
        "user_id": users if ids == "int" else [f"u{u}" for u in users],
        "item_id": items if ids == "int" else [f"i{i}" for i in items],
        "timestamp": T0 + np.arange(n),
        "split": (["train", "train", "valid", "test"] * n)[:n],
    })
    return frame


def run(frame: pd.DataFrame, context: BlockContext = FIRST, **policy) -> tuple[pd.DataFrame, ValidationReport]:
    return validate_block(frame, context, LakeConfig(**policy))


def check(report: ValidationReport, name: str):
    (found,) = [c for c in report.checks if c.name == name]
    return found


def failed(report: ValidationReport) -> set[str]:
    return {c.name for c in report.checks if not c.success}


@pytest.mark.parametrize("ids", ["int", "str"])
def test_good_block_passes(ids):
    frame = block(ids=ids)
    cleaned, report = run(frame, BlockContext(1, T0 - 1, (10, 14)))
    assert report.status == "passed", report.to_markdown()
    assert failed(report) == set()
    assert (report.rows_in, report.rows_out, report.duplicates_dropped) == (12, 12, 0)
    pd.testing.assert_frame_equal(cleaned, frame)
    assert all(c.expectation.startswith("expect_") for c in report.checks)


def test_reader_dtypes_pass():
    """What the CSV and Parquet readers produce: pandas strings, categorical splits, nullable ints."""
    frame = block(ids="str")
    frame["user_id"] = frame["user_id"].astype("string")
    frame["item_id"] = pd.array(np.arange(12), dtype="Int64")
    frame["split"] = frame["split"].astype("category")
    assert run(frame)[1].status == "passed"


def test_input_frame_is_not_modified():
    frame = block()
    frame.loc[3] = frame.loc[2]
    before = frame.copy()
    run(frame)
    pd.testing.assert_frame_equal(frame, before)


def test_missing_column_rejects_and_blocks_dependent_checks():
    _, report = run(block().drop(columns="item_id"))
    assert report.status == "rejected"
    assert "missing item_id" in check(report, "required columns").details
    assert check(report, "item_id type").details.startswith("not run")
    assert not check(report, "unique (user_id, item_id)").success
    assert check(report, "user_id type").success
    assert report.summary().startswith("block 0 rejected: failed required columns")


def test_float_ids_rejected():
    frame = block()
    frame["user_id"] = frame["user_id"].astype(float)
    _, report = run(frame)
    assert report.status == "rejected"
    assert failed(report) == {"user_id type"}
    assert "float64" in check(report, "user_id type").details


def test_mixed_int_and_str_ids_rejected():
    frame = block(ids="str")
    frame["item_id"] = frame["item_id"].astype(object)
    frame.loc[5, "item_id"] = 7
    _, report = run(frame)
    assert report.status == "rejected"
    assert failed(report) == {"item_id type"}
    assert "row 5 7" in check(report, "item_id type").details


def test_nulls_rejected_with_rows():
    frame = block(ids="str")
    frame.loc[[2, 9], "user_id"] = None
    frame.loc[4, "split"] = None
    _, report = run(frame)
    assert report.status == "rejected"
    assert failed(report) == {"no null user_id", "no null split"}
    assert check(report, "no null user_id").details == "2 of 12 rows have null user_id: rows 2, 9"


def test_unknown_split_rejected():
    frame = block()
    frame.loc[7, "split"] = "holdout"
    _, report = run(frame)
    assert failed(report) == {"split values"}
    assert "row 7 'holdout'" in check(report, "split values").details
    assert report.status == "rejected"


def test_empty_and_blank_ids_rejected():
    frame = block(ids="str")
    frame.loc[1, "item_id"] = ""
    frame.loc[6, "item_id"] = "   "
    _, report = run(frame)
    assert failed(report) == {"no empty item_id"}
    assert report.status == "rejected"
    assert check(report, "no empty item_id").details.startswith("2 of 12 rows")


def test_duplicates_dropped_under_drop_policy_keeping_first():
    frame = block()
    frame["order"] = range(len(frame))
    frame.loc[5, ["user_id", "item_id"]] = frame.loc[1, ["user_id", "item_id"]].to_numpy()
    frame.loc[8, ["user_id", "item_id"]] = frame.loc[1, ["user_id", "item_id"]].to_numpy()
    cleaned, report = run(frame, duplicate_policy="drop")
    assert report.status == "warning"
    assert failed(report) == {"unique (user_id, item_id)"}
    assert check(report, "unique (user_id, item_id)").severity == "warning"
    assert (report.rows_in, report.rows_out, report.duplicates_dropped) == (12, 10, 2)
    assert not cleaned.duplicated(["user_id", "item_id"]).any()
    assert 1 in set(cleaned["order"]) and not {5, 8} & set(cleaned["order"])
    assert list(cleaned.index) == list(range(10))


def test_duplicates_rejected_under_reject_policy():
    frame = block()
    frame.loc[5, ["user_id", "item_id"]] = frame.loc[1, ["user_id", "item_id"]].to_numpy()
    cleaned, report = run(frame, duplicate_policy="reject")
    assert report.status == "rejected"
    assert check(report, "unique (user_id, item_id)").severity == "error"
    assert report.duplicates_dropped == 0 and len(cleaned) == 12


@pytest.mark.parametrize("policy, status, severity", [("warn", "warning", "warning"), ("reject", "rejected", "error")])
def test_stale_timestamps_follow_policy(policy, status, severity):
    context = BlockContext(1, T0 + 5, (12,))
    _, report = run(block(), context, stale_timestamp_policy=policy)
    stale = check(report, "timestamps not older than previous block")
    assert (report.status, stale.success, stale.severity) == (status, False, severity)
    assert stale.details.startswith("5 of 12 rows")


def test_stale_check_needs_timestamps_and_an_earlier_block():
    _, no_previous = run(block(), BlockContext(1, None, (12,)))
    _, no_column = run(block().drop(columns="timestamp"), BlockContext(1, T0 + 100, (12,)))
    for report in (no_previous, no_column):
        stale = check(report, "timestamps not older than previous block")
        assert stale.success and stale.details.startswith("not applicable")
        assert report.status == "passed"


def test_absurd_row_count_only_warns():
    _, report = run(block(), BlockContext(3, None, (1000, 1400)), row_count_warn_ratio=10)
    assert report.status == "warning"
    assert failed(report) == {"row count plausible"}
    assert check(report, "row count plausible").details == "12 rows, expected 120 to 12000"
    assert run(block(), BlockContext(3, None, (100, 20)), row_count_warn_ratio=10)[1].status == "passed"


def test_empty_block_rejected():
    frame = block().iloc[:0]
    _, report = run(frame)
    assert report.status == "rejected"
    assert failed(report) == {"block not empty"}


@pytest.mark.parametrize("stamps", [
    pd.Series(pd.date_range("2024-01-01", periods=12, freq="h")),
    pd.Series(pd.date_range("2024-01-01", periods=12, freq="h", tz="Europe/Paris")),
    pd.Series(pd.date_range("2024-01-01", periods=12, freq="h")).astype(str),
])
def test_datetime_timestamps_pass(stamps):
    frame = block().assign(timestamp=stamps)
    _, report = run(frame, BlockContext(1, 1_700_000_000, (12,)))
    assert report.status == "passed", report.summary()


def test_bad_timestamps_rejected():
    strings = block().assign(timestamp=pd.Series(pd.date_range("2024-01-01", periods=12)).astype(str))
    strings.loc[4, "timestamp"] = "yesterday-ish"
    _, report = run(strings)
    assert failed(report) == {"timestamp type"}
    assert "row 4 'yesterday-ish'" in check(report, "timestamp type").details
    floats = block().assign(timestamp=T0 + np.arange(12) + 0.5)
    assert failed(run(floats)[1]) == {"timestamp type"}


def test_repeated_column_names_are_bad_input():
    frame = pd.concat([block(), block()[["user_id"]]], axis=1)
    with pytest.raises(BadInputError, match="repeated column"):
        run(frame)


def test_ratio_below_one_is_bad_input():
    with pytest.raises(BadInputError, match="row_count_warn_ratio"):
        run(block(), row_count_warn_ratio=0.5)


def test_report_renderings():
    frame = block(ids="str")
    frame.loc[3, "split"] = "<script>alert(1)</script>"
    frame.loc[0, "user_id"] = None
    _, report = run(frame)
    summary = report.summary()
    assert "\n" not in summary
    assert summary.startswith("block 0 rejected: failed no null user_id, split values (no null user_id: 1 of 12 rows")
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["status"] == "rejected" and len(payload["checks"]) == len(report.checks)
    assert ValidationReport.from_dict(payload) == report
    markdown = report.to_markdown()
    assert all(f"| {c.name} |" in markdown for c in report.checks)
    page = report.to_html()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"https?://|\b(src|href)\s*=|<link|<script", page)
    assert "&lt;script&gt;" in page


def test_passed_summary_is_one_line():
    _, report = run(block())
    assert report.summary() == f"block 0 passed: {len(report.checks)} checks passed on 12 rows"


def test_nothing_written_to_working_folder(tmp_path, monkeypatch):
    """A fresh GX context (not the cached one) creates no gx/ folder or other files."""
    monkeypatch.chdir(tmp_path)
    validate._batch_definition.cache_clear()
    run(block())
    assert list(tmp_path.iterdir()) == []
