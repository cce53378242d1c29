"""Which epoch of a continual student is kept: the best on the block's valid split, or on the stream's.

    validator = stream_validator(config.continual, valid_by_block, data)   # None: the block's own
    train(model, data, settings, validator=validator)

The authors keep the epoch with the best Recall@20 on block k's valid split (spec 2.2-2.4). That
scores plasticity alone, while the student served after block k is judged on the harmonic mean
of its new block and every earlier one; a student that keeps improving on block k by drifting
away from the old users is kept at its most drifted epoch. With `continual.select_on = "stream"`
the kept epoch is the one with the best H of block k's valid Recall@20 and the mean valid
Recall@20 of the blocks before k that RA counts (block 0 only with `with_base_block`), ranked as
the evaluation ranks (every training pair so far excluded).
The authors' `--eaa` switch is the same idea with a plain mean over blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from statistics import fmean

import numpy as np

from ccd.config import ContinualConfig, TrainConfig
from ccd.data import BlockData
from ccd.evaluate import CUTOFF, RECALL, harmonic, rank_metrics
from ccd.models import Recommender
from ccd.train import SELECTION, Validator

EARLIER = f"earlier_{RECALL}"


class StreamValidation:
    """Valid metrics of block k (as `ccd.train.validate` gives them) plus the earlier blocks'
    mean valid Recall@20 (`EARLIER`) and the H of the two (`SELECTION`).

    Parameters
    ----------
    earlier_valid : mapping block j -> np.ndarray, shape (V, 2)
        Valid pairs of the blocks before k.
    data : BlockData
        Block k: its valid split, id space and every training pair so far.
    batch_users : int
        Users ranked per chunk.
    """

    def __init__(self, earlier_valid: Mapping[int, np.ndarray], data: BlockData,
                 batch_users: int = TrainConfig.eval_batch_users) -> None:
        if not earlier_valid:
            raise ValueError("stream selection needs at least one earlier block's valid split")
        self.earlier_valid, self.data, self.batch_users = dict(earlier_valid), data, batch_users

    def __call__(self, model: Recommender) -> dict[str, float]:
        model.eval()
        data, seen = self.data, self.data.seen_train
        metrics = rank_metrics(model.score, data.valid, seen, data.n_items, batch_users=self.batch_users, device=model.device)
        earlier = fmean(
            rank_metrics(model.score, pairs, seen, data.n_items, ks=(CUTOFF,), batch_users=self.batch_users, device=model.device)[RECALL]
            for pairs in self.earlier_valid.values()
        )
        return {**metrics, EARLIER: earlier, SELECTION: harmonic(metrics[RECALL], earlier)}


def stream_validator(config: ContinualConfig, earlier_valid: Mapping[int, np.ndarray], data: BlockData,
                     batch_users: int = TrainConfig.eval_batch_users) -> Validator | None:
    """The validator `config.select_on` asks for: None (the block's own valid split, the loop's
    default) for "block" or when there is no earlier block."""
    if config.select_on == "block" or not earlier_valid:
        return None
    return StreamValidation(earlier_valid, data, batch_users)
