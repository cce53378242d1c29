"""`ccd stream` end to end on the embedded sample stream (tiny dimensions and epochs): CCD over
all six blocks, the baselines on three, resume after a stop between stages, and a retrain of
one block under a new run key that leaves earlier results alone."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import json
import shutil
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from ccd.cli import main
from ccd.config import RunConfig
from ccd.continual import loop
from ccd.continual.exclusion import cap, list_pairs, top_pairs
from ccd.continual.loop import Run, block_seed, run_stream
from ccd.ensemble import USER_TOPK, read_topk
from ccd.errors import BadInputError, CcdError
from ccd.evaluate import UserItemCSR
from ccd.home import Home
from ccd.locking import file_lock
from ccd.registry import get, list_decisions, list_versions, load_artifact_path
from ccd.stages import list_stages

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
TINY = [
    "train.device=cpu", "train.max_epochs=3", "train.eval_batch_users=4096",
    "teacher.members=[\"bpr:8\",\"lightgcn:8\"]", "teacher.top_k=50",
    "distill.student_dim=4", "distill.n_uninteresting=20", "distill.n_uninteresting_users=10",
    "continual.update_epochs=2", "continual.update_batch_size=4096", "continual.lwckd_anchors=64",
    "continual.student_top=20", "continual.teacher_top=20", "continual.exclude_top=10", "continual.kd_batch_size=4096",
]
SETS = [arg for item in TINY for arg in ("--set", item)]


class Stop(Exception):
    """Raised by a callback to simulate a process stopped between two stages."""


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stream_run(tmp_path_factory, one_thread) -> tuple[Home, str]:
    """The sample stream ingested, then `ccd stream --method ccd --json` over its six blocks,
    once for the module; returns the home and what the command printed on stdout."""
    home = Home.resolve(tmp_path_factory.mktemp("stream") / "home")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["stream", "--data", str(SAMPLE), "--method", "ccd", "--home", str(home.root), "--json", *SETS])
    assert code == 0
    return home, out.getvalue()


@pytest.fixture
def ccd_home(stream_run) -> Home:
    return stream_run[0]


def copy_home(home: Home, tmp_path: Path) -> Home:
    shutil.copytree(home.root, tmp_path / "copy")
    return Home(tmp_path / "copy")


def test_ccd_stream_end_to_end(stream_run):
    home, stdout = stream_run
    result = json.loads(stdout)  # exactly one JSON object
    assert result == json.loads((home.reports / "stream" / "ccd" / "metrics.json").read_text())
    assert result["method"] == "ccd" and result["blocks"] == [0, 1, 2, 3, 4, 5]
    student, teacher = result["student"], result["teacher"]
    assert [b["block"] for b in student["blocks"]] == [0, 1, 2, 3, 4, 5]
    assert student["blocks"][0]["summary"] is None
    for side in (student, teacher):
        assert len(side["matrix"]) == 21  # (k, j) for every j <= k
        for row in side["blocks"][1:]:
            h = row["summary"]["recall@20"]
            assert 0 < h["H"] <= max(h["LA"], h["RA"])
    assert teacher["params"] > 3 * student["params"]
    assert (home.reports / "stream" / "ccd" / "hmean.png").read_bytes()[:4] == b"\x89PNG"
    # every stage of every block ran once, and D_k was registered and gated after each block
    stages = list_stages(home)
    assert all(s.status == "done" and s.attempts == 1 for s in stages)
    names = {(s.block, s.stage) for s in stages}
    assert {(3, "ccd-student-update"), (3, "ccd-teacher-bpr-0"), (3, "ccd-teacher-lightgcn-0"), (3, "ccd-ensemble"),
            (3, "ccd-distill"), (3, "ccd-evaluate"), (0, "base-student"), (5, "ccd-register")} <= names
    versions = list_versions(home, "student")
    assert [v.block for v in versions] == [0, 1, 2, 3, 4, 5] and all(v.method == "ccd" for v in versions)
    assert "h_recall@20" in versions[-1].metrics
    # each later student was gated against production re-scored on its own tests, so production moves on
    gated = [d for d in list_decisions(home, "student") if d.kind == "gate"]
    assert len(gated) == 6 and all("on the same tests" in d.reason for d in gated[1:])
    assert get(home, "student", "production").block > 0
    assert set(versions[-1].lineage["teacher_members"]) == {"bpr-0", "lightgcn-0"}
    assert (home.lake / "teacher" / "ccd" / "block=5" / "user_topk.parquet").exists()
    for name in ("student", "updated-student", "proxy-s", "proxy-p", "teacher-bpr-0"):
        assert (home.models / "ccd" / "block=5" / name / "model.json").exists()


def test_rerun_is_a_no_op_and_prints_the_table(ccd_home, tmp_path, capsys):
    home = copy_home(ccd_home, tmp_path)
    before = {str(p): p.stat().st_mtime_ns for p in home.models.rglob("*.safetensors")}
    assert main(["stream", "--method", "ccd", "--home", str(home.root), *SETS]) == 0
    out = capsys.readouterr().out
    assert "ccd over blocks 0..5" in out and "teacher_H" in out and "hmean.png" in out
    assert {str(p): p.stat().st_mtime_ns for p in home.models.rglob("*.safetensors")} == before
    assert all(s.attempts == 1 for s in list_stages(home))


def test_baselines_share_block_zero(ccd_home, tmp_path, capsys):
    home = copy_home(ccd_home, tmp_path)
    config = RunConfig.load(None, TINY)
    results = {m: run_stream(home, m, config, last_block=2, progress=False) for m in ("finetune", "retrain", "kd", "lwckd-student")}
    for method, result in results.items():
        assert [b["block"] for b in result["student"]["blocks"]] == [0, 1, 2]
        assert result["student"]["blocks"][2]["summary"]["recall@20"]["H"] > 0
        assert (result["teacher"] is not None) == (method == "kd")
    # block 0 (teacher, D_0, its evaluation) ran once for all methods
    base = [s for s in list_stages(home) if s.stage.startswith("base-")]
    assert base and all(s.attempts == 1 for s in base)
    d0 = results["finetune"]["student"]["matrix"][0]
    assert all(r["student"]["matrix"][0] == d0 for r in results.values())
    assert results["lwckd-student"]["files"]["plot_all"].endswith("hmean_all.png")
    assert (home.reports / "stream" / "hmean_all.png").read_bytes()[:4] == b"\x89PNG"
    # with CCD's report in the home, each baseline's run also gives CCD's lead over the ones so far
    lead = results["lwckd-student"]["ccd_lead"]
    assert set(lead) == {"finetune", "retrain", "kd", "lwckd-student"}
    ccd_h = {row["block"]: row["summary"]["recall@20"]["H"]
             for row in json.loads((home.reports / "stream" / "ccd" / "metrics.json").read_text())["student"]["blocks"]
             if row["summary"]}
    for method, points in lead.items():
        own = {row["block"]: row["summary"]["recall@20"]["H"] for row in results[method]["student"]["blocks"] if row["summary"]}
        assert [p["block"] for p in points] == sorted(own)
        assert all(p["lead"] == pytest.approx(ccd_h[p["block"]] - own[p["block"]]) for p in points)
    assert (home.reports / "stream" / "ccd_lead.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["stream", "--method", "kd", "--blocks", "3", "--home", str(home.root), *SETS]) == 0  # done: a re-read
    out = capsys.readouterr().out
    assert "lead over each baseline" in out and "lwckd-student" in out and "ccd_lead.png" in out
    assert len(list_versions(home, "student")) == 6  # baselines are not registered


def test_resume_after_a_stop_between_stages(ccd_home, tmp_path):
    """Stop right after block 1's first teacher member; the re-run redoes nothing finished and
    ends with the same numbers as the uninterrupted run."""
    home = Home.resolve(tmp_path / "fresh")  # the lake and catalog only, with an empty ledger
    shutil.copytree(ccd_home.lake, home.lake)
    shutil.copy(ccd_home.catalog_path, home.catalog_path)
    with duckdb.connect(str(home.catalog_path)) as con:
        con.execute("DELETE FROM stages")
    config = RunConfig.load(None, TINY)

    def stop_after_member(stage, info):
        if stage == "ccd-teacher-bpr-0" and info["block"] == 1 and info["event"] == "done":
            raise Stop

    with pytest.raises(Stop):
        run_stream(home, "ccd", config, last_block=1, progress=False, callback=stop_after_member)
    finished = {(s.block, s.stage): s for s in list_stages(home)}
    assert finished[(1, "ccd-teacher-bpr-0")].status == "done" and (1, "ccd-ensemble") not in finished
    member = home.models / "ccd" / "block=1" / "teacher-bpr-0" / "weights.safetensors"
    stamp = member.stat().st_mtime_ns

    events = []
    result = run_stream(home, "ccd", config, last_block=1, progress=False, callback=lambda s, i: events.append((i["block"], s, i["event"])))
    assert (1, "ccd-teacher-bpr-0", "skipped") in events and (1, "ccd-student-update", "skipped") in events
    assert (1, "ccd-ensemble", "done") in events
    assert member.stat().st_mtime_ns == stamp
    assert all(s.attempts == 1 for s in list_stages(home))
    original = json.loads((ccd_home.reports / "stream" / "ccd" / "metrics.json").read_text())
    expected = [r for r in original["student"]["matrix"] if r["trained"] <= 1]
    assert [r["recall@20"] for r in result["student"]["matrix"]] == pytest.approx([r["recall@20"] for r in expected], abs=1e-6)


def test_retrain_a_block_under_a_new_run_key(ccd_home, tmp_path):
    home = copy_home(ccd_home, tmp_path)
    config = RunConfig.load(None, TINY)
    earlier = {str(p): p.stat().st_mtime_ns for p in home.models.rglob("*") if p.is_file()}
    result = run_stream(home, "ccd", config, last_block=2, run_key="r1", from_block=2, progress=False)
    assert [b["block"] for b in result["student"]["blocks"]] == [0, 1, 2]
    after = {str(p): p.stat().st_mtime_ns for p in home.models.rglob("*") if p.is_file()}
    assert all(after[path] == stamp for path, stamp in earlier.items())  # nothing of the default run was touched
    new = sorted(p for p in after if p not in earlier)
    assert new and all("/block=2/run=r1/" in p for p in new)
    r1 = [s for s in list_stages(home, run_key="r1")]
    assert r1 and {s.block for s in r1} == {2}
    assert (home.reports / "stream" / "ccd" / "run=r1" / "metrics.json").exists()
    # the same key again without --from-block resumes where it started, not at block 0
    assert main(["stream", "--method", "ccd", "--home", str(home.root), "--run-key", "r1", "--blocks", "3", "--json", *SETS]) == 0
    assert {s.block for s in list_stages(home, run_key="r1")} == {2}


def test_a_retrain_is_compared_with_the_runs_under_its_own_key(ccd_home, tmp_path):
    """CCD's lead and the every-method plot of a retrain come from the methods run under its run
    key (its settings), never from the default runs' reports."""
    home = copy_home(ccd_home, tmp_path)
    config = RunConfig.load(None, TINY)
    run_stream(home, "finetune", config, last_block=2, progress=False)  # default runs: ccd and finetune
    default_plots = {p: p.read_bytes() for p in (home.reports / "stream").glob("*.png")}
    assert len(default_plots) == 2
    ccd = run_stream(home, "ccd", config, last_block=2, run_key="r1", from_block=2, progress=False)
    assert "ccd_lead" not in ccd and "plot_all" not in ccd["files"]  # nothing else under r1 yet
    finetune = run_stream(home, "finetune", config, last_block=2, run_key="r1", from_block=1, progress=False)
    h = lambda result, block: result["student"]["blocks"][block]["summary"]["recall@20"]["H"]
    [point] = [p for p in finetune["ccd_lead"]["finetune"] if p["block"] == 2]
    assert point["lead"] == pytest.approx(h(ccd, 2) - h(finetune, 2))
    assert finetune["files"]["plot_lead"] == str(home.reports / "stream" / "run=r1" / "ccd_lead.png")
    assert {p: p.read_bytes() for p in default_plots} == default_plots  # the default runs' plots untouched


