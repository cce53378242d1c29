"""`ccd.teacher.train_member`: one member on its own (what each flow task runs), then the ensemble reuses it."""

from __future__ import annotations

import dataclasses

import pytest

from ccd.config import LakeConfig, RunConfig
from ccd.errors import BadInputError
from ccd.lake.ingest import ingest_block
from ccd.teacher import _digest, _fingerprint, train_member, train_teacher
from planted import planted_block
from tests.conftest import make_block

CONFIG = RunConfig.from_dict({
    "teacher": {"members": ["bpr:8x2"], "top_k": 5},
    "train": {"max_epochs": 2, "batch_size": 256, "device": "cpu"},
})


def test_members_trained_one_by_one_are_reused_by_the_ensemble(home, tmp_path):
    path = tmp_path / "block_0.csv"
    make_block().to_csv(path, index=False)
    ingest_block(home, path, 0, LakeConfig())
    rows = [train_member(home, 0, name, CONFIG, progress=False) for name in ("bpr-0", "bpr-1")]
    assert [(r["member"], r["status"]) for r in rows] == [("bpr-0", "trained"), ("bpr-1", "trained")]
    assert train_member(home, 0, "bpr-1", CONFIG, progress=False)["status"] == "reused"
    report = train_teacher(home, 0, CONFIG, progress=False)
    assert [r["status"] for r in report["members"]] == ["reused", "reused"]
    assert [r["valid_recall@20"] for r in report["members"]] == [r["valid_recall@20"] for r in rows]
    with pytest.raises(BadInputError, match="no teacher member 'vae-0'"):
        train_member(home, 0, "vae-0", CONFIG)


def test_members_saved_before_decay_on_existed_keep_their_fingerprint():
    """`train.decay_on` at "batch" trains as the code before it did, so it is left out of a
    member's fingerprint (members already saved are reused); "all" trains differently and
    changes it."""
    data, config = planted_block(), RunConfig()
    before = _digest(data, {k: v for k, v in dataclasses.asdict(config.train).items() if k != "decay_on"})
    assert _fingerprint(data, config) == before
    changed = RunConfig.from_dict({"train": {"decay_on": "all"}})
    assert _fingerprint(data, changed) != before
