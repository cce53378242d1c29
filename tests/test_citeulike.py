"""CiteULike leave-one-out loader on a tiny Parquet file, and on the real file (slow)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ccd.datasets.citeulike import DEFAULT_PATH, load_citeulike, loo_from_frame
from ccd.errors import BadInputError


def _write_tiny(path, n_users: int = 6, n_items: int = 40, seed: int = 0):
    """Users with external ids 100, 110, ...; 6 train items, 1 valid, 1 test each."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, 8, replace=False) * 3 + 7  # sparse external item ids
        rows += [(100 + 10 * u, int(i), "train") for i in items[:6]]
        rows += [(100 + 10 * u, int(items[6]), "valid"), (100 + 10 * u, int(items[7]), "test")]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "split"])
    frame["split"] = frame["split"].astype("category")
    frame.to_parquet(path)
    return frame


def test_tiny_file_round_trip(tmp_path):
    frame = _write_tiny(tmp_path / "interactions.parquet")
    data = load_citeulike(tmp_path / "interactions.parquet", n_candidates=10, seed=0)
    assert data.n_users == 6 and data.n_items == frame["item_id"].nunique()
    assert data.train.shape == (36, 2) and data.valid.shape == (6, 2) and data.test.shape == (6, 2)
    assert data.valid[:, 0].tolist() == list(range(6))
    assert data.user_ids.tolist() == [100 + 10 * u for u in range(6)]
    # Internal pairs map back to the file's external pairs.
    back = {(int(data.user_ids[u]), int(data.item_ids[i])) for u, i in data.test}
    assert back == set(frame.loc[frame["split"] == "test", ["user_id", "item_id"]].itertuples(index=False, name=None))
    # Candidates: 10 distinct items per row, none the user ever interacted with.
    every = np.concatenate([data.train, data.valid, data.test])
    for held, cands in ((data.valid, data.valid_candidates), (data.test, data.test_candidates)):
        assert cands.shape == (6, 10)
        for (u, _), row in zip(held, cands):
            mine = set(every[every[:, 0] == u, 1].tolist())
            assert len(set(row.tolist())) == 10 and not mine & set(row.tolist())
    assert not np.array_equal(data.valid_candidates, data.test_candidates)
    again = load_citeulike(tmp_path / "interactions.parquet", n_candidates=10, seed=0)
    assert np.array_equal(again.test_candidates, data.test_candidates)


def test_bad_inputs(tmp_path):
    with pytest.raises(BadInputError, match="cannot read"):
        load_citeulike(tmp_path / "missing.parquet")
    two_tests = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [1, 2, 3], "split": ["train", "test", "test"]})
    with pytest.raises(BadInputError, match="at most one test"):
        loo_from_frame(two_tests, n_candidates=0)
    odd = pd.DataFrame({"user_id": [1], "item_id": [1], "split": ["holdout"]})
    with pytest.raises(BadInputError, match="unknown split"):
        loo_from_frame(odd)


@pytest.mark.slow
def test_real_citeulike_counts():
    data = load_citeulike(DEFAULT_PATH)
    # The datasets README: 115,142 train rows, 5,219 users with one valid and one test item.
    # The paper's 5,220 users / 25,182 items include one user and one item without rows.
    assert (data.n_users, data.n_items) == (5_219, 25_181)
    assert len(data.train) == 115_142 and len(data.valid) == len(data.test) == 5_219
    assert data.valid_candidates.shape == data.test_candidates.shape == (5_219, 499)
    assert np.bincount(data.train[:, 0]).min() >= 3