def test_block_zero_teacher_is_shared_so_other_teacher_settings_are_refused_there(ccd_home, tmp_path, capsys):
    home = copy_home(ccd_home, tmp_path)
    # members' weights and the ensemble's lists (not teacher.json, the report of the last build)
    teacher = sorted(p for p in (home.models / "block=0").rglob("*")
                     if p.is_file() and "teacher" in str(p) and p.name != "teacher.json")
    earlier = [p.read_bytes() for p in teacher]
    argv = ["stream", "--method", "kd", "--home", str(home.root), "--blocks", "1", "--json", *SETS]
    assert main([*argv, "--run-key", "r2", "--set", "teacher.rank_exponent=0.5"]) == 2
    err = capsys.readouterr().err
    assert "trained by run key 'default'" in err and "teacher.rank_exponent" in err and "--from-block 1" in err
    # the same teacher settings under a new key reuse block 0's members as they are
    assert main([*argv, "--run-key", "r3", "--set", "distill.n_uninteresting=30"]) == 0
    capsys.readouterr()
    assert teacher and [p.read_bytes() for p in teacher] == earlier


def test_stream_selection_records_the_earlier_blocks_score(ccd_home, tmp_path):
    """`continual.select_on=stream`: a baseline student's epoch is chosen on the H of its block's
    and the earlier blocks' valid Recall@20, and the stage records both."""
    home = copy_home(ccd_home, tmp_path)
    config = RunConfig.load(None, [*TINY, "continual.select_on=stream"])
    run_stream(home, "finetune", config, last_block=1, run_key="stream-select", from_block=1, progress=False)
    [stage] = [s for s in list_stages(home, run_key="stream-select") if s.stage == "finetune-student"]
    valid = stage.outputs["train"]["valid"]
    new, earlier = valid["recall@20"], valid["earlier_recall@20"]
    assert valid["selection"] == pytest.approx(2 * new * earlier / (new + earlier))


