"""Choosing a continual student's epoch on the stream's valid splits (`continual.select_on`)."""

from __future__ import annotations

import numpy as np
import pytest

from ccd.config import RunConfig
from ccd.continual.selection import EARLIER, StreamValidation, stream_validator
from ccd.evaluate import harmonic, rank_metrics
from ccd.models import BPRConfig, build_model
from ccd.train import SELECTION, train, validate
from planted import single_thread  # noqa: F401 (fixture)
from test_continual_units import tiny_config, tiny_stream

pytestmark = pytest.mark.usefixtures("single_thread")


def test_stream_validation_is_the_block_metrics_plus_the_h_of_new_and_earlier():
    blocks = tiny_stream(n_blocks=3)
    data = blocks[2]
    model = build_model(BPRConfig(dim=8, seed=0), data.n_users, data.n_items)
    metrics = StreamValidation({0: blocks[0].valid, 1: blocks[1].valid}, data)(model)

    assert {k: metrics[k] for k in validate(model, data)} == pytest.approx(validate(model, data))
    earlier = [rank_metrics(model.score, blocks[j].valid, data.seen_train, data.n_items)["recall@20"] for j in (0, 1)]
    assert metrics[EARLIER] == pytest.approx(np.mean(earlier))
    assert metrics[SELECTION] == pytest.approx(2 * metrics["recall@20"] * metrics[EARLIER] / (metrics["recall@20"] + metrics[EARLIER]))
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
