"""`ccd.teacher.train_member`: one member on its own (what each flow task runs), then the ensemble reuses it."""

from __future__ import annotations

import threading

import pytest
import torch

from ccd.config import LakeConfig, RunConfig
from ccd.continual.loop import Run, stage_work
from ccd.errors import BadInputError
from ccd import stages, teacher
from ccd.lake.ingest import ingest_block
from ccd.lake.store import load_block_data
from ccd.models import io
from ccd.teacher import _digest, member_dir_name, train_member, train_teacher
from tests.conftest import make_block

CONFIG = RunConfig.from_dict({
    "teacher": {"members": ["bpr:8x2"], "top_k": 5},
    "train": {"max_epochs": 2, "batch_size": 256, "device": "cpu"},
})


def test_members_trained_one_by_one_are_reused_by_the_ensemble(home, tmp_path):
    ingest_block0(home, tmp_path)
    rows = [train_member(home, 0, name, CONFIG, progress=False) for name in ("bpr-0", "bpr-1")]
    assert [(r["member"], r["status"]) for r in rows] == [("bpr-0", "trained"), ("bpr-1", "trained")]
    assert train_member(home, 0, "bpr-1", CONFIG, progress=False)["status"] == "reused"
    report = train_teacher(home, 0, CONFIG, progress=False)
    assert [r["status"] for r in report["members"]] == ["reused", "reused"]
    assert [r["valid_recall@20"] for r in report["members"]] == [r["valid_recall@20"] for r in rows]
    with pytest.raises(BadInputError, match="no teacher member 'vae-0'"):
        train_member(home, 0, "vae-0", CONFIG)


def test_a_member_is_reused_on_another_device(home, tmp_path):
    """A stream may resume on a GPU after starting on a CPU: the device names where a member
    trains, not what it learns, so changing it alone retrains nothing (nor refuses, as it would
    for a member a finished stage recorded)."""
    ingest_block0(home, tmp_path)
    assert train_member(home, 0, "bpr-0", CONFIG, progress=False)["status"] == "trained"
    elsewhere = RunConfig.from_dict({**CONFIG.to_dict(), "train": {**CONFIG.to_dict()["train"], "device": "cpu:0"}})
    assert train_member(home, 0, "bpr-0", elsewhere, progress=False)["status"] == "reused"


@pytest.mark.parametrize("dropped", [("decay_on", "graph"), ("graph",), ()])
def test_members_saved_by_earlier_code_are_reused_when_todays_settings_train_alike(home, tmp_path, dropped):
    """Earlier code hashed the device, left `decay_on` out at "batch", and knew neither
    `decay_on` nor `graph` at first: such a member is reused when today's settings match the
    ones it saved, the missing ones at the value the code then trained with, whatever the
    device; not when they differ, nor when its data does."""
    ingest_block0(home, tmp_path)
    train_member(home, 0, "bpr-0", CONFIG, progress=False)
    folder = home.model_dir(0, member_dir_name("bpr-0"))
    meta, model, data = io.read_metadata(folder), io.load(folder), load_block_data(home, 0)
    saved_train = {k: v for k, v in {**CONFIG.to_dict()["train"], "graph": "block"}.items() if k not in dropped}
    hashed = {k: v for k, v in saved_train.items() if k != "decay_on"}  # "batch" was not hashed
    run_config = {**meta["metadata"]["run_config"], "train": saved_train}
    earlier = {**meta["metadata"], "run_config": run_config, "fingerprint": _digest(data, hashed)}

    def status(train: dict) -> str:
        io.save(model, folder, earlier)
        config = RunConfig.from_dict({**CONFIG.to_dict(), "train": {**CONFIG.to_dict()["train"], **train}})
        return train_member(home, 0, "bpr-0", config, progress=False)["status"]

    assert status({"graph": "block", "device": "auto"}) == "reused"
    assert status({"graph": "seen"}) == "trained"  # trains LightGCNs on another graph
    earlier["fingerprint"] = "another data"
    assert status({"graph": "block"}) == "trained"


