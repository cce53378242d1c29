"""The flows end to end through a real Prefect server (the package's test harness).

Few and small on purpose: the logic of each step is tested on plain `ccd` functions and on the
tasks' `.fn()` (test_flow_tasks.py). Here one backfill of the sample's first three blocks with
tiny models runs in a child process, is SIGKILLed inside block 1's registration and resumed
in-process with teacher members on a local Dask cluster; the tests then check the resume, the
artifacts and the dashboard, a no-op re-run and a retrain. A stream over small generated blocks
checks that a rejected block stops it.
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

import prefect.runtime.flow_run
import pytest
import torch
from prefect import flow

from ccd import registry, stages
from ccd.errors import ValidationFailedError
from ccd.home import Home
from ccd.lake import catalog
from ccd.locking import file_lock
from flows.backfill import backfill
from flows.backfill import main as backfill_main
from flows.retrain import default_run_key, retrain
from flows.stream_ingest import stream_ingest
from tests.conftest import REPO, SAMPLE, make_block

pytestmark = pytest.mark.prefect

BLOCKS = 3
TINY = {
    "train": {"device": "cpu", "max_epochs": 3, "eval_batch_users": 4096},
    "teacher": {"members": ["bpr:8", "lightgcn:8"], "top_k": 50},
    "distill": {"student_dim": 4, "n_uninteresting": 20, "n_uninteresting_users": 10},
    "continual": {"update_epochs": 2, "update_batch_size": 4096, "lwckd_anchors": 64,
                  "student_top": 20, "teacher_top": 20, "exclude_top": 10},
}
MEMBERS = ["teacher-bpr-0", "teacher-lightgcn-0"]
STAGES = {  # the loop's ledger names, per block
    0: {"ingest", *(f"base-{m}" for m in MEMBERS), "base-ensemble", "base-student", "base-evaluate", "ccd-register"},
    **{k: {"ingest", "ccd-student-update", *(f"ccd-{m}" for m in MEMBERS), "ccd-ensemble", "ccd-distill",
           "ccd-evaluate", "ccd-register"} for k in range(1, BLOCKS)},
}


def artifact(key: str):
    from prefect.artifacts import Artifact

    return Artifact.get(key)


def ledger(home: Home, run_key: str = "default") -> dict[tuple[int, str], stages.StageRecord]:
    return {(r.block, r.stage): r for r in stages.list_stages(home, run_key=run_key)}


def weights(home: Home) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in home.models.rglob("*.safetensors")}


def wait_for(condition, child: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if child.poll() is not None:
            pytest.fail(f"the flow process exited early ({child.returncode}):\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"timed out waiting for the flow process:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a busy 2-core machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def killed(prefect_api, tmp_path_factory, one_thread) -> dict:
    """A backfill of blocks 0..2 in a child process, SIGKILLed inside block 1's `ccd-register`.

    Two locks make the kill land at a known point: the test holds that stage's lock until
    block 1's first stage is done (block 0 is registered and published by then), then holds the
    registry's lock, so the stage starts (`running`) but cannot finish.
    """
    root = tmp_path_factory.mktemp("backfill")
    landing, home = root / "landing", Home.resolve(root / "home")
    landing.mkdir()
    for k in range(BLOCKS):
        shutil.copy(SAMPLE / f"block_{k}.parquet", landing)
    (root / "tiny.json").write_text(json.dumps(TINY))
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(root / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "OMP_NUM_THREADS": "1"}
    log = root / "child.log"
    command = [sys.executable, "-m", "flows.backfill", str(landing), "--home", str(home.root), "--config", str(root / "tiny.json")]
    with ExitStack() as stage_lock, ExitStack() as registry_lock, open(log, "w") as out:
        stage_lock.enter_context(file_lock(home, stages._lock_name(1, "ccd-register", "default"), timeout=5))
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: stages.is_done(home, 1, "ccd-student-update"), child, log)
            registry_lock.enter_context(file_lock(home, "registry", timeout=60))
            stage_lock.close()  # block 1's register starts, then waits for the registry
            wait_for(lambda: getattr(stages.get(home, 1, "ccd-register"), "status", None) == "running", child, log)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    return {"home": home, "landing": landing, "ledger": ledger(home), "weights": weights(home),
            "versions": [v.block for v in registry.list_versions(home, "student")]}


@pytest.fixture(scope="module")
def resumed(killed) -> dict:
    """The same backfill run again, in-process, with teacher members on a local Dask cluster."""
    return backfill(str(killed["landing"]), str(killed["home"].root), TINY, runner="dask")


@pytest.mark.timeout(1200)
def test_a_killed_backfill_resumes_without_redoing_or_duplicating(killed, resumed):
    home, before = killed["home"], killed["ledger"]
    assert before[(1, "ccd-register")].status == "running"  # killed inside the stage
    assert (1, "ccd-evaluate") in before and (2, "ingest") not in before
    assert killed["versions"] == [0]

    assert resumed["blocks"] == [0, 1, 2]
    after = ledger(home)
    assert all(r.status == "done" for r in after.values())
    assert {k: r.attempts for k, r in after.items() if r.attempts != 1} == {(1, "ccd-register"): 2}
    for key, record in before.items():  # what finished before the kill was not run again
        if record.status == "done":
            assert after[key].finished_at == record.finished_at, key
    assert all(weights(home)[path] == stamp for path, stamp in killed["weights"].items())
    assert [v.block for v in registry.list_versions(home, "student")] == [0, 1, 2]  # one version per block
    assert [len(list(home.block_dir(k).glob("*.parquet"))) for k in range(BLOCKS)] == [1] * BLOCKS


def test_backfill_runs_the_loop_stages_and_publishes_metrics_registry_and_dashboard(killed, resumed):
    home = killed["home"]
    names = {}
    for block, stage in ledger(home):
        names.setdefault(block, set()).add(stage)
    assert names == STAGES  # the CCD loop's stages only, each once per block

    rows = json.loads(artifact("metrics-block-2").data)
    assert [(r["model"], r["after_block"]) for r in rows] == [(side, k) for side in ("student", "teacher") for k in range(BLOCKS)]
    last = {r["model"]: r for r in rows if r["after_block"] == 2}
    assert all(0 < last[side]["H"] <= max(last[side]["LA"], last[side]["RA"]) for side in last)
    assert last["teacher"]["params"] > last["student"]["params"] > 0
    decision = artifact("registry-block-2")
    assert decision.type == "markdown" and "student v3 of block 2" in decision.data
    assert artifact("progress-block-2").data == 100.0 and artifact("backfill-progress").data == 100.0
    assert artifact("validation-block-2").data.startswith("# Validation of block 2")

    report = json.loads(Path(resumed["report"]["metrics"]).read_text())
    assert report["method"] == "ccd" and report["blocks"] == [0, 1, 2]
    assert resumed["dashboard"] == str(home.reports / "dashboard" / "index.html")
    assert "ccd student" in Path(resumed["dashboard"]).read_text()
    assert "reports/dashboard/index.html" in artifact("dashboard").data


def test_a_finished_backfill_runs_again_as_a_no_op(killed, resumed):
    home = killed["home"]
    before, files = ledger(home), weights(home)
    assert backfill(str(killed["landing"]), str(home.root), TINY)["blocks"] == [0, 1, 2]
    assert ledger(home) == before and weights(home) == files
    assert len(registry.list_versions(home, "student")) == BLOCKS


def test_a_backfill_with_other_settings_is_refused_in_one_line(killed, resumed, tmp_path, monkeypatch, capsys):
    home = Home(shutil.copytree(killed["home"].root, tmp_path / "home"))
    before, files = ledger(home), weights(home)
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    argv = ["backfill", str(killed["landing"]), "--home", str(home.root), "--config", str(tmp_path / "tiny.json")]
    monkeypatch.setattr(sys, "argv", [*argv, "--set", "train.lr=0.5"])
    with pytest.raises(SystemExit) as stopped:
        backfill_main()
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("backfill: error: run key 'default' was started with other settings (differing: train.lr;")
    assert ledger(home) == before and weights(home) == files  # nothing trained under the new settings


def test_a_retrain_registers_a_new_candidate_and_leaves_earlier_results_alone(killed, resumed, tmp_path):
    home = Home(shutil.copytree(killed["home"].root, tmp_path / "home"))
    before, files = ledger(home), weights(home)
    student = home.models / "ccd" / "block=1" / "student" / "weights.safetensors"
    original = student.read_bytes()

    faster = {**TINY, "train": {**TINY["train"], "lr": 0.02}}
    result = retrain(1, ["distill"], "ccd", faster, str(home.root), run_key="retrain-lr")
    assert result["run_key"] == "retrain-lr" and list(result["stages"]) == ["distill", "evaluate", "register"]
    assert set(ledger(home, "retrain-lr")) == {(1, "ccd-distill"), (1, "ccd-evaluate"), (1, "ccd-register")}
    assert ledger(home) == before and weights(home).items() >= files.items()  # earlier records and models untouched
    assert student.read_bytes() == original
    retrained = home.models / "ccd" / "block=1" / "run=retrain-lr" / "student" / "model.json"
    assert json.loads(retrained.read_text())["metadata"]["run_config"]["train"]["lr"] == 0.02

    newest = registry.list_versions(home, "student")[-1]
    assert (newest.version, newest.block, newest.lineage["run_key"]) == (BLOCKS + 1, 1, "retrain-lr")
    assert newest.lineage["trained_into"].endswith("run=retrain-lr/student")
    assert artifact("registry-block-1-retrain-lr").data.startswith(f"# Registry: student v{BLOCKS + 1} of block 1")
    decision = result["stages"]["register"]  # block 1 is older than production's block 2: kept back
    assert decision["version"] == newest.version and not decision["promoted"]
    assert "older than production" in decision["reason"]
    assert registry.aliases(home, "student")["candidate"] == newest.version


def test_a_retrains_default_run_key_is_its_flow_runs_so_a_retry_resumes_it(prefect_api):
    @flow
    def key_and_id() -> tuple[str, str]:
        return default_run_key(), str(prefect.runtime.flow_run.id)

    key, run_id = key_and_id()
    assert key == f"retrain-{run_id.replace('-', '')[-12:]}"
    assert key_and_id()[0] != key  # a second run at once gets its own key


def test_a_rejected_block_stops_the_stream_until_replaced(prefect_api, tmp_path):
    home = Home.resolve(tmp_path / "home")
    landing = tmp_path / "landing"
    landing.mkdir()
    for k in range(3):
        make_block(n_users=20 + 5 * k, block=k, seed=k).to_csv(landing / f"block_{k}.csv", index=False)
    bad = make_block(block=1, seed=1).astype({"user_id": object})
    bad.loc[3, "user_id"] = None
    bad.to_csv(landing / "block_1.csv", index=False)

    with pytest.raises(ValidationFailedError, match=r"block 1 rejected: .*quarantine"):
        stream_ingest(str(landing), str(home.root), until="ingest")
    assert [b.block for b in catalog.list_blocks(home)] == [0]  # block 2 waits
    assert artifact("validation-block-1").description.startswith("block 1 rejected")
    checks = json.loads(artifact("validation-checks-block-1").data)
    assert any(not row["ok"] and row["severity"] == "error" for row in checks)
    quarantined = list((home.quarantine / "block=1").iterdir())
    assert len(quarantined) == 1 and (quarantined[0] / "report.md").exists()

    with pytest.raises(ValidationFailedError, match="rejected before and has not changed"):
        stream_ingest(str(landing), str(home.root), until="ingest")
    assert len(list((home.quarantine / "block=1").iterdir())) == 1  # not quarantined again

    make_block(n_users=25, block=1, seed=1).to_csv(landing / "block_1.csv", index=False)
    assert stream_ingest(str(landing), str(home.root), until="ingest") == [1, 2]
    assert [b.block for b in catalog.list_blocks(home)] == [0, 1, 2]
    assert stream_ingest(str(landing), str(home.root), until="ingest") == []  # nothing new
