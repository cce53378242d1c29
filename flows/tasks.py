"""The flows' tasks: each runs one `ccd` function, as one stage of the stage ledger.

`ccd.stages.run_stage` records every stage in the catalog, so a task whose stage is already done
returns the recorded outputs at once: a re-run of an interrupted flow resumes at the first
unfinished stage. Prefect's own result caching is off (`NO_CACHE`) because the ledger is the one
record of what finished, shared with `ccd stages`, `ccd stream` and the CLI.

The model stages are the CCD loop's own (`ccd.continual.loop`), under its ledger names: block 0's
`base-teacher-<member>`, `base-ensemble`, `base-student`, `base-evaluate`, shared by every
method, then per method `<method>-student-update`, `<method>-teacher-<member>`, ... and
`ccd-register`. So a flow and `ccd stream` over the same home folder share their finished work.

Only tasks that read or write shared storage retry, and only on errors a second attempt can fix
(`transient`): a file system hiccup, a DuckDB I/O error, a lock held too long by another writer.
A rejected block, a bad file or a training error fails at once.
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from ccd import atomic, registry, stages
from ccd.config import LakeConfig, RunConfig
from ccd.continual import loop
from ccd.continual.loop import Run
from ccd.evaluate import NDCG, RECALL
from ccd.home import Home
from ccd.lake import catalog
from ccd.lake.ingest import ingest_block
from ccd.lake.validation_report import ValidationReport
from ccd.locking import LockTimeoutError
from ccd.stages import DEFAULT_RUN_KEY, run_stage

# Shared-storage tasks: a few quick retries, then longer waits (a busy NFS server, a long ingest
# of another flow holding the lock).
IO_RETRIES = 3
IO_RETRY_DELAYS = [5, 30, 120]
TRANSIENT = (OSError, duckdb.IOException, LockTimeoutError)
METRIC_COLUMNS = ["model", "after_block", RECALL, NDCG, "LA", "RA", "H", f"H_{NDCG}", "params"]


def transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only when the error may go away by itself."""
    return isinstance(state.data, TRANSIENT)


def artifact_key(*parts: Any) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from readable parts."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")


def block_key(kind: str, block: int, method: str = "ccd", run_key: str = DEFAULT_RUN_KEY) -> str:
    """Stable artifact key of a block's `kind` ("metrics", "registry", "progress").

    The CCD default run's keys are short (`metrics-block-3`); another method or a retrain gets
    its own key, so it never shows up as a newer version of the default run's artifact.
    """
    prefix = (kind,) if method == "ccd" else (kind, method)
    suffix = () if run_key == DEFAULT_RUN_KEY else (run_key,)
    return artifact_key(*prefix, "block", block, *suffix)


@task(name="ingest", task_run_name="ingest block {block}", cache_policy=NO_CACHE,
      retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, retry_condition_fn=transient)
def ingest(home: Home, block_file: Path, block: int, lake: LakeConfig) -> dict[str, Any]:
    """Validate the block file and add it to the lake as block `block` (`ccd ingest`).

    When the ledger has the block's ingest done but the file's bytes are not the ones it
    recorded, the lake is asked first: the same content (say, rewritten in another format) is a
    no-op, other content is refused. Skipped on the ledger's word, a corrected file re-delivered
    before its block finished would go unnoticed while the block's stages trained on the old
    content. A file moved away since leaves nothing to compare.
    """
    record = stages.get(home, block, "ingest")
    if record is not None and record.status == "done" and Path(block_file).exists():
        if (record.outputs or {}).get("file_sha256") != atomic.sha256_file(block_file):
            ingest_block(home, block_file, block, lake)
    return run_stage(home, block, "ingest", partial(ingest_block, home, block_file, block, lake))


@task(name="publish-validation", task_run_name="publish validation of block {block}", cache_policy=NO_CACHE,
      retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, retry_condition_fn=transient)