def test_ccd_serves_students_chosen_on_the_stream_and_teachers_on_their_block(ccd_home):
    """Stream selection is the default: CCD's updated student (CL_k) and distilled student (D_k)
    record the earlier blocks' score they were chosen on; the teacher members keep the block's rule."""
    later = [s for s in list_stages(ccd_home) if s.block >= 1 and s.stage.startswith("ccd-")]
    students = [s for s in later if s.stage in ("ccd-student-update", "ccd-distill")]
    teachers = [s for s in later if s.stage.startswith("ccd-teacher-")]
    assert len(students) == 2 * 5 and teachers
    assert all("selection" in s.outputs["train"]["valid"] for s in students)
    assert not any("selection" in s.outputs["train"]["valid"] for s in teachers)


def test_selection_counts_block_zero_only_where_ra_does(ccd_home, tmp_path):
    home = copy_home(ccd_home, tmp_path)  # Run pins its settings
    with_base = Run(home, "ccd", RunConfig.load(None, TINY), progress=False)
    without = Run(home, "ccd", RunConfig.load(None, [*TINY, "continual.with_base_block=false"]), run_key="no-base", progress=False)
    assert set(with_base.validator(3).earlier_valid) == {0, 1, 2}
    assert set(without.validator(3).earlier_valid) == {1, 2}
    assert without.validator(1) is None  # nothing earlier that RA counts: the block's own rule


