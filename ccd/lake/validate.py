"""Validate a raw interaction block with a Great Expectations suite before it enters the lake.

Every rule is one GX 1.x expectation, and all of them run as one suite on the block as read from
the user's file (the README's "Validation" section has the table of checks):

- ids (`user_id`, `item_id`) must be integers (any integer dtype) or strings. A float column
  (ids with missing values, or ids that lost precision) and an object column mixing ints and
  strings are rejected rather than coerced: both usually mean a broken export, and coercing
  would hide it;
- `timestamp` (optional) is integer unix seconds, a datetime (naive means UTC) or a date string
  pandas can parse; `split` (optional) is one of train / valid / test;
- duplicate (user_id, item_id) pairs and timestamps older than earlier blocks follow the
  `LakeConfig` policies; an implausible row count only warns.

GX costs ~3 s to import, so it is imported at the first validation, not with `ccd`. Its
ephemeral context is built once per process and shared under a lock; it keeps nothing on disk
(no stores, no data docs, no analytics, no progress bars), so nothing is written outside the
home folder.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ccd.config import LakeConfig
from ccd.data import SPLITS
from ccd.errors import BadInputError
from ccd.lake.validation_report import CheckResult, ValidationReport

__all__ = ["BlockContext", "CheckResult", "ValidationReport", "validate_block"]

log = logging.getLogger(__name__)

REQUIRED = ("user_id", "item_id")
UNIQUE = "unique (user_id, item_id)"
# Helper column of the copy GX sees: timestamps as unix seconds, NaN where null or unparseable.
SECONDS = "__timestamp_seconds"
_INTEGER_TYPES = [f"{u}int{bits}" for u in ("", "u") for bits in (8, 16, 32, 64)] + [
    f"{u}Int{bits}Dtype" for u in ("", "U") for bits in (8, 16, 32, 64)
]
# On an object column GX checks each value's Python type, so "str" there means: all strings.
_ID_TYPES = _INTEGER_TYPES + ["str"]
_TIMESTAMP_TYPES = _INTEGER_TYPES + [f"datetime64[{unit}]" for unit in ("s", "ms", "us", "ns")]
_EMPTY = r"^\s*$"
# Control characters (C0, DEL, C1) and lone surrogates: no real id holds them, NUL cannot be
# stored faithfully, and a newline or escape in an id breaks every one-line message and table.
_CONTROL = r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]"
# Unix seconds a datetime64[ns] can hold (1677-09-22 .. 2262-04-11): timestamps outside are
# rejected, which also catches milliseconds or microseconds passed off as seconds.
TIMESTAMP_RANGE = (math.ceil(pd.Timestamp.min.value / 1e9), math.floor(pd.Timestamp.max.value / 1e9))
_EXAMPLES = 3  # bad values quoted per failed check
_LOCK = threading.Lock()  # one shared GX context; its batch objects are not meant for threads


@dataclass(frozen=True)
class BlockContext:
    """What validation needs to know about the blocks already in the lake.

    Attributes
    ----------
    block : int
        Number k of the block being validated.
    previous_max_timestamp : int or None
        Newest timestamp (unix seconds) of blocks before k; None if they have none.
    earlier_row_counts : tuple of int
        Row counts of blocks before k, for the implausible-row-count warning.
    """

    block: int
    previous_max_timestamp: int | None
    earlier_row_counts: tuple[int, ...]


@dataclass(frozen=True)
class _Check:
    """One planned check: its tagged GX expectation, or why it cannot run.

    `bad` says what failing values are ("are null"), `shown` which columns to quote for them.
    A skipped check passes when it does not apply (no `split` column) and fails when it is
    blocked (a required column is missing).
    """

    name: str
    severity: str
    expectation: Any
    bad: str = ""
    shown: tuple[str, ...] = ()
    skip: str | None = None
    skip_passes: bool = True


def validate_block(
    frame: pd.DataFrame, context: BlockContext, policy: LakeConfig
) -> tuple[pd.DataFrame, ValidationReport]:
    """Validate a raw block; return the cleaned frame and the report.

    Parameters
    ----------
    frame : pd.DataFrame, shape (N, C)
        The block as read: `user_id`, `item_id`, optionally `timestamp` and `split`, any other
        columns are ignored. Not modified.
    context : BlockContext
        Facts about earlier blocks (newest timestamp, row counts).
    policy : LakeConfig
        `duplicate_policy`, `stale_timestamp_policy` and `row_count_warn_ratio`.

    Returns
    -------
    cleaned : pd.DataFrame, shape (N - duplicates_dropped, C)
        The frame with a fresh 0..n-1 index; under duplicate_policy "drop" every repeat of a
        (user_id, item_id) pair after its first row is removed.
    report : ValidationReport
        Status "passed", "warning" or "rejected", one CheckResult per check.
    """
    if policy.row_count_warn_ratio < 1:
        raise BadInputError(f"lake.row_count_warn_ratio must be at least 1, got {policy.row_count_warn_ratio}")
    data = _checked_copy(frame)
    plan = _plan(data, context, policy)
    outcomes = _run(data, [c for c in plan if c.skip is None])
    checks = [_result(c, outcomes.get(c.name), data) for c in plan]
    repeats = outcomes[UNIQUE].result.get("unexpected_count") if UNIQUE in outcomes else 0
    cleaned = _drop_duplicates(frame) if repeats and policy.duplicate_policy == "drop" else frame.reset_index(drop=True)
    dropped = len(frame) - len(cleaned)
    if dropped:
        note = f"; dropped {dropped} later repeats (first kept)"
        checks = [dataclasses.replace(c, details=c.details + note) if c.name == UNIQUE else c for c in checks]
    report = ValidationReport(context.block, _status(checks), tuple(checks), len(frame), len(cleaned), dropped)
    log.info("validation: %s", report.summary())
    return cleaned, report


def _checked_copy(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame GX sees: same rows and values, a positional index, plain dtypes, plus SECONDS.

    String and categorical extension dtypes become object (their values are still str), and
    tz-aware datetimes become naive UTC, so one type list covers every reader's output.
    """
    data = frame.reset_index(drop=True)
    data.columns = [str(c) for c in data.columns]
    repeated = sorted(set(data.columns[data.columns.duplicated()]))
    if repeated:
        raise BadInputError(f"block has repeated column name(s) {', '.join(repeated)}")
    for name in data.columns:
        if isinstance(data[name].dtype, (pd.StringDtype, pd.CategoricalDtype)):
            data[name] = data[name].astype(object)
    if "timestamp" in data:
        stamps = data["timestamp"]
        if isinstance(stamps.dtype, pd.DatetimeTZDtype):
            data["timestamp"] = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
        data[SECONDS] = _seconds(stamps)
    return data


