"""The flows' pieces without a Prefect server: task bodies through `.fn()`, retry rule, options."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import dask
import duckdb
import pytest
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from ccd import stages
from ccd.config import LakeConfig
from ccd.continual.state import Layout
from ccd.errors import BadInputError, BlockOrderError, ValidationFailedError
from ccd.home import Home
from ccd.lake import catalog
from ccd.lake.ingest import ingest_block
from ccd.locking import LockTimeoutError
from flows.options import add_config_options, config_parameter
from ccd.config import RunConfig
from flows.process_block import block_plan, check_options, final_stage
from flows.retrain import retrain, retrain_groups
from flows.runners import task_runner
from flows.stream_ingest import earlier_rejection, find_new_blocks, stale_report
from flows.tasks import artifact_key, block_key, ingest, transient
from ccd.continual.loop import ledger_name

TWO = RunConfig.from_dict({"teacher": {"members": ["bpr:8x2"]}})
from tests.conftest import make_block


@pytest.mark.parametrize("error, retry", [
    (OSError("stale NFS handle"), True),
    (TimeoutError("read timed out"), True),
    (duckdb.IOException("could not set lock"), True),
    (LockTimeoutError("lock 'catalog' busy"), True),
    (ValidationFailedError("block 1 rejected"), False),
    (BlockOrderError("block 3 is out of order"), False),
    (ValueError("a bug"), False),
])
def test_only_transient_errors_are_retried(error, retry):
    assert transient(None, None, SimpleNamespace(data=error)) is retry


def test_artifact_keys_are_lowercase_dashes_and_stable_per_method_and_run():
    assert artifact_key("validation-block", 3) == "validation-block-3"
    assert artifact_key("progress-teacher", "LightGCN_0", "block", 12) == "progress-teacher-lightgcn-0-block-12"
    assert block_key("metrics", 3) == "metrics-block-3"
    assert block_key("metrics", 3, "lwckd-student") == "metrics-lwckd-student-block-3"
    assert block_key("registry", 1, "ccd", "retrain-20260101T120000") == "registry-block-1-retrain-20260101t120000"


def test_block_plans_follow_the_loop_with_members_side_by_side():
    members = ("teacher-bpr-0", "teacher-bpr-1")
    assert block_plan(0, "ccd", TWO) == [members, ("ensemble",), ("student",), ("evaluate",), ("register",)]
    assert block_plan(0, "finetune", TWO) == [members, ("ensemble",), ("student",), ("evaluate",)]
    assert block_plan(2, "ccd", TWO) == [("student-update",), members, ("ensemble",), ("distill",), ("evaluate",), ("register",)]
    assert block_plan(2, "ccd", TWO, until="evaluate")[-1] == ("evaluate",)
    assert block_plan(2, "kd", TWO) == [members, ("ensemble",), ("distill",), ("evaluate",)]
    anchored = RunConfig.from_dict({"teacher": {"members": ["bpr:8x2"]}, "continual": {"teacher_update": "anchored"}})
    assert block_plan(2, "ccd", anchored)[:2] == [("student-update", "anchor-bpr-0", "anchor-bpr-1"), members]
    assert block_plan(2, "kd", anchored) == block_plan(2, "kd", TWO)
    assert block_plan(2, "retrain", TWO) == [("student",), ("evaluate",)]
    # ledger names as `ccd stream` records them: block 0 is the shared "base" run
    assert [ledger_name(0, s, "ccd") for s in ("teacher-bpr-0", "student", "register")] == ["base-teacher-bpr-0", "base-student", "ccd-register"]
    assert ledger_name(3, "teacher-bpr-0", "kd") == "kd-teacher-bpr-0"
    assert [final_stage(0, "ccd", u) for u in ("ingest", "evaluate", "register")] == ["ingest", "base-evaluate", "ccd-register"]
    assert final_stage(4, "finetune", "register") == "finetune-evaluate"


def test_a_retrain_runs_the_chosen_stages_and_every_later_one():
    assert retrain_groups(1, ["distill"], "ccd", TWO) == [("distill",), ("evaluate",), ("register",)]
    assert retrain_groups(1, ["register", "teacher"], "ccd", TWO)[0] == ("teacher-bpr-0", "teacher-bpr-1")
    assert retrain_groups(1, None, "ccd", TWO) == block_plan(1, "ccd", TWO)
    assert retrain_groups(0, ["student"], "ccd", TWO) == [("student",), ("evaluate",), ("register",)]
    with pytest.raises(BadInputError, match="shared by every run"):
        retrain_groups(0, ["teacher"], "ccd", TWO)
    with pytest.raises(BadInputError, match=r"cannot retrain stage\(s\) student-update .*choose from student, evaluate"):
        retrain_groups(1, ["student-update"], "finetune", TWO)


def test_config_parameter_keeps_what_was_named_and_rejects_typos():
    """A value named at its default stays: the flow applies it on top of the run's pinned settings."""
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    args = parser.parse_args(["--set", "train.lr=0.01", "--set", 'teacher.members=["bpr:8x2"]', "--set", "train.device=auto"])
    assert config_parameter(args) == {"train": {"lr": 0.01, "device": "auto"}, "teacher": {"members": ["bpr:8x2"]}}
    with pytest.raises(BadInputError, match="unknown config key"):
        config_parameter(parser.parse_args(["--set", "train.learning_rate=0.01"]))