def test_ccd_can_distill_from_its_updated_student(ccd_home, tmp_path):
    """`continual.kd_init=updated`: D_k starts from CCD's CL_k, so with a learning rate of ~0
    the served student is the updated one; the other starts stay as they were."""
    home = copy_home(ccd_home, tmp_path)
    config = RunConfig.load(None, [*TINY, "continual.kd_init=updated", "train.lr=1e-12", "train.max_epochs=1"])
    run_stream(home, "ccd", config, last_block=1, run_key="from-cl", from_block=1, progress=False)
    run = Run(home, "ccd", config, run_key="from-cl", progress=False)
    served = run.load(run.student_path(1))
    updated = run.load(run.outputs(run.layout, 1, "student-update")["updated_student"])
    assert torch.allclose(served.user_emb, updated.user_emb, atol=1e-6)
    assert torch.allclose(served.item_emb, updated.item_emb, atol=1e-6)
    previous = run.load(run.student_path(0))
    assert not torch.allclose(served.user_emb[: previous.n_users], previous.user_emb, atol=1e-3)


@pytest.mark.parametrize("kd_init", ["previous", "updated"])
def test_distill_start_is_cl_k_only_for_ccd_when_asked(ccd_home, tmp_path, kd_init):
    home = copy_home(ccd_home, tmp_path)  # Run pins its settings under the key
    config = RunConfig.load(None, [*TINY, f"continual.kd_init={kd_init}"])
    ccd, kd = (Run(home, method, config, run_key=f"start-{kd_init}", progress=False) for method in ("ccd", "kd"))
    updated = ccd.outputs(ccd.layout, 2, "student-update")["updated_student"]
    assert ccd.distill_start(2) == (updated if kd_init == "updated" else ccd.student_path(1))
    assert kd.distill_start(1) == kd.student_path(0)  # KD has no CL_k


