"""Choosing a continual student's epoch on the stream's valid splits (`continual.select_on`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccd.config import RunConfig
from ccd.continual.selection import EARLIER, StreamValidation, stream_validator
from ccd.data import BlockData
from ccd.evaluate import harmonic
from ccd.models import BPRConfig, build_model
from ccd.train import SELECTION, train, validate
from planted import single_thread  # noqa: F401 (fixture)
from test_continual_units import tiny_config, tiny_stream

pytestmark = pytest.mark.usefixtures("single_thread")


def test_stream_validation_is_the_block_metrics_plus_the_h_of_new_and_earlier():
    """Hand-computed: every user ranks item i at place i (30 items), so an item below 20 is a hit.
    Block k: user 0 hits item 5, user 1 misses 25 -> 0.5. Earlier block 0: user 0 hits 1, user 1
    gets 2 of {2, 22} -> 0.75; block 1: user 1 misses 28 -> 0. Earlier mean 0.375; H 0.4286."""
    model = build_model(BPRConfig(dim=30, seed=0), n_users=2, n_items=30)
    with torch.no_grad():
        model.user_emb.copy_(-torch.arange(30.0).repeat(2, 1))   # score(u, i) = -i
        model.item_emb.copy_(torch.eye(30))
    pairs = lambda *rows: np.array(rows, np.int64).reshape(-1, 2)
    data = BlockData(2, 2, 30, train=pairs([0, 29]), valid=pairs([0, 5], [1, 25]), test=pairs([0, 6]), history=pairs())
    earlier = {0: pairs([0, 1], [1, 2], [1, 22]), 1: pairs([1, 28])}
    metrics = StreamValidation(earlier, data, batch_users=1)(model)
    assert metrics["recall@20"] == pytest.approx(0.5)
    assert metrics[EARLIER] == pytest.approx(0.375)
    assert metrics[SELECTION] == pytest.approx(2 * 0.5 * 0.375 / 0.875)
    assert harmonic(0.0, 0.0) == 0.0


def test_stream_validator_only_when_asked_and_when_there_is_an_earlier_block():
    blocks = tiny_stream(n_blocks=2)
    earlier = {0: blocks[0].valid}
    assert stream_validator(tiny_config(select_on="block").continual, earlier, blocks[1]) is None  # the authors' rule
    assert RunConfig().continual.select_on == "stream"
    assert stream_validator(tiny_config(select_on="stream").continual, {}, blocks[0]) is None  # block 0: nothing earlier
    assert isinstance(stream_validator(tiny_config(select_on="stream").continual, earlier, blocks[1]), StreamValidation)


def test_train_keeps_the_epoch_best_on_the_validators_selection_score():
    """A validator whose selection score falls every evaluation: the first evaluated epoch is
    kept although the block's own recall rises, and its metrics are what the result reports."""
    data = tiny_stream(n_blocks=1)[0]
    config = tiny_config().train
    calls = []

    def falling(model):
        metrics = validate(model, data)
        calls.append(metrics["recall@20"])
        return {**metrics, SELECTION: -float(len(calls))}

    model = build_model(BPRConfig(dim=8, seed=0), data.n_users, data.n_items)
    result = train(model, data, config, progress=False, validator=falling)
    assert len(calls) > 1 and max(calls) > calls[0]
    assert result.best_epoch == config.eval_every
    assert result.best_metrics[SELECTION] == -1.0 and result.best_metrics["recall@20"] == calls[0]
    assert validate(model, data)["recall@20"] == pytest.approx(calls[0])  # the kept state is restored
