"""Shared fixtures: an isolated home folder per test and small block files."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from ccd.home import Home

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
GOWALLA = REPO.parent / "shared" / "datasets" / "gowalla"


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home.resolve(tmp_path / "home")


def make_block(n_users: int = 30, n_items: int = 40, per_user: int = 8, block: int = 0,
               user_prefix: str = "u", seed: int = 0, t0: int = 1_600_000_000) -> pd.DataFrame:
    """A small valid block: string ids, distinct (user, item) pairs, increasing timestamps."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for i in rng.choice(n_items, size=per_user, replace=False):
            rows.append((f"{user_prefix}{u}", f"i{i}"))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id"])
    frame["timestamp"] = t0 + block * 100_000 + np.arange(len(frame))
    return frame