def test_stage_4_never_draws_the_teachers_or_ccds_sources_top_items_as_negatives(ccd_home, tmp_path, monkeypatch):
    """Spec 2.2's exclusion lists: old users' top items in the block's teacher lists (which RRD
    pulls up) and under S_{k-1}, P_{k-1}, CL_k (block k's train left out) are never negatives."""
    home = copy_home(ccd_home, tmp_path)
    run = Run(home, "ccd", RunConfig.load(None, TINY), run_key="spy", progress=False)
    negatives = run.kd_negatives(2)
    old = run.data(1).n_users
    assert run.kd_negatives(0) is None and negatives[:, 0].max() < old  # old users only
    ids, _ = read_topk(home.root / run.topk_dir(2) / USER_TOPK)
    teacher = set(map(tuple, list_pairs(ids, cap(10, run.data(2).n_items), np.arange(old))))
    pairs = set(map(tuple, negatives))
    assert teacher < pairs  # the sources add their own top items
    assert not pairs & set(map(tuple, run.data(2).train))

    seen = {}
    original = loop.distill_block
    monkeypatch.setattr(loop, "distill_block", lambda *a, **kw: seen.update(kw) or original(*a, **kw))
    loop.distilled_stage(run, run.layout, 2)
    assert np.array_equal(seen["exclude_negatives"], negatives)

    seen.clear()
    legacy = Run(home, "ccd", RunConfig.load(None, [*TINY, "continual.kd_exclude_top=false"]), run_key="uniform", progress=False)
    loop.distilled_stage(legacy, legacy.layout, 2)
    assert seen["exclude_negatives"] is None
    assert run.kd_negatives(2, settings=legacy.config.continual) is None  # a benchmark's --set overrides the pin
    fewer = run.kd_negatives(2, settings=dataclasses.replace(run.config.continual, exclude_top=1))
    assert 0 < len(fewer) < len(negatives)  # ...exclude_top included
    no_proxies = run.kd_negatives(2, settings=dataclasses.replace(run.config.continual, kd_exclusion_proxies=False))
    updated = run.load(run.outputs(run.layout, 2, "student-update")["updated_student"]).eval()
    fresh = UserItemCSR.from_pairs(run.data(2).train, run.data(2).n_users)
    student = top_pairs(updated.score, np.arange(old), cap(10, run.data(2).n_items), fresh, 64)
    assert set(map(tuple, no_proxies)) == teacher | set(map(tuple, student)) < pairs  # the teacher's and CL_k's lists alone


def test_stage_4_draws_with_a_seed_of_its_block_unless_pinned_before(ccd_home, tmp_path, monkeypatch):
    home = copy_home(ccd_home, tmp_path)
    seeds = []
    original = loop.distill_block
    monkeypatch.setattr(loop, "distill_block", lambda *a, **kw: seeds.append(a[2].distill.seed) or original(*a, **kw))
    for key, setting in (("per-block", "true"), ("one-seed", "false")):
        config = RunConfig.load(None, [*TINY, "distill.seed=7", f"continual.kd_seed_per_block={setting}"])
        run = Run(home, "ccd", config, run_key=key, progress=False)
        for block in (1, 2):
            loop.distilled_stage(run, run.layout, block)
    assert seeds == [block_seed(7, 1), block_seed(7, 2), 7, 7]
    assert loop.seeded_for_block(config, 0).distill.seed == 7  # block 0's shared student: distill.seed


