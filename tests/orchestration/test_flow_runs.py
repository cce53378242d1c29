"""The flows end to end through a real Prefect server (the session's test harness).

Few and small on purpose: the logic of each step is tested on plain `ccd` functions and on the
tasks' `.fn()` (test_flow_tasks.py); these check that the flows wire it together, publish their
artifacts, stop on a rejected block, resume after a kill and spread teacher members over Dask.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
import pytest

from ccd import stages
from ccd.errors import BadInputError, ValidationFailedError
from ccd.home import Home
from ccd.lake import catalog
from ccd.locking import file_lock
from flows.backfill import backfill
from flows.process_block import process_block
from flows.retrain import retrain
from flows.runners import task_runner
from flows.stream_ingest import stream_ingest
from tests.conftest import REPO, SAMPLE, make_block

pytestmark = pytest.mark.prefect

TINY = {
    "teacher": {"members": ["bpr:8x2"], "top_k": 10},
    "train": {"max_epochs": 2, "batch_size": 256, "device": "cpu"},
    "distill": {"top_n": 10, "n_interesting": 3, "n_uninteresting": 5, "n_experts": 4},
}


def artifact(key: str):
    from prefect.artifacts import Artifact

    return Artifact.get(key)


def write_blocks(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        make_block(n_users=20 + 5 * k, block=k, seed=k).to_csv(folder / f"block_{k}.csv", index=False)
    return folder


def test_stream_ingest_over_the_sample(prefect_api, tmp_path):
    home = Home.resolve(tmp_path / "home")
    assert stream_ingest(str(SAMPLE), str(home.root), until="ingest") == [0, 1, 2, 3, 4, 5]
    assert [b.block for b in catalog.list_blocks(home)] == [0, 1, 2, 3, 4, 5]
    assert all(stages.is_done(home, k, "ingest") for k in range(6))
    verdict = artifact("validation-block-5")
    assert verdict.type == "markdown" and "# Validation of block 5" in verdict.data
    status = catalog.list_validations(home, 5)[-1]["status"]
    assert status in ("passed", "warning") and verdict.description.startswith(f"block 5 {status}")
    checks = json.loads(artifact("validation-checks-block-5").data)
    assert checks and all(row["ok"] or row["severity"] == "warning" for row in checks)
    assert stream_ingest(str(SAMPLE), str(home.root), until="ingest") == []  # nothing new


def test_a_rejected_block_stops_the_stream_until_replaced(prefect_api, tmp_path):
    home = Home.resolve(tmp_path / "home")
    landing = write_blocks(tmp_path / "landing", 3)
    bad = make_block(block=1, seed=1).astype({"user_id": object})
    bad.loc[3, "user_id"] = None
    bad.to_csv(landing / "block_1.csv", index=False)

    with pytest.raises(ValidationFailedError, match=r"block 1 rejected: .*quarantine"):
        stream_ingest(str(landing), str(home.root), until="ingest")
    assert [b.block for b in catalog.list_blocks(home)] == [0]  # block 2 waits
    assert artifact("validation-block-1").description.startswith("block 1 rejected")
    quarantined = list((home.quarantine / "block=1").iterdir())
    assert len(quarantined) == 1 and (quarantined[0] / "report.md").exists()

    with pytest.raises(ValidationFailedError, match="rejected before and has not changed"):
        stream_ingest(str(landing), str(home.root), until="ingest")
    assert len(list((home.quarantine / "block=1").iterdir())) == 1  # not quarantined again

    make_block(n_users=25, block=1, seed=1).to_csv(landing / "block_1.csv", index=False)
    assert stream_ingest(str(landing), str(home.root), until="ingest") == [1, 2]
    assert [b.block for b in catalog.list_blocks(home)] == [0, 1, 2]


@pytest.mark.timeout(600)
def test_a_killed_backfill_resumes_without_redoing_or_duplicating(prefect_api, tmp_path):
    """Kill the flow's process while block 2's ingest runs; the re-run finishes only block 2.

    Two locks make the kill land at a known point: the test holds block 2's stage lock until
    block 1 is done, then holds the ingest lock so block 2's stage starts but cannot finish.
    """
    home = Home.resolve(tmp_path / "home")
    landing = write_blocks(tmp_path / "landing", 3)
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = tmp_path / "child.log"
    command = [sys.executable, "-m", "flows.backfill", str(landing), "--home", str(home.root), "--until", "ingest"]
    with ExitStack() as stage_lock, ExitStack() as ingest_lock, open(log, "w") as out:
        stage_lock.enter_context(file_lock(home, stages._lock_name(2, "ingest", "default"), timeout=5))
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: stages.is_done(home, 1, "ingest"), child, log)
            ingest_lock.enter_context(file_lock(home, "ingest", timeout=60))
            stage_lock.close()  # block 2's stage starts, then waits for the ingest lock
            wait_for(lambda: getattr(stages.get(home, 2, "ingest"), "status", None) == "running", child, log)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert stages.get(home, 2, "ingest").status == "running"  # killed inside the stage
    assert [b.block for b in catalog.list_blocks(home)] == [0, 1]
    before = {b.block: b.ingested_at for b in catalog.list_blocks(home)}

    assert backfill(str(landing), str(home.root), until="ingest") == [0, 1, 2]
    records = {r.block: r for r in stages.list_stages(home)}
    assert {k: (r.status, r.attempts) for k, r in records.items()} == {0: ("done", 1), 1: ("done", 1), 2: ("done", 2)}
    after = {b.block: b.ingested_at for b in catalog.list_blocks(home)}
    assert after[0] == before[0] and after[1] == before[1] and set(after) == {0, 1, 2}
    assert [len(list(home.block_dir(k).glob("*.parquet"))) for k in range(3)] == [1, 1, 1]
    assert pd.Series([v["block"] for v in catalog.list_validations(home)]).value_counts().to_dict() == {0: 1, 1: 1, 2: 1}


def wait_for(condition, child: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if child.poll() is not None:
            pytest.fail(f"the flow process exited early ({child.returncode}):\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"timed out waiting for the flow process:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def test_teacher_members_on_dask_then_a_retrain_under_its_own_key(prefect_api, tmp_path):
    home = Home.resolve(tmp_path / "home")
    landing = write_blocks(tmp_path / "landing", 1)
    on_dask = process_block.with_options(task_runner=task_runner("dask"))
    outputs = on_dask(str(landing / "block_0.csv"), 0, str(home.root), TINY)
    assert [row["member"] for row in outputs["teacher"]["members"]] == ["bpr-0", "bpr-1"]
    default = {r.stage: r for r in stages.list_stages(home, 0, "default")}
    assert set(default) == {"ingest", "teacher-bpr-0", "teacher-bpr-1", "teacher", "distill"}
    assert all(r.status == "done" and r.attempts == 1 for r in default.values())
    assert default["teacher-bpr-0"].outputs["status"] == "trained"
    assert (home.model_dir(0, "teacher") / "user_topk.parquet").exists()
    assert json.loads(artifact("teacher-block-0").data)[-1]["member"] == "teacher"
    assert artifact("progress-teacher-bpr-1-block-0").data == 100.0
    assert outputs["distill"]["method"] == "de-rrd"
    student = home.model_dir(0, "student-de-rrd")
    assert outputs["distill"]["saved"] == str(student) and (student / "model.json").exists()
    assert [row["model"] for row in json.loads(artifact("student-block-0").data)] == ["student", "teacher"]
    first_student = (student / "weights.safetensors").read_bytes()

    faster = {**TINY, "train": {**TINY["train"], "lr": 0.02}}
    result = retrain(0, ["teacher", "distill"], "rd", faster, str(home.root), run_key="retrain-lr")
    assert result["run_key"] == "retrain-lr"
    assert [row["status"] for row in result["teacher"]["members"]] == ["reused", "reused"]  # just retrained by their tasks
    again = {r.stage: r for r in stages.list_stages(home, 0, "retrain-lr")}
    assert set(again) == {"teacher-bpr-0", "teacher-bpr-1", "teacher", "distill"}
    assert again["teacher-bpr-0"].outputs["status"] == "trained"
    assert {r.stage: r for r in stages.list_stages(home, 0, "default")} == default  # earlier records untouched
    saved = json.loads((home.model_dir(0, "teacher-bpr-0") / "model.json").read_text())
    assert saved["metadata"]["run_config"]["train"]["lr"] == 0.02
    assert result["distill"]["method"] == "rd" and (home.model_dir(0, "student-rd") / "model.json").exists()
    assert (student / "weights.safetensors").read_bytes() == first_student  # the de-rrd student is left alone

    with pytest.raises(BadInputError, match="cannot retrain stage"):
        retrain(0, ["ingest"], home=str(home.root))
