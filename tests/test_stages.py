"""The stage ledger: skip done stages, record failures, resume, run keys, concurrency, CLI."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from ccd import stages
from ccd.cli import main
from ccd.continual.loop import Run
from ccd.errors import BadInputError, CcdError
from ccd.locking import file_lock
from ccd.lake.ingest import ingest_block
from ccd.config import LakeConfig, RunConfig
from tests.conftest import make_block


class Counter:
    """A stage function that counts its calls and can be told to fail."""

    def __init__(self, outputs: dict | None = None, fail: bool = False) -> None:
        self.calls, self.outputs, self.fail = 0, outputs or {}, fail

    def __call__(self) -> dict:
        self.calls += 1
        if self.fail:
            raise RuntimeError("disk full")
        return self.outputs


def test_done_stage_is_skipped_and_returns_recorded_outputs(home):
    fn = Counter({"path": Path("models/block=0/x"), "n": 3})
    first = stages.run_stage(home, 0, "train", fn)
    again = stages.run_stage(home, 0, "train", fn)
    assert fn.calls == 1
    assert first == again == {"path": "models/block=0/x", "n": 3}  # JSON round-trip: same on both paths
    record = stages.get(home, 0, "train")
    assert (record.status, record.attempts, record.error) == ("done", 1, None)
    assert record.finished_at >= record.started_at
    assert stages.is_done(home, 0, "train") and not stages.is_done(home, 1, "train")


def test_failure_is_recorded_then_resume_runs_only_unfinished_stages(home):
    ingest, teacher, distill = Counter({"rows": 10}), Counter(fail=True), Counter({"student": "s"})
    pipeline = [("ingest", ingest), ("teacher", teacher), ("distill", distill)]

    def run_all():
        return [stages.run_stage(home, 2, name, fn) for name, fn in pipeline]

    with pytest.raises(RuntimeError, match="disk full"):
        run_all()
    failed = stages.get(home, 2, "teacher")
    assert failed.status == "failed" and failed.error == "RuntimeError: disk full" and failed.finished_at
    assert stages.get(home, 2, "distill") is None  # never started

    teacher.fail, teacher.outputs = False, {"members": 3}
    assert run_all() == [{"rows": 10}, {"members": 3}, {"student": "s"}]
    assert (ingest.calls, teacher.calls, distill.calls) == (1, 2, 1)
    assert stages.get(home, 2, "teacher").attempts == 2
    assert stages.get(home, 2, "teacher").error is None
    assert [r.status for r in stages.list_stages(home, block=2)] == ["done", "done", "done"]


def test_a_stage_killed_midway_stays_running_and_is_run_again(home, monkeypatch):
    class Killed(BaseException):
        """Stands in for a SIGKILL: not an Exception, and nothing is recorded after it."""

    def killed():
        raise Killed

    monkeypatch.setattr(stages, "_fail", lambda *args: None)  # a killed process records nothing more
    with pytest.raises(Killed):
        stages.run_stage(home, 0, "ingest", killed)
    monkeypatch.undo()
    assert stages.get(home, 0, "ingest").status == "running"
    assert not stages.is_done(home, 0, "ingest")
    assert stages.run_stage(home, 0, "ingest", Counter({"ok": True})) == {"ok": True}
    assert stages.get(home, 0, "ingest").attempts == 2


def test_run_keys_keep_earlier_results(home):
    default, retrain = Counter({"v": 1}), Counter({"v": 2})
    stages.run_stage(home, 1, "distill", default)
    assert stages.run_stage(home, 1, "distill", retrain, run_key="retrain-1") == {"v": 2}
    assert stages.get(home, 1, "distill").outputs == {"v": 1}
    assert stages.done_outputs(home, 1, "distill", ("retrain-1", "default")) == {"v": 2}
    assert stages.done_outputs(home, 1, "distill", ("retrain-9", "default")) == {"v": 1}
    assert stages.done_outputs(home, 1, "teacher") is None
    assert [r.run_key for r in stages.list_stages(home, run_key="retrain-1")] == ["retrain-1"]
    assert stages.run_stage(home, 1, "distill", default) == {"v": 1}  # done: not run again
    assert default.calls == 1 and stages.get(home, 1, "distill").attempts == 1


def test_bad_names_and_outputs_are_refused(home):
    with pytest.raises(BadInputError, match="stage name"):
        stages.run_stage(home, 0, "../x", Counter())
    with pytest.raises(BadInputError, match="run key"):
        stages.run_stage(home, 0, "ingest", Counter(), run_key="a/b")
    with pytest.raises(ValueError, match="block"):
        stages.run_stage(home, -1, "ingest", Counter())
    with pytest.raises(TypeError, match="must return a dict"):
        stages.run_stage(home, 0, "ingest", lambda: [1, 2])
    assert stages.get(home, 0, "ingest").status == "failed"


def test_concurrent_runs_of_one_stage_run_it_once(home):
    calls = []

    def slow():
        calls.append(threading.get_ident())
        time.sleep(0.3)
        return {"by": len(calls)}

    results = []
    threads = [threading.Thread(target=lambda: results.append(stages.run_stage(home, 0, "teacher", slow))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [{"by": 1}, {"by": 1}]
    assert not list(home.locks.glob("stage-*.lock"))  # a stage's lock file goes with its run


def test_ingest_as_a_stage_records_the_ingest_result(home, tmp_path):
    path = tmp_path / "block_0.csv"
    make_block().to_csv(path, index=False)
    outputs = stages.run_stage(home, 0, "ingest", lambda: ingest_block(home, path, 0, LakeConfig()))
    assert outputs["status"] == "ingested" and outputs["record"]["rows"] == 240
    assert outputs["validation"]["status"] == "passed"


def test_cli_lists_the_ledger(home, capsys):
    stages.run_stage(home, 0, "ingest", Counter({"rows": 5}))
    with pytest.raises(RuntimeError):
        stages.run_stage(home, 1, "ingest", Counter(fail=True))
    assert main(["stages", "--home", str(home.root), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [(r["block"], r["stage"], r["status"]) for r in payload["stages"]] == [(0, "ingest", "done"), (1, "ingest", "failed")]
    assert payload["stages"][1]["error"] == "RuntimeError: disk full"
    assert main(["stages", "--home", str(home.root), "--block", "1"]) == 0
    text = capsys.readouterr().out
    assert "failed" in text and "RuntimeError: disk full" in text and "done" not in text


def test_a_stream_run_stops_when_a_block_it_read_is_replaced(home, tmp_path):
    """`ccd stream` caches the blocks it has read; a replace of one (between two of its stages)
    makes that cache and the outputs trained on it stale, so the next stage refuses to run."""
    paths = [tmp_path / f"block_{k}.csv" for k in range(2)]
    for k, path in enumerate(paths):
        make_block(seed=k, block=k).to_csv(path, index=False)
        ingest_block(home, path, k, LakeConfig())
    run = Run(home, "ccd", RunConfig.load(None, ["train.device=cpu"]), progress=False)
    run.data(1)
    assert run.stage(run.layout, 1, "first", lambda: {"ok": 1}) == {"ok": 1}
    make_block(seed=9, block=1).to_csv(paths[1], index=False)
    ingest_block(home, paths[1], 1, LakeConfig(), replace=True)
    with pytest.raises(CcdError, match="block 1 was replaced while this run was under way"):
        run.stage(run.layout, 1, "second", lambda: {"ok": 2})
    assert stages.get(home, 1, "ccd-second").status == "failed"
    fresh = Run(home, "ccd", RunConfig.load(None, ["train.device=cpu"]), progress=False)
    fresh.data(1)
    assert fresh.stage(fresh.layout, 1, "second", lambda: {"ok": 2}) == {"ok": 2}


def test_a_finished_stage_waits_for_the_catalog_however_long_it_is_busy(home, monkeypatch):
    """The ledger write that marks a stage done comes after all its work: giving up on a busy
    catalog (a long ingest commit) would throw that work away, so it waits without a limit.
    Here every other catalog wait is cut to 0.2 s while the catalog stays busy for 1 s."""
    real_connect = stages.catalog.connect
    monkeypatch.setattr(stages.catalog, "connect",
                        lambda home, read_only=False, timeout=60.0: real_connect(home, read_only, None if timeout is None else 0.2))
    busy, holder = threading.Event(), None

    def hold_catalog():
        with file_lock(home, "catalog"):
            busy.set()
            time.sleep(1.0)

    def work():
        nonlocal holder
        holder = threading.Thread(target=hold_catalog)
        holder.start()
        assert busy.wait(10)
        return {"ok": True}

    assert stages.run_stage(home, 0, "teacher", work) == {"ok": True}
    holder.join()
    assert stages.get(home, 0, "teacher").status == "done"
