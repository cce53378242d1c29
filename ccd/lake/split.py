"""Deterministic per-user train/valid/test split (the CCD protocol).

Per user with n interactions in the block: test = max(floor(0.1 n), 1), valid the same, the
rest train, when n is large enough that at least one train interaction remains; smaller users go
to train entirely. Rows are sorted by content before the seeded shuffle, so the split depends on
the block's content and the seed only, never on the row order of the input file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ccd.config import LakeConfig


def split_block(frame: pd.DataFrame, config: LakeConfig) -> pd.Series:
    """Return a `split` label per row of `frame` (columns `user`, `item`: internal int ids).

    The result is aligned to `frame.index`.
    """
    order = np.lexsort((frame["item"].to_numpy(), frame["user"].to_numpy()))
    users = frame["user"].to_numpy()[order]
    rng = np.random.default_rng(config.split_seed)
    shuffle_key = rng.random(len(order))
    # Rank of each row inside its user after a seeded shuffle: sort by (user, key).
    by_user_key = np.lexsort((shuffle_key, users))
    sorted_users = users[by_user_key]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    counts = np.diff(np.r_[starts, len(sorted_users)])
    rank = np.arange(len(sorted_users)) - np.repeat(starts, counts)
    n = np.repeat(counts, counts)
    n_test = _held_out(n, config.test_fraction, config.min_user_interactions_for_split)
    n_valid = _held_out(n, config.valid_fraction, config.min_user_interactions_for_split)
    labels = np.where(rank < n_test, "test", np.where(rank < n_test + n_valid, "valid", "train"))
    result = np.empty(len(order), dtype=object)
    result[order[by_user_key]] = labels
    return pd.Series(result, index=frame.index, name="split", dtype="string")


def _held_out(n: np.ndarray, fraction: float, min_interactions: int) -> np.ndarray:
    """How many of a user's n interactions to hold out for one of valid/test."""
    count = np.maximum(np.floor(fraction * n).astype(np.int64), 1)
    return np.where(n >= max(min_interactions, 3), count, 0)
