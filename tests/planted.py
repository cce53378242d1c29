"""A tiny block with planted structure, for model and training tests.

Users and items fall into `groups` clusters and every user only interacts with items of its own
cluster, so any model that learns collaborative structure ranks held-out items far above
popularity or random order, in seconds on a CPU.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ccd.data import BlockData


def planted_block(n_users: int = 120, n_items: int = 60, groups: int = 4, per_user: int = 10, seed: int = 0) -> BlockData:
    """Per user: `per_user` distinct items of its group; 1 valid, 1 test, the rest train."""
    rng = np.random.default_rng(seed)
    user_group = rng.integers(0, groups, n_users)
    item_group = np.arange(n_items) % groups
    rows = []
    for u in range(n_users):
        items = rng.choice(np.flatnonzero(item_group == user_group[u]), per_user, replace=False)
        splits = ["valid", "test"] + ["train"] * (per_user - 2)
        rows += [(u, int(i), s) for i, s in zip(items, splits)]
    frame = pd.DataFrame(rows, columns=["user", "item", "split"])
    return BlockData.from_frame(frame, block=0, n_users=n_users, n_items=n_items)


@pytest.fixture
def single_thread():
    """Run a test with one torch thread: tiny tensors gain nothing from more, and on a busy
    2-core machine idle OpenMP threads spin and slow every small op down several times."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