def _seconds(stamps: pd.Series) -> pd.Series:
    """Unix seconds as float64 (NaN where null or unparseable), by the rules ingest stores them.

    Datetime columns are converted at second resolution, so a Parquet timestamp far outside the
    nanosecond range gives its (out-of-range) seconds rather than an overflow error.
    """
    if pd.api.types.is_numeric_dtype(stamps):
        return stamps.astype("float64")
    if pd.api.types.is_datetime64_any_dtype(stamps):
        if isinstance(stamps.dtype, pd.DatetimeTZDtype):
            stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
        seconds = stamps.astype("datetime64[s]").astype("int64").astype("float64")
        return seconds.where(stamps.notna())
    parsed = pd.to_datetime(stamps, utc=True, format="mixed", errors="coerce")
    return (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


def _plan(data: pd.DataFrame, context: BlockContext, policy: LakeConfig) -> list[_Check]:
    """Every check in report order, each with its expectation tagged by the check name."""
    gxe = _gx().expectations
    present = set(data.columns)
    absent = [c for c in REQUIRED if c not in present]

    def check(name: str, severity: str, kind: type, **kwargs: Any) -> _Check:
        fields = {k: kwargs.pop(k) for k in ("bad", "shown", "skip", "skip_passes") if k in kwargs}
        return _Check(name, severity, kind(meta={"check": name}, **kwargs), **fields)

    def needs(column: str) -> dict[str, Any]:
        if column in present:
            return {}
        if column in REQUIRED:
            return {"skip": f"not run: column {column} missing", "skip_passes": False}
        return {"skip": f"not applicable: no {column} column"}

    plan = [
        check("required columns", "error", gxe.ExpectTableColumnsToMatchSet, column_set=list(REQUIRED),
              exact_match=False),
        check("block not empty", "error", gxe.ExpectTableRowCountToBeBetween, min_value=1),
    ]
    for column in REQUIRED:
        plan.append(check(f"{column} type", "error", gxe.ExpectColumnValuesToBeInTypeList, column=column,
                          type_list=_ID_TYPES, bad=f"have {column} not int or str", shown=(column,), **needs(column)))
    if "timestamp" in present and data["timestamp"].dtype == object:  # strings: every non-null one must parse
        from great_expectations.expectations.row_conditions import Column

        plan.append(check("timestamp type", "error", gxe.ExpectColumnValuesToNotBeNull, column=SECONDS,
                          row_condition=Column("timestamp").is_not_null(),
                          bad="have a timestamp that does not parse as a datetime", shown=("timestamp",)))
    else:
        plan.append(check("timestamp type", "error", gxe.ExpectColumnValuesToBeInTypeList, column="timestamp",
                          type_list=_TIMESTAMP_TYPES, shown=("timestamp",), **needs("timestamp"),
                          bad="have a timestamp that is not integer unix seconds or a datetime"))
    for column in (*REQUIRED, "split", "timestamp"):
        plan.append(check(f"no null {column}", "error", gxe.ExpectColumnValuesToNotBeNull, column=column,
                          bad=f"have null {column}", **needs(column)))
    for column in REQUIRED:
        skip = needs(column) or _integer_ids(data[column])
        plan.append(check(f"no empty {column}", "error", gxe.ExpectColumnValuesToNotMatchRegex, column=column,
                          regex=_EMPTY, bad=f"have empty or blank {column}", shown=(column,), **skip))
    for column in REQUIRED:
        skip = needs(column) or _integer_ids(data[column])
        plan.append(check(f"no control characters in {column}", "error", gxe.ExpectColumnValuesToNotMatchRegex,
                          column=column, regex=_CONTROL, bad=f"have a control character in {column}",
                          shown=(column,), **skip))
    low, high = TIMESTAMP_RANGE
    plan.append(check("timestamp in range", "error", gxe.ExpectColumnValuesToBeBetween, column=SECONDS,
                      min_value=low, max_value=high, shown=("timestamp",), **needs("timestamp"),
                      bad="have a timestamp outside 1677-09-22..2262-04-11 (not unix seconds?)"))
    plan.append(check("split values", "error", gxe.ExpectColumnValuesToBeInSet, column="split", value_set=list(SPLITS),
                      bad=f"have a split other than {'/'.join(SPLITS)}", shown=("split",), **needs("split")))
    blocked = {"skip": f"not run: column {', '.join(absent)} missing", "skip_passes": False} if absent else {}
    plan.append(check(UNIQUE, "warning" if policy.duplicate_policy == "drop" else "error",
                      gxe.ExpectCompoundColumnsToBeUnique, column_list=list(REQUIRED),
                      bad="share their (user_id, item_id) pair with another row", shown=REQUIRED, **blocked))
    previous = context.previous_max_timestamp
    no_previous = {"skip": "not applicable: no earlier timestamps"} if previous is None else {}
    stale_skip = needs("timestamp") or no_previous
    plan.append(check("timestamps not older than previous block",
                      "warning" if policy.stale_timestamp_policy == "warn" else "error",
                      gxe.ExpectColumnValuesToBeBetween, column=SECONDS, min_value=previous or 0,
                      bad=f"have a timestamp older than the previous block's newest ({previous})",
                      shown=("timestamp",), **stale_skip))
    counts = context.earlier_row_counts
    low, high = _plausible_rows(counts, policy.row_count_warn_ratio) if counts else (0, None)
    plan.append(check("row count plausible", "warning", gxe.ExpectTableRowCountToBeBetween, min_value=low,
                      max_value=high, **({} if counts else {"skip": "not applicable: no earlier blocks"})))
    return plan


def _integer_ids(ids: pd.Series) -> dict[str, Any]:
    """Skip the empty-id check on an integer column: it holds no strings, and the regex would
    spend ~0.1 s per 100k rows formatting every number as text."""
    if pd.api.types.is_integer_dtype(ids):
        return {"skip": f"not applicable: integer ids (dtype {ids.dtype})"}
    return {}


def _plausible_rows(counts: tuple[int, ...], ratio: float) -> tuple[int, int]:
    """[mean / ratio, mean * ratio] of earlier blocks' row counts, widened to whole rows."""
    mean = sum(counts) / len(counts)
    return math.floor(mean / ratio), math.ceil(mean * ratio)


def _run(data: pd.DataFrame, checks: list[_Check]) -> dict[str, Any]:
    """Run the checks as one GX suite on `data`; results by check name.

    The suite runs with result format BASIC; only the value checks that failed run again with
    SUMMARY, which adds the rows of bad values. So clean blocks, the common case, skip that
    row bookkeeping (about a quarter of the cost).
    """
    with _LOCK:
        batch = _batch_definition().get_batch(batch_parameters={"dataframe": data})
        results = _by_check(batch.validate(_suite(checks), result_format="BASIC"))
        failed = {name for name, r in results.items() if not r.success and "unexpected_count" in r.result}
        if failed:
            again = _suite([c for c in checks if c.name in failed])
            results.update(_by_check(batch.validate(again, result_format="SUMMARY")))
    return results


def _suite(checks: list[_Check]) -> Any:
    return _gx().ExpectationSuite(name="ccd_block", expectations=[c.expectation for c in checks])


def _by_check(outcome: Any) -> dict[str, Any]:
    return {r.expectation_config.meta["check"]: r for r in outcome.results}


@functools.cache
def _gx():
    """Import Great Expectations (about 3 s) on first use, with analytics off."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations
    import great_expectations.expectations  # noqa: F401  (makes gx.expectations available)

    return great_expectations


@functools.cache
def _batch_definition():
    """One in-memory GX context per process: a pandas source whose batch is a whole frame."""
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = _gx().get_context(mode="ephemeral", project_config=config)
    asset = context.data_sources.add_pandas("ccd").add_dataframe_asset("block")
    return asset.add_batch_definition_whole_dataframe("whole block")


def _result(check: _Check, outcome: Any, data: pd.DataFrame) -> CheckResult:
    kind = check.expectation.expectation_type
    if check.skip is not None:
        return CheckResult(check.name, kind, check.severity, check.skip_passes, check.skip)
    return CheckResult(check.name, kind, check.severity, bool(outcome.success), _details(check, outcome, data))


def _details(check: _Check, outcome: Any, data: pd.DataFrame) -> str:
    """One line: counts, and for failures a few bad values with their 0-based rows."""
    error = _exception(outcome.exception_info)
    if error:
        return f"could not run: {error}"
    result, kwargs = outcome.result, outcome.expectation_config.kwargs
    if "unexpected_count" in result:
        count = result["unexpected_count"]
        text = f"{count} of {result.get('element_count', len(data))} rows {check.bad}"
        if outcome.success:
            return text
        rows = (result.get("partial_unexpected_index_list") or [])[:_EXAMPLES]
        more = ", ..." if count > len(rows) else ""
        if not check.shown:
            return f"{text}: row{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows))}{more}"
        return f"{text}: " + ", ".join(f"row {i} {_quote(data, i, check.shown)}" for i in rows) + more
    observed = result.get("observed_value")
    if check.expectation.expectation_type == "expect_table_columns_to_match_set":
        missing = result.get("details", {}).get("mismatched", {}).get("missing") or []
        found = "found " + ", ".join(str(c) for c in observed or [] if c != SECONDS)
        return f"missing {', '.join(missing)}; {found}" if missing else found
    if check.expectation.expectation_type == "expect_table_row_count_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        return f"{observed} rows, expected " + (f"{low} to {high}" if high is not None else f"at least {low}")
    return f"dtype {observed}" + ("" if outcome.success else f": all rows {check.bad}")


def _exception(info: dict[str, Any] | None) -> str:
    """The first exception message GX recorded for an expectation, if any."""
    entries = [info, *(v for v in (info or {}).values() if isinstance(v, dict))]
    for entry in entries:
        if entry and entry.get("raised_exception"):
            lines = str(entry.get("exception_message") or "error").strip().splitlines() or ["error"]
            return lines[0][:200]
    return ""


def _quote(data: pd.DataFrame, row: int, columns: tuple[str, ...]) -> str:
    values = [_short(data[c].iloc[row]) for c in columns if c in data]
    return values[0] if len(values) == 1 else "(" + ", ".join(values) + ")"


def _short(value: Any) -> str:
    """A value quoted in an error message, cut to 40 characters so one bad cell cannot flood it."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _drop_duplicates(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the first row of every (user_id, item_id) pair, in file order."""
    return frame.loc[~frame.duplicated(subset=list(REQUIRED), keep="first").to_numpy()].reset_index(drop=True)


def _status(checks: list[CheckResult]) -> str:
    failed = {c.severity for c in checks if not c.success}
    return "rejected" if "error" in failed else "warning" if failed else "passed"
