"""The flows' tasks: each runs one `ccd` function, as one stage of the stage ledger.

`ccd.stages.run_stage` records every stage in the catalog, so a task whose stage is already done
returns the recorded outputs at once: a re-run of an interrupted flow resumes at the first
unfinished stage. Prefect's own result caching is off (`NO_CACHE`) because the ledger is the one
record of what finished, shared with `ccd stages` and the CLI.

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
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from ccd import teacher
from ccd.config import LakeConfig, RunConfig
from ccd.distill.run import distill_stored
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
TEACHER_COLUMNS = ["member", "kind", "params", "status", "best_epoch", "epochs", "s_per_epoch",
                   "valid_recall@20", "valid_ndcg@20", "test_recall@20", "test_ndcg@20"]


def transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only when the error may go away by itself."""
    return isinstance(state.data, TRANSIENT)


def artifact_key(*parts: Any) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from readable parts."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")


@task(name="ingest", task_run_name="ingest block {block}", cache_policy=NO_CACHE,
      retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, retry_condition_fn=transient)
def ingest(home: Home, block_file: Path, block: int, lake: LakeConfig) -> dict[str, Any]:
    """Validate the block file and add it to the lake as block `block` (`ccd ingest`)."""
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


@task(name="train-teacher-member", task_run_name="train teacher member {name} of block {block}", cache_policy=NO_CACHE)
def train_member(home: Home, block: int, name: str, config: RunConfig,
                 run_key: str = DEFAULT_RUN_KEY, retrain: bool = False) -> dict[str, Any]:
    """Train (or reuse) one teacher member (`ccd.teacher.train_member`), logging every epoch."""
    progress = EpochProgress(f"teacher member {name} of block {block}", config.train.max_epochs,
                             artifact_key("progress-teacher", name, "block", block))
    work = partial(teacher.train_member, home, block, name, config, retrain=retrain, progress=False, callback=progress)
    row = run_stage(home, block, f"teacher-{name}", work, run_key=run_key)
    progress.finish()
    return row


@task(name="teacher-ensemble", task_run_name="teacher ensemble of block {block}", cache_policy=NO_CACHE)
def train_teacher(home: Home, block: int, config: RunConfig, run_key: str = DEFAULT_RUN_KEY) -> dict[str, Any]:
    """Build the teacher ensemble from the saved members and write its top-K lists (`ccd train-teacher`)."""
    return run_stage(home, block, "teacher", partial(teacher.train_teacher, home, block, config, progress=False), run_key=run_key)


@task(name="publish-teacher", task_run_name="publish teacher metrics of block {block}", cache_policy=NO_CACHE)
def publish_teacher(block: int, report: dict[str, Any]) -> None:
    """Publish the teacher's members and ensemble (valid/test Recall and NDCG@20) as a table."""
    rows = [*report["members"], report["ensemble"]]
    create_table_artifact(
        [{c: row.get(c) for c in TEACHER_COLUMNS} for row in rows],
        key=artifact_key("teacher-block", block), description=f"teacher of block {block}: members and ensemble",
    )


@task(name="distill", task_run_name="distill the student of block {block}", cache_policy=NO_CACHE)
def distill_student(home: Home, block: int, config: RunConfig, run_key: str = DEFAULT_RUN_KEY) -> dict[str, Any]:
    """Distill the block's student from its teacher with `config.distill.method` (`ccd distill`)."""
    progress = EpochProgress(f"{config.distill.method} student of block {block}", config.train.max_epochs,
                             artifact_key("progress-student-block", block))
    work = partial(distill_stored, home, block, config, progress=False, callback=progress)
    report = run_stage(home, block, "distill", work, run_key=run_key)
    progress.finish()
    return report


@task(name="publish-student", task_run_name="publish student metrics of block {block}", cache_policy=NO_CACHE)
def publish_student(block: int, report: dict[str, Any]) -> None:
    """Publish the student beside its teacher: accuracy, parameters and scoring latency."""
    create_table_artifact(
        [{"model": name, **report[name]} for name in ("student", "teacher")],
        key=artifact_key("student-block", block),
        description=f"{report['method']} student of block {block} beside its teacher; saved in {report['saved']}",
    )


class EpochProgress:
    """The training loop's `callback(epoch, record)` as run logs and a Prefect progress artifact.

    Early stopping ends a run before `max_epochs`; `finish` then sets the artifact to 100%.
    """

    def __init__(self, what: str, max_epochs: int, key: str) -> None:
        self.what, self.max_epochs = what, max_epochs
        self.logger = get_run_logger()
        self.artifact = create_progress_artifact(0.0, key=key, description=f"{what}: epochs (at most {max_epochs})")

    def __call__(self, epoch: int, record: dict[str, Any]) -> None:
        valid = record.get("valid") or {}
        shown = f", valid recall@20 {valid['recall@20']:.4f}" if "recall@20" in valid else ""
        self.logger.info("%s: epoch %d/%d, loss %.4f%s", self.what, epoch, self.max_epochs, record["loss"], shown)
        update_progress_artifact(self.artifact, min(100.0, 100.0 * epoch / self.max_epochs))

    def finish(self) -> None:
        update_progress_artifact(self.artifact, 100.0)