def test_task_runner_choices(tmp_path):
    home = Home(tmp_path)
    assert isinstance(task_runner("threads", home), ThreadPoolTaskRunner)
    with dask.config.set({"temporary-directory": None}):  # restored afterwards
        assert isinstance(task_runner("dask", home), DaskTaskRunner)
        assert dask.config.get("temporary-directory") == str(tmp_path / "cache" / "dask")  # scratch in the home
    assert task_runner("tcp://10.0.0.5:8786", home).address == "tcp://10.0.0.5:8786"
    with pytest.raises(BadInputError, match="unknown task runner"):
        task_runner("gpu", home)


def test_unknown_options_are_refused_before_anything_runs(home):
    with pytest.raises(BadInputError, match="unknown stop point 'distil'"):
        check_options("distil")
    with pytest.raises(BadInputError, match="unknown method 'dkd'"):
        check_options("register", "dkd")
    with pytest.raises(BadInputError, match="cannot retrain stage"):
        retrain.fn(1, ["ingest"], home=str(home.root))
    assert not home.catalog_path.exists()


def test_ingest_task_records_the_stage_and_skips_it_when_done(home, tmp_path):
    path = tmp_path / "block_0.csv"
    make_block().to_csv(path, index=False)
    first = ingest.fn(home, path, 0, LakeConfig())
    assert first["status"] == "ingested"
    assert ingest.fn(home, path, 0, LakeConfig()) == first  # the same file: unchanged, the record stands
    path.unlink()  # a resumed run does not even need the file of a finished stage
    assert ingest.fn(home, path, 0, LakeConfig()) == first
    assert stages.get(home, 0, "ingest").attempts == 1


def test_ingest_task_refuses_a_changed_file_even_when_the_stage_is_done(home, tmp_path):
    """A corrected file re-delivered before its block finished must not be skipped on the
    ledger's word: the block's remaining stages would train on the old content."""
    path = tmp_path / "block_0.csv"
    make_block().to_csv(path, index=False)
    ingest.fn(home, path, 0, LakeConfig())
    make_block(seed=5).to_csv(path, index=False)
    with pytest.raises(BlockOrderError, match=rf"block 0 already holds different content than {path}.*use --replace"):
        ingest.fn(home, path, 0, LakeConfig())
    make_block().to_parquet(path.with_suffix(".parquet"))  # other bytes, the same content: a no-op
    assert ingest.fn(home, path.with_suffix(".parquet"), 0, LakeConfig())["status"] == "ingested"  # the record stands
    assert stages.get(home, 0, "ingest").attempts == 1


def test_a_failed_ingest_is_recorded_in_the_ledger(home, tmp_path):
    bad = make_block().astype({"user_id": object})
    bad.loc[0, "user_id"] = None
    path = tmp_path / "block_0.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(ValidationFailedError):
        ingest.fn(home, path, 0, LakeConfig())
    assert stages.get(home, 0, "ingest").status == "failed"


def test_find_new_blocks_skips_blocks_whose_stage_is_done(home, tmp_path):
    for k in range(3):
        make_block(block=k, seed=k).to_csv(tmp_path / f"block_{k}.csv", index=False)
    stages.run_stage(home, 0, "ingest", lambda: ingest_block(home, tmp_path / "block_0.csv", 0, LakeConfig()))
    assert find_new_blocks.fn(home, tmp_path, "ingest") == [(1, tmp_path / "block_1.csv"), (2, tmp_path / "block_2.csv")]
    assert [k for k, _ in find_new_blocks.fn(home, tmp_path, "register")] == [0, 1, 2]


def test_earlier_rejection_names_the_report_of_the_same_file_only(home, tmp_path):
    bad = make_block().astype({"user_id": object})
    bad.loc[0, "user_id"] = None
    path = tmp_path / "block_0.csv"
    bad.to_csv(path, index=False)
    assert earlier_rejection.fn(home, 0, path) is None
    with pytest.raises(ValidationFailedError):
        ingest_block(home, path, 0, LakeConfig())
    report = earlier_rejection.fn(home, 0, path)
    assert report is not None and "quarantine" in report and report.endswith("report.md")
    make_block(seed=3).to_csv(path, index=False)  # replaced: validate it again
    assert earlier_rejection.fn(home, 0, path) is None
    ingest_block(home, path, 0, LakeConfig())
    assert catalog.list_validations(home, 0)[-1]["status"] != "rejected"


def test_stale_report_names_the_last_finished_block_the_report_lacks(home):
    """A run that finished blocks and then failed leaves the report behind; the next run,
    even with nothing new, must see it (and only up to the first unfinished block)."""
    finish = lambda block: stages.run_stage(home, block, final_stage(block, "ccd", "register"), lambda: {})
    assert stale_report.fn(home, "ccd", "register", []) is None  # nothing finished, nothing to report
    finish(0), finish(1), finish(3)  # block 2 failed: 3 cannot be reported yet
    assert stale_report.fn(home, "ccd", "register", []) == 1
    metrics = Layout(home, "ccd").report_dir / "metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"blocks": [0, 1]}))
    assert stale_report.fn(home, "ccd", "register", []) is None
    finish(2)
    assert stale_report.fn(home, "ccd", "register", []) == 3
    metrics.write_text(json.dumps({"blocks": [0, 1, 2, 3]}))
    assert stale_report.fn(home, "ccd", "register", []) is None
    assert stale_report.fn(home, "ccd", "register", [3]) == 3  # block 3 replaced and run again