def test_a_stream_seed_moves_every_later_training_and_leaves_block_0_alone():
    repeat = RunConfig.load(None, [*TINY, "distill.seed=7", "continual.stream_seed=2"])
    assert loop.stream_seed(7, RunConfig.load(None, [*TINY])) == 7  # stream 0: the seeds as before
    assert loop.seeded_for_block(repeat, 1).distill.seed == block_seed(7 + 2 * loop.STREAM_SEED_STRIDE, 1)
    assert loop.seeded_for_block(repeat, 0).distill.seed == 7  # block 0 is shared by every stream
    one_seed = repeat.replace(continual=dataclasses.replace(repeat.continual, kd_seed_per_block=False))
    assert loop.seeded_for_block(one_seed, 3).distill.seed == 7 + 2 * loop.STREAM_SEED_STRIDE
    with pytest.raises(BadInputError, match="stream_seed must be below"):
        RunConfig.load(None, [f"continual.stream_seed={loop.STREAM_SEED_STRIDE}"])


def test_a_repeated_stream_draws_its_members_and_students_anew(ccd_home, tmp_path, monkeypatch):
    home = copy_home(ccd_home, tmp_path)
    seeds: dict[str, list[int]] = {}
    for name in ("update_member", "update_student", "finetune_student"):
        def spy(*args, _name=name, _original=getattr(loop, name), **kwargs):
            seeds.setdefault(_name, []).append(inspect.signature(_original).bind(*args, **kwargs).arguments["seed"])
            return _original(*args, **kwargs)
        monkeypatch.setattr(loop, name, spy)
    retrain = loop.retrain_student
    monkeypatch.setattr(loop, "retrain_student", lambda data, config, *a, **kw:
                        seeds.setdefault("retrain_student", []).append(config.distill.seed) or retrain(data, config, *a, **kw))
    for stream in (0, 1):
        config = RunConfig.load(None, [*TINY, f"continual.stream_seed={stream}"])
        run = Run(home, "ccd", config, run_key=f"stream-{stream}", progress=False)
        loop.student_update_stage(run, 1)
        loop.member_stage(run, 1, run.members[0], True)
        for method in ("finetune", "retrain"):
            loop.baseline_student(Run(home, method, config, run_key=f"stream-{stream}", progress=False), 1)
    member_seed = run.load(run.member_state(0, run.members[0])).config.seed  # block 0's, shared
    step = loop.STREAM_SEED_STRIDE * 1000  # a stream further on, after `block_seed`
    assert seeds["update_member"] == [block_seed(member_seed, 1), block_seed(member_seed, 1) + step]
    assert seeds["update_student"] == [block_seed(0, 1), block_seed(0, 1) + step]
    assert seeds["finetune_student"] == [block_seed(0, 1), block_seed(0, 1) + step]
    assert seeds["retrain_student"] == [0, loop.STREAM_SEED_STRIDE]  # its initial tables too


def test_a_stream_started_past_unfinished_blocks_fails_before_any_work(ccd_home, tmp_path):
    home = copy_home(ccd_home, tmp_path)  # CCD finished every block; the retrain baseline none past 0
    before = list_stages(home)
    with pytest.raises(CcdError, match="stage retrain-evaluate of block 1 has not finished"):
        run_stream(home, "retrain", RunConfig.load(None, TINY), last_block=3, from_block=3, progress=False)
    assert list_stages(home) == before


def test_registration_prunes_old_copies_when_asked(ccd_home, tmp_path):
    """`registry.keep_copies`: after the register stage only the kept versions have copies."""
    home = copy_home(ccd_home, tmp_path)
    before = list_versions(home, "student")
    assert len(before) == 6 and all(v.path(home).exists() for v in before)
    run = Run(home, "ccd", RunConfig.load(None, [*TINY, "registry.keep_copies=1"]), progress=False)
    out = loop.register_stage(run, 5)  # the version is already there: registering again only prunes
    after = {v.version: v for v in list_versions(home, "student")}
    assert out["pruned"] and out["version"] not in out["pruned"] and len(after) == 6
    for number, version in after.items():
        assert (number in out["pruned"]) == (version.pruned_at is not None) == (not version.path(home).exists())
    assert load_artifact_path(home, "student").exists()  # production keeps its copy
    assert loop.register_stage(Run(home, "ccd", RunConfig.load(None, TINY), progress=False), 5)["pruned"] == []


