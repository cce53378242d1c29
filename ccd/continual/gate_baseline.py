"""What the registry gate holds a new student against: production, re-scored on the same tests.

A student's registered metrics are measured right after its own block, on the tests of the
blocks so far. Compared as they stand, block 0's student (one block: its H is its own
Recall@20) would be judged against block 3's on other tests, and on a stream whose later blocks
are harder production would never move past block 0, leaving new users and items unserved.

So before the gate decides on the student of block k, production is measured as the server
would answer once block k has arrived (`as_served`): its own scores for the users it knows
(items it does not know are never ranked) and its popular items for the users it does not. Its
row of the accuracy matrix replaces the candidate's, on the candidate's history (the rows of
the earlier blocks are the same for both), so both H values come from the same tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ccd.config import TrainConfig
from ccd.continual import evaluation
from ccd.models import Recommender

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def as_served(model: Recommender, n_items: int, train: np.ndarray) -> ScoreFn:
    """Scores over `n_items` items of `model` answering every user id, known or not.

    `train` holds the (user, item) pairs the model was trained on up to its block; their item
    counts order the popular items that unknown users get, as `ccd serve` does.
    """
    width = min(model.n_items, n_items)  # a production newer than the tests knows more items
    counts = np.bincount(train[train[:, 1] < width, 1], minlength=width)
    popularity = torch.as_tensor(counts, dtype=torch.float32, device=model.device)

    def score(users: torch.Tensor) -> torch.Tensor:
        users = users.to(model.device)
        out = torch.full((len(users), n_items), float("-inf"), device=model.device)
        out[:, :width] = popularity
        known = users < model.n_users
        if bool(known.any()):
            out[known, :width] = model.score(users[known])[:, :width]
        return out

    return score


def rescored_metrics(
    score_fn: ScoreFn,
    history: Sequence[Mapping[str, Any]],
    block: int,
    tests: Mapping[int, np.ndarray],
    seen_train: np.ndarray,
    n_items: int,
    with_base_block: bool,
    batch_users: int = TrainConfig.eval_batch_users,
    device: Any = None,
) -> dict[str, float]:
    """Gate metrics of `score_fn` standing as the model after `block`, on the candidate's `history`.

    `history` holds the matrix rows of the models after blocks 0..block-1.
    """
    rows = evaluation.evaluate_block(score_fn, block, tests, seen_train, n_items, batch_users, device)
    return evaluation.gate_metrics(evaluation.summaries([*history, *rows], with_base_block)[-1])