def test_members_trained_when_decay_on_all_meant_mean_losses_are_not_reused(home, tmp_path):
    """`decay_on="all"` acted against mean losses before it stepped on summed ones: a member
    saved then trained otherwise than today's "all" does, whichever way its hash was made."""
    ingest_block0(home, tmp_path)
    today = RunConfig.from_dict({**CONFIG.to_dict(), "train": {**CONFIG.to_dict()["train"], "decay_on": "all"}})
    train_member(home, 0, "bpr-0", today, progress=False)
    folder = home.model_dir(0, member_dir_name("bpr-0"))
    meta, model, data = io.read_metadata(folder), io.load(folder), load_block_data(home, 0)
    saved_train = today.to_dict()["train"]
    without_device = {k: v for k, v in saved_train.items() if k != "device"}
    for fingerprint in (_digest(data, saved_train), _digest(data, without_device)):  # earlier, then 2026-11-24 morning
        io.save(model, folder, {**meta["metadata"], "fingerprint": fingerprint})
        assert train_member(home, 0, "bpr-0", today, progress=False)["status"] == "trained"


def test_two_runs_training_one_member_take_turns_and_the_second_reuses(home, tmp_path, monkeypatch):
    """Block 0's member folders are one per home, shared by every run key: a second run that
    reaches a member while the first is still training it waits for the first's model instead
    of training its own into the same folder (interleaved saves would mix two models' files)."""
    ingest_block0(home, tmp_path)
    first_training, release = hold_first_training(monkeypatch)
    rows = {}
    runs = {key: threading.Thread(target=lambda key=key: rows.setdefault(key, train_member(home, 0, "bpr-0", CONFIG, progress=False)))
            for key in ("first", "second")}
    runs["first"].start()
    assert first_training.wait(30)
    runs["second"].start()
    runs["second"].join(0.5)  # without the folder's lock it would train its own member meanwhile
    assert runs["second"].is_alive()
    release.set()
    for run in runs.values():
        run.join(60)
    assert (rows["first"]["status"], rows["second"]["status"]) == ("trained", "reused")
    assert not list(home.locks.glob("teacher-*"))  # one-off lock files are removed


def test_lists_a_finished_stage_recorded_are_not_written_again(home, tmp_path, monkeypatch):
    """Another run key reaching block 0's ensemble gets the recorded lists as they are: a
    re-scoring (on another device, say) could break ties otherwise, under the runs that
    distilled from them. Nor are the members' weights loaded for them."""
    ingest_block0(home, tmp_path)
    first = train_teacher(home, 0, CONFIG, progress=False)
    lists = home.model_dir(0, "teacher")
    stages.run_stage(home, 0, "base-ensemble", lambda: {"topk_dir": home.relative(lists)}, "some-run")
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in lists.iterdir()}
    monkeypatch.setattr(io, "load", lambda *a, **kw: pytest.fail("loaded a member's weights"))
    again = train_teacher(home, 0, CONFIG, progress=False)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in lists.iterdir()} == before
    assert (again["ensemble"], again["topk"]) == (first["ensemble"], first["topk"])
    assert [row["status"] for row in again["members"]] == ["reused", "reused"]


def test_a_second_run_key_with_other_settings_waits_for_the_first_then_is_refused(home, tmp_path, monkeypatch):
    """Two first runs of a home reaching block 0's same member at once, under other `train`
    settings: the second waits for the first's stage to be recorded and is then refused (the
    member is shared), rather than training its own over the first's."""
    ingest_block0(home, tmp_path)
    sets = ["teacher.members=[\"bpr:8\"]", "train.max_epochs=2", "train.batch_size=256", "train.device=cpu"]
    first_training, release = hold_first_training(monkeypatch)
    errors = {}

    def member_stage(key, lr):
        run = Run(home, "ccd", RunConfig.load(None, [*sets, f"train.lr={lr}"]), key, progress=False)
        try:
            _base_stage(run, "teacher-bpr-0")
        except BadInputError as exc:
            errors[key] = str(exc)

    runs = {"a": threading.Thread(target=member_stage, args=("a", 0.01)),
            "b": threading.Thread(target=member_stage, args=("b", 0.02))}
    runs["a"].start()
    assert first_training.wait(30)
    runs["b"].start()
    runs["b"].join(0.5)
    assert runs["b"].is_alive()  # waiting on the member's folder
    release.set()
    for run in runs.values():
        run.join(60)
    assert "a" not in errors and "trained by run key 'a' with other settings (differing: train.lr)" in errors["b"]
    assert io.read_metadata(home.model_dir(0, "teacher-bpr-0"))["metadata"]["run_config"]["train"]["lr"] == 0.01


