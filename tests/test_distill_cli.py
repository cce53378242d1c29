"""`ccd distill`: from train-teacher's ensemble (or one saved model) to a saved, compared student."""

from __future__ import annotations

import argparse
import json
import sys

import pandas as pd
import pytest
import torch

from ccd.cli import main
from ccd.cli.common import show_progress
from ccd.config import LakeConfig, RunConfig
from ccd.distill.run import load_teacher
from ccd.home import Home
from ccd.lake.ingest import ingest_block
from ccd.models import io as model_io
from planted import planted_block, single_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = ["--set", "train.batch_size=256", "--set", "train.lr=0.02", "--set", "train.device=cpu"]
SMALL_SETS = ["--set", "distill.top_n=20", "--set", "distill.n_interesting=5", "--set", "distill.n_uninteresting=10", "--set", "distill.n_interesting_users=5",
              "--set", "distill.n_uninteresting_users=10", "--set", "distill.n_experts=4"]


@pytest.fixture(scope="module")
def home_with_teacher(tmp_path_factory):
    """One ingested planted block with a trained 2-member teacher, shared by the module's tests."""
    torch.set_num_threads(1)  # restored by the single_thread fixture of the first test
    tmp_path = tmp_path_factory.mktemp("distill-cli")
    home = Home.resolve(tmp_path / "home")
    data = planted_block()
    frames = []
    for split in ("train", "valid", "test"):
        pairs = getattr(data, split)
        frames.append(pd.DataFrame({"user_id": pairs[:, 0], "item_id": pairs[:, 1], "split": split}))
    frame = pd.concat(frames, ignore_index=True)
    frame["timestamp"] = 1_600_000_000 + pd.RangeIndex(len(frame))
    path = tmp_path / "block_0.parquet"
    frame.to_parquet(path, index=False)
    ingest_block(home, path, 0, LakeConfig())
    argv = ["train-teacher", "--block", "0", "--home", str(home.root), "--members", "bpr:16,lightgcn:16", "--epochs", "4",
            "--set", "teacher.top_k=20", *FAST, "--json"]
    assert main(argv) == 0
    return home


def _distill(home, capsys, *extra) -> tuple[int, dict | None, str]:
    code = main(["distill", "--block", "0", "--home", str(home.root), "--epochs", "3", *FAST, *SMALL_SETS, *extra])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and "--json" in extra else None), out + err


def test_distill_from_the_block_ensemble(home_with_teacher, capsys):
    home = home_with_teacher
    code, report, _ = _distill(home, capsys, "--method", "de-rrd-ir", "--dim", "4", "--set", "distill.de_member=lightgcn-0", "--json")
    assert code == 0
    student, teacher = report["student"], report["teacher"]
    assert (student["kind"], student["dim"], teacher["kind"], teacher["dim"]) == ("bpr", 4, "ensemble", 16)
    # BPR-MF student vs BPR + LightGCN members (both (users + items) x 16).
    assert student["params"] * 8 == teacher["params"]
    assert report["ratio"]["params"] == pytest.approx(0.125)
    assert student["latency_ms"] > 0 and teacher["latency_ms"] > 0
    assert 0 < student["test_recall@20"] <= 1 and teacher["test_recall@20"] > 0.3
    saved = model_io.load(home.model_dir(0, "student-de-rrd-ir"))
    assert saved.dim == 4 and report["saved"].endswith("student-de-rrd-ir")
    meta = model_io.read_metadata(home.model_dir(0, "student-de-rrd-ir"))["metadata"]
    assert meta["method"] == "de-rrd-ir" and meta["run_config"]["distill"]["de_member"] == "lightgcn-0"
    chosen = load_teacher(home.model_dir(0, "teacher"), RunConfig.load(None, ["distill.de_member=lightgcn-0"]), "cpu")
    assert chosen.representations.kind == "lightgcn"  # DE's member, not the first (bpr-0)


def test_distill_from_one_saved_model_and_table_output(home_with_teacher, capsys):
    home = home_with_teacher
    code, _, text = _distill(home, capsys, "--method", "rrd", "--teacher", str(home.model_dir(0, "teacher-lightgcn-0")))
    assert code == 0
    assert "student / teacher: params 0.125" in text  # default dim: a tenth of 16, rounded: 2
    assert "lightgcn" in text and "saved to" in text


def test_distill_errors_are_one_line(home_with_teacher, capsys):
    code, _, text = _distill(home_with_teacher, capsys, "--method", "de", "--set", "distill.de_member=vae-9")
    assert code == 2 and "de_member 'vae-9' is not a teacher member" in text and "Traceback" not in text
    code, _, text = _distill(home_with_teacher, capsys, "--teacher", str(home_with_teacher.root / "nowhere"))
    assert code == 2 and "no teacher in" in text
    code, _, text = _distill(home_with_teacher, capsys, "--method", "rrd", "--set", "distill.n_interesting=50")
    assert code == 2 and "fewer than distill.n_interesting=50" in text
    code, _, text = _distill(home_with_teacher, capsys, "--method", "rrd", "--set", "distill.n_uninteresting=45")
    assert code == 2 and "fewer than distill.n_uninteresting=45: lower distill.top_n" in text


@pytest.mark.parametrize("json_mode, terminal, shown", [(False, False, True), (True, False, False), (True, True, True)])
def test_progress_bars_with_json_only_on_a_terminal(monkeypatch, json_mode, terminal, shown):
    """stdout keeps its one JSON object either way; bars go to stderr, where a person watches."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal, raising=False)
    assert show_progress(argparse.Namespace(json=json_mode)) is shown


def test_the_ensemble_is_rebuilt_with_the_exponent_its_lists_were_written_with(home_with_teacher):
    """`ccd distill` reads the teacher's lists and re-ranks with its members: both must be the
    same ensemble whatever `teacher.rank_exponent` the distill command is given."""
    folder = home_with_teacher.model_dir(0, "teacher")
    built = json.loads((folder / "teacher.json").read_text())
    assert built["rank_exponent"] == 0.05
    other = RunConfig.load(None, ["teacher.rank_exponent=0.5"])
    assert load_teacher(folder, other, "cpu").scorer.exponent == 0.05
