"""`ccd train-teacher`: members trained and saved, ensemble top-K written, re-runs reuse members."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from ccd import stages
from ccd.cli import main
from ccd.config import LakeConfig
from ccd.ensemble import read_topk
from ccd.lake.ingest import ingest_block
from ccd.models import io as model_io
from planted import planted_block, single_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

MEMBERS = "bpr:8x2,lightgcn:8,vae:8"


@pytest.fixture
def home_with_block(home, tmp_path):
    data = planted_block()
    frames = []
    for split in ("train", "valid", "test"):
        pairs = getattr(data, split)
        frames.append(pd.DataFrame({"user_id": [f"u{u}" for u in pairs[:, 0]], "item_id": [f"i{i}" for i in pairs[:, 1]], "split": split}))
    frame = pd.concat(frames, ignore_index=True)
    frame["timestamp"] = 1_600_000_000 + pd.RangeIndex(len(frame))
    path = tmp_path / "block_0.parquet"
    frame.to_parquet(path, index=False)
    ingest_block(home, path, 0, LakeConfig())
    return home


def _run(home, capsys, *extra) -> dict:
    argv = ["train-teacher", "--block", "0", "--home", str(home.root), "--members", MEMBERS, "--epochs", "4",
            "--set", "train.batch_size=256", "--set", "train.lr=0.02", "--set", "train.device=cpu", "--set", "teacher.top_k=5", "--json", *extra]
    assert main(argv) == 0
    out = capsys.readouterr().out
    return json.loads(out)


def test_train_teacher_end_to_end(home_with_block, capsys):
    home = home_with_block
    report = _run(home, capsys)
    names = [row["member"] for row in report["members"]]
    assert names == ["bpr-0", "bpr-1", "lightgcn-0", "vae-0"]
    assert all(row["status"] == "trained" and row["valid_recall@20"] > 0.3 for row in report["members"])
    assert report["ensemble"]["test_recall@20"] > 0.3
    bpr0 = model_io.load(home.model_dir(0, "teacher-bpr-0"))
    bpr1 = model_io.load(home.model_dir(0, "teacher-bpr-1"))
    assert bpr0.config.seed == 0 and bpr1.config.seed == 1  # members differ by seed
    assert not torch.equal(bpr0.user_emb, bpr1.user_emb)
    items, _ = read_topk(Path(report["topk"]["user_topk"]))
    assert items.shape[1] == 5
    assert report["topk"]["user_rows"] == items.shape[0] * 5  # a count stays a number in the JSON
    assert json.loads((home.model_dir(0, "teacher") / "teacher.json").read_text())["member_dirs"][0] == "teacher-bpr-0"

    again = _run(home, capsys)  # same data and configs: members are reused, not retrained
    assert [row["status"] for row in again["members"]] == ["reused"] * 4
    assert again["ensemble"] == report["ensemble"]
    retrained = _run(home, capsys, "--retrain")
    assert [row["status"] for row in retrained["members"]] == ["trained"] * 4


def test_train_teacher_errors(home_with_block, capsys):
    home = home_with_block
    assert main(["train-teacher", "--block", "0", "--home", str(home.root), "--members", "gcn:8"]) == 2
    assert "bad member spec" in capsys.readouterr().err
    assert main(["train-teacher", "--block", "3", "--home", str(home.root)]) == 2
    err = capsys.readouterr().err
    assert "block 3 is not in the lake" in err and len(err.strip().splitlines()) == 1


def test_block0_teacher_a_stream_recorded_is_never_overwritten(home_with_block, capsys):
    """Block 0's folders are the stream's shared teacher: once a finished stage records them,
    retraining a member or rewriting the lists from other settings is refused, byte for byte."""
    home = home_with_block
    _run(home, capsys)
    member, lists = home.model_dir(0, "teacher-bpr-0"), home.model_dir(0, "teacher")
    stages.run_stage(home, 0, "base-teacher-bpr-0", lambda: {"path": "models/block=0/teacher-bpr-0"}, "some-run")
    stages.run_stage(home, 0, "base-ensemble", lambda: {"topk_dir": "models/block=0/teacher"}, "some-run")
    assert _run(home, capsys)["members"][0]["status"] == "reused"  # the same settings may rebuild it
    before = {path: path.read_bytes() for path in [*member.iterdir(), *lists.iterdir()]}
    for extra, what in [(["--retrain"], "--retrain"), (["--set", "train.lr=0.03"], "other settings"),
                        (["--set", "teacher.top_k=6"], "another teacher.top_k"),
                        (["--members", MEMBERS + ",bpr:8"], "another teacher.members")]:
        argv = ["train-teacher", "--block", "0", "--home", str(home.root), "--members", MEMBERS, "--epochs", "4",
                "--set", "train.batch_size=256", "--set", "train.lr=0.02", "--set", "train.device=cpu",
                "--set", "teacher.top_k=5", *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert what in err and "some-run" in err and len(err.splitlines()) == 1
    assert {path: path.read_bytes() for path in before} == before
    assert not home.model_dir(0, "teacher-bpr-2").exists()  # refused before any member trained