def test_the_report_lists_the_registered_blocks_only(ccd_home, tmp_path):
    """A flow run that stops at evaluation (`--until evaluate`) registers nothing; its report
    must still be written."""
    home = copy_home(ccd_home, tmp_path)
    with duckdb.connect(str(home.catalog_path)) as con:
        con.execute("DELETE FROM stages WHERE stage = 'ccd-register' AND block = 5")
    result = loop.report(Run(home, "ccd", RunConfig.load(None, TINY), progress=False), 5)
    assert [d["version"] for d in result["registry"]] == [1, 2, 3, 4, 5]


def test_reports_of_one_run_key_are_written_one_at_a_time(ccd_home, tmp_path, monkeypatch):
    """Two methods finishing at once would each draw the comparison plots from the other's
    previous metrics.json: a report reads the others and writes its own only once the report
    under way is written."""
    home = copy_home(ccd_home, tmp_path)
    run = Run(home, "ccd", RunConfig.load(None, TINY), progress=False)
    read_at, real_reports = [], loop._stream_reports
    monkeypatch.setattr(loop, "_stream_reports", lambda *args: read_at.append(time.time_ns()) or real_reports(*args))
    written = []
    with file_lock(home, "stream-report-default"):
        writer = threading.Thread(target=lambda: written.append(loop.write_report(run, 5)))
        writer.start()
        writer.join(1.0)
        released = time.time_ns()
    writer.join(60)
    assert written and written[0]["blocks"] == [0, 1, 2, 3, 4, 5]
    assert read_at and min(read_at) >= released  # the other reports were read after the lock was let go
    assert (home.reports / "stream" / "ccd" / "metrics.json").stat().st_mtime_ns >= released


