"""The CiteULike DE-RRD benchmark resumes a stopped run exactly where it stopped
(`bench/bench_derrd_citeulike.py`: its runs of hundreds of epochs outlast a CPU session)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ccd.datasets.citeulike import loo_from_frame
from ccd.models import BPRConfig, BPRMF
from planted import single_thread  # noqa: F401 (fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_derrd_citeulike as bench  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = ["distill.top_n=20", "distill.n_interesting=5", "distill.n_uninteresting=5", "distill.n_interesting_users=3",
         "distill.n_uninteresting_users=3", "distill.n_experts=3"]


class Stopped(Exception):
    """Stands for a process killed after an epoch's checkpoint was written."""


def stopping_after(epoch: int):
    """`save_checkpoint` that saves, then stops the run after `epoch`."""
    save = bench.save_checkpoint

    def save_then_stop(path, loop, *rest):
        save(path, loop, *rest)
        if loop["epoch"] == epoch:
            raise Stopped

    return save_then_stop


def tiny_loo():
    rng = np.random.default_rng(0)
    rows = []
    for user in range(40):
        items = rng.choice(80, size=10, replace=False)
        rows += [(user, int(i), "train") for i in items[:8]] + [(user, int(items[8]), "valid"), (user, int(items[9]), "test")]
    return loo_from_frame(pd.DataFrame(rows, columns=["user_id", "item_id", "split"]), n_candidates=20)


def run(out: Path, teacher: BPRMF, stop_after: int | None, monkeypatch) -> tuple[dict, list[int]]:
    """The benchmark's result, and the epochs its last (resumed) call trained."""
    args = argparse.Namespace(seed=0, split_seed=0, max_epochs=6, patience=20, overrides=SMALL, teacher_dim=16, student_dim=4)
    if stop_after is not None:
        with monkeypatch.context() as patch:
            patch.setattr(bench, "save_checkpoint", stopping_after(stop_after))
            with pytest.raises(Stopped):
                bench.run_method("de-rrd-ir", tiny_loo(), teacher, out, args, torch.device("cpu"))
        assert (out / "de-rrd-ir.checkpoint.pt").exists()
    trained, save = [], bench.save_checkpoint
    with monkeypatch.context() as patch:
        patch.setattr(bench, "save_checkpoint", lambda path, loop, *rest: trained.append(loop["epoch"]) or save(path, loop, *rest))
        bench.run_method("de-rrd-ir", tiny_loo(), teacher, out, args, torch.device("cpu"))
    assert not (out / "de-rrd-ir.checkpoint.pt").exists()  # removed once the result is written
    return json.loads((out / "de-rrd-ir.json").read_text()), trained


def test_a_stopped_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    data = tiny_loo()
    teacher = BPRMF(BPRConfig(dim=16, seed=1), data.n_users, data.n_items)
    straight, all_epochs = run(tmp_path / "straight", teacher, None, monkeypatch)
    resumed, after_stop = run(tmp_path / "resumed", teacher, 3, monkeypatch)
    assert all_epochs == [1, 2, 3, 4, 5, 6] and after_stop == [4, 5, 6]  # resumed, not restarted
    assert resumed["epochs"] == straight["epochs"] == 6
    assert resumed["best_epochs"] == straight["best_epochs"]
    assert resumed["test"] == straight["test"]


def test_a_checkpoint_of_other_settings_is_refused(tmp_path, monkeypatch):
    data = tiny_loo()
    teacher = BPRMF(BPRConfig(dim=16, seed=1), data.n_users, data.n_items)
    args = argparse.Namespace(seed=0, split_seed=0, max_epochs=6, patience=20, overrides=SMALL, teacher_dim=16, student_dim=4)
    with monkeypatch.context() as patch:
        patch.setattr(bench, "save_checkpoint", stopping_after(1))
        with pytest.raises(Stopped):
            bench.run_method("de-rrd-ir", data, teacher, tmp_path, args, torch.device("cpu"))
    args.seed = 1
    with pytest.raises(SystemExit, match="other settings"):
        bench.run_method("de-rrd-ir", data, teacher, tmp_path, args, torch.device("cpu"))