def test_a_second_run_key_with_other_settings_is_refused_on_any_member_while_the_first_trains(home, tmp_path, monkeypatch):
    """The folder locks only order two keys on one member; on different members both would pass
    a check of finished stages and leave a teacher of mixed settings. The first key to reach
    block 0's teacher claims it, so the second is refused at once."""
    ingest_block0(home, tmp_path)
    sets = ["teacher.members=[\"bpr:8\",\"lightgcn:8\"]", "train.max_epochs=2", "train.batch_size=256", "train.device=cpu"]
    first_training, release = hold_first_training(monkeypatch)
    first = Run(home, "ccd", RunConfig.load(None, [*sets, "train.lr=0.01"]), "a", progress=False)
    thread = threading.Thread(target=lambda: _base_stage(first, "teacher-bpr-0"))
    thread.start()
    try:
        assert first_training.wait(30)
        second = Run(home, "ccd", RunConfig.load(None, [*sets, "train.lr=0.02"]), "b", progress=False)
        with pytest.raises(BadInputError, match=r"was started \(claim: .*block=0-teacher.json\) by run key 'a' .*train\.lr"):
            _base_stage(second, "teacher-lightgcn-0")
        assert not home.model_dir(0, "teacher-lightgcn-0").exists()
    finally:
        release.set()
        thread.join(60)
    assert stages.get(home, 0, "base-teacher-bpr-0", "a").status == "done"


def _base_stage(run: Run, name: str) -> dict:
    """Block 0's stage `name` (a `block_plan` name) as the stream runs it."""
    layout, work = stage_work(run, 0, name)
    return run.stage(layout, 0, name, work)


def hold_first_training(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Hold the first member training of the test inside it: `first_training` is set once it
    started, and it goes on once `release` is set; later trainings run straight through."""
    first_training, release = threading.Event(), threading.Event()
    real_train = teacher._train_member

    def held_first_time(*args, **kwargs):
        if not first_training.is_set():
            first_training.set()
            assert release.wait(30)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(teacher, "_train_member", held_first_time)
    return first_training, release


def ingest_block0(home, tmp_path) -> None:
    path = tmp_path / "block_0.csv"
    make_block().to_csv(path, index=False)
    ingest_block(home, path, 0, LakeConfig())


def test_the_ensemble_is_built_from_the_weights_its_rows_describe(home, tmp_path, monkeypatch):
    """A member is loaded for the ensemble only after every member's row is made: if another run
    trained one again meanwhile, the lists would not be the ones the rows report."""
    ingest_block0(home, tmp_path)
    real = teacher._fit_or_reuse

    def then_another_run_retrains(home_, block, name, *args):
        row = real(home_, block, name, *args)
        if name == "bpr-1":  # the last member; another run retrains bpr-0 before the ensemble
            folder = home.model_dir(0, member_dir_name("bpr-0"))
            model = io.load(folder)
            with torch.no_grad():
                model.user_emb.add_(1.0)
            io.save(model, folder, io.read_metadata(folder)["metadata"])
        return row

    monkeypatch.setattr(teacher, "_fit_or_reuse", then_another_run_retrains)
    with pytest.raises(BadInputError, match="bpr-0 of block 0 was trained again by another run meanwhile"):
        train_teacher(home, 0, CONFIG, progress=False)
    assert not (home.model_dir(0, "teacher") / "teacher.json").exists()