@pytest.mark.parametrize("settings", [
    ["continual.teacher_update=plain"],
    ["continual.lwckd_weight=0", "continual.teacher_replay_weight=0", "continual.teacher_exclusion_lists=false"],
])
def test_a_plain_teacher_update_gives_ccd_the_kd_baselines_members(ccd_home, tmp_path, settings):
    """`continual.teacher_update=plain`, or every collaborative term off (the exclusion lists
    too, the previous teacher's included): CCD's members update with BPR alone, so from the
    same start and seed they are KD's, weight for weight."""
    home = copy_home(ccd_home, tmp_path)
    config = RunConfig.load(None, [*TINY, *settings])
    weights = []
    for method in ("ccd", "kd"):
        run = Run(home, method, config, run_key="plain", progress=False)
        _, work = loop.stage_work(run, 1, f"teacher-{run.members[0]}")
        weights.append(run.load(work()["path"]).state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_a_member_stage_reads_only_the_sources_and_lists_its_settings_use(ccd_home, tmp_path, monkeypatch):
    """With the replay off and the proxies' lists off, S and P are never loaded; with the
    exclusion lists off, the previous teacher's lists are never read either."""
    home = copy_home(ccd_home, tmp_path)
    given = []
    monkeypatch.setattr(loop, "update_member", lambda *a, **kw: given.append(a) or pytest.fail("stop after the call"))
    default = Run(home, "ccd", RunConfig.load(None, TINY), progress=False)
    with pytest.raises(pytest.fail.Exception, match="stop after the call"):
        loop.member_stage(default, 2, default.members[0], collaborative=True)
    assert len(given[-1][4].proxies) == 2 and given[-1][6] is not None  # the defaults use both
    monkeypatch.setattr(Run, "proxies", lambda *a: pytest.fail("loaded the proxies"))
    for key, extra, protected in (("proxies", "continual.teacher_exclusion_proxies=false", True),
                                  ("lists", "continual.teacher_exclusion_lists=false", False)):
        config = RunConfig.load(None, [*TINY, "continual.teacher_replay_weight=0", extra])
        run = Run(home, "ccd", config, run_key=key, progress=False)
        if not protected:
            monkeypatch.setattr(Run, "protected", lambda *a: pytest.fail("read the previous teacher's lists"))
        with pytest.raises(pytest.fail.Exception, match="stop after the call"):
            loop.member_stage(run, 2, run.members[0], collaborative=True)
        sources, protected_pairs = given[-1][4], given[-1][6]
        assert sources.proxies == [] and sources.student is not None
        assert (protected_pairs is not None) == protected


def test_the_previous_teachers_lists_are_read_once_per_block(ccd_home, tmp_path, monkeypatch):
    """The student update and every member exclude the same old lists: one read per block."""
    home = copy_home(ccd_home, tmp_path)
    reads = []
    monkeypatch.setattr(loop, "read_topk", lambda path: reads.append(path) or read_topk(path))
    run = Run(home, "ccd", RunConfig.load(None, TINY), progress=False)
    first = run.protected(2)
    assert run.protected(2) is first and len(reads) == 1
    assert first.shape[1] == 2 and set(first[:, 0]) <= set(range(run.data(1).n_users))
    run.protected(3)
    assert len(reads) == 2 and reads[1] != reads[0]


def test_anchored_members_start_from_bpr_only_anchors_that_are_kds_members(ccd_home, tmp_path, monkeypatch):
    """`continual.teacher_update=anchored`: each block's anchors are KD's members weight for
    weight, and the served member of block k is a collaborative update of the anchor after k-1
    (block 1's, from the base member, is the collaborative run's own)."""
    home = copy_home(ccd_home, tmp_path)
    starts = []  # (collaborative, start weights) of every member update
    update = loop.update_member

    def recorded(member, data, previous_train, config, sources=None, collaborative=True, *args, **kwargs):
        starts.append((collaborative, member.state_dict()))
        return update(member, data, previous_train, config, sources, collaborative, *args, **kwargs)

    monkeypatch.setattr(loop, "update_member", recorded)
    anchored = RunConfig.load(None, [*TINY, "continual.teacher_update=anchored"])
    run_stream(home, "ccd", anchored, last_block=2, run_key="anchored", from_block=1, progress=False)
    run_stream(home, "kd", RunConfig.load(None, TINY), last_block=2, run_key="kd", from_block=1, progress=False)
    ccd, kd = Run(home, "ccd", anchored, "anchored", False), Run(home, "kd", RunConfig.load(None, TINY), "kd", False)
    default = Run(home, "ccd", RunConfig.load(None, TINY), progress=False)
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    for name in ccd.members:
        for block in (1, 2):
            assert same(ccd.load(ccd.member_state(block, name)).state_dict(), kd.load(kd.member_path(block, name)).state_dict())
        assert same(ccd.load(ccd.member_path(1, name)).state_dict(), default.load(default.member_path(1, name)).state_dict())
        assert not same(ccd.load(ccd.member_path(2, name)).state_dict(), default.load(default.member_path(2, name)).state_dict())
    anchor_1 = [ccd.load(ccd.member_state(1, name)).state_dict() for name in ccd.members]
    collaborative_starts = [weights for collaborative, weights in starts if collaborative]
    assert len(collaborative_starts) == 2 * len(ccd.members)  # blocks 1 and 2 of the anchored run
    assert all(same(start, anchor) for start, anchor in zip(collaborative_starts[len(ccd.members):], anchor_1))
    assert ("student-update", *(f"anchor-{name}" for name in ccd.members)) == loop.block_plan(2, "ccd", ccd.members, True)[0]
    # a retrain that switches to anchored members mid-stream has no anchor to start from: refused before any work
    with pytest.raises(CcdError, match="ccd-anchor-.* of block 1 has not finished"):
        run_stream(home, "ccd", anchored, last_block=2, run_key="switched", from_block=2, progress=False)
    assert not list_stages(home, run_key="switched")


@pytest.mark.parametrize("bad", [["--set", "continual.teacher_update=bogus"], ["--blocks", "0"]])
def test_bad_stream_settings_fail_in_one_line_before_the_home_is_made(tmp_path, capsys, bad):
    home = tmp_path / "home"
    assert main(["stream", "--data", str(SAMPLE), "--method", "ccd", "--home", str(home), *bad]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err
    assert not home.exists()