def publish_validation(home: Home, block: int) -> str:
    """Publish the block's latest validation verdict (accepted or quarantined) as artifacts.

    Returns the verdict ("passed", "warning" or "rejected").
    """
    latest = catalog.list_validations(home, block)[-1]
    report_md = home.root / latest["report_path"]
    report = ValidationReport.from_dict(json.loads(report_md.with_suffix(".json").read_text()))
    create_markdown_artifact(
        report.to_markdown() + f"\nFull report: `{report_md}` (also `.html`, `.json`)\n",
        key=artifact_key("validation-block", block), description=report.summary(),
    )
    create_table_artifact(
        [{"check": c.name, "ok": c.success, "severity": c.severity, "details": c.details} for c in report.checks],
        key=artifact_key("validation-checks-block", block), description=f"validation checks of block {block}: {report.status}",
    )
    return report.status


# --- the CCD loop's stages


@task(name="ccd-stage", task_run_name="{stage} of block {block}", cache_policy=NO_CACHE)
def loop_stage(home: Home, block: int, stage: str, config: RunConfig, method: str = "ccd",
               run_key: str = DEFAULT_RUN_KEY) -> dict[str, Any]:
    """Run one stage of the CCD loop for `block` through the stage ledger; return its outputs.

    Takes only plain values (no loaded models or data), so it can run on any worker of a Dask
    cluster that sees the home folder: it reads what earlier stages left there.
    """
    logger = get_run_logger()

    def log_event(name: str, info: dict[str, Any]) -> None:
        took = f" in {info['seconds']:.1f} s" if "seconds" in info else ""
        logger.info("block %d %s (run %s): %s%s", info["block"], name, info["run_key"], info["event"], took)

    run = Run(home, method, config, run_key, progress=False, callback=log_event)
    layout, work = loop.stage_work(run, block, stage)
    return run.stage(layout, block, stage, work)


@task(name="publish-metrics", task_run_name="publish metrics after block {block}", cache_policy=NO_CACHE,
      retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, retry_condition_fn=transient)
def publish_metrics(home: Home, block: int, config: RunConfig, method: str = "ccd", run_key: str = DEFAULT_RUN_KEY) -> list[dict[str, Any]]:
    """Publish the metrics table of the models after `block` (this block and the earlier ones)."""
    rows = loop.metrics_table(Run(home, method, config, run_key, progress=False), block)
    create_table_artifact(
        [{c: row[c] for c in METRIC_COLUMNS} for row in rows], key=block_key("metrics", block, method, run_key),
        description=f"{method} after block {block} (run {run_key}): Recall/NDCG@20 on each block's own test, "
                    "LA/RA/H of Recall@20 over the blocks so far",
    )
    return rows


@task(name="publish-registry", task_run_name="publish registry decision of block {block}", cache_policy=NO_CACHE,
      retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, retry_condition_fn=transient)
def publish_registry(home: Home, block: int, decision: dict[str, Any], run_key: str = DEFAULT_RUN_KEY) -> str:
    """Publish the registry's decision on the block's student (the `register` stage's outputs)."""
    production = registry.aliases(home, loop.STUDENT).get(registry.PRODUCTION)
    verdict = "promoted to production" if decision["promoted"] else "kept as candidate"
    gate = ", ".join(f"{name} {value:.4f}" for name, value in sorted(decision["metrics"].items()))
    text = (f"# Registry: student v{decision['version']} of block {block} (run {run_key})\n\n"
            f"**{verdict}**: {decision['reason']}\n\nGate metrics: {gate}\n\nProduction now: v{production}\n")
    create_markdown_artifact(text, key=block_key("registry", block, "ccd", run_key), description=f"student v{decision['version']} {verdict}")
    return verdict


@task(name="write-stream-report", task_run_name="write the {method} stream report", cache_policy=NO_CACHE)
def write_stream_report(home: Home, config: RunConfig, method: str, last: int) -> dict[str, str]:
    """`reports/stream/<method>/metrics.json` and `hmean.png` over blocks 0..`last` (what `ccd stream` writes)."""
    return loop.write_report(Run(home, method, config, progress=False), last)["files"]


@task(name="write-dashboard", task_run_name="write the ops dashboard", cache_policy=NO_CACHE)
def write_dashboard(home: Home) -> str:
    """The ops dashboard of the home folder (`ccd report`); returns the page's path."""
    from ccd.report import build_dashboard  # matplotlib loads only here

    return build_dashboard(home)["path"]
