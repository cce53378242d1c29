"""The synthetic sample stream: determinism, Gowalla-like shape, learnable tastes and drift."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ccd.errors import BadInputError
from ccd.config import RunConfig, SampleConfig
from ccd.lake.synthetic import generate_stream, write_sample

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
SMALL = SampleConfig(n_users=300, n_items=500, base_mean_interactions=12.0, block_mean_interactions=7.0)


@pytest.fixture(scope="module")
def stream() -> list[pd.DataFrame]:
    return generate_stream(SampleConfig())


def test_same_seed_same_stream_other_seed_differs() -> None:
    first, again, other = generate_stream(SMALL), generate_stream(SMALL), generate_stream(dataclasses.replace(SMALL, seed=1))
    for a, b in zip(first, again):
        pd.testing.assert_frame_equal(a, b)
    assert not first[0].equals(other[0])


def test_written_files_are_bit_for_bit_reproducible(tmp_path: Path) -> None:
    write_sample(tmp_path / "a", SMALL)
    write_sample(tmp_path / "b", SMALL)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == [f"block_{k}.parquet" for k in range(SMALL.n_blocks)]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_checked_in_sample_matches_the_generator(stream: list[pd.DataFrame]) -> None:
    """data/sample must be regenerated (`ccd make-sample`) whenever the generator changes."""
    assert SampleConfig().seed == 0
    for k, block in enumerate(stream):
        stored = pd.read_parquet(SAMPLE / f"block_{k}.parquet")
        pd.testing.assert_frame_equal(stored, block, check_dtype=False)
        assert list(stored.columns) == ["user_id", "item_id", "timestamp"]


def test_shape_is_like_a_real_stream(stream: list[pd.DataFrame]) -> None:
    every = pd.concat(stream, ignore_index=True)
    assert len(stream) == 6
    assert 60_000 <= len(every) <= 90_000
    assert 0.4 <= len(stream[0]) / len(every) <= 0.6
    assert every["user_id"].nunique() == 2000
    assert 2800 <= every["item_id"].nunique() <= 3000
    assert every["user_id"].str.fullmatch(r"u\d{6}").all() and every["item_id"].str.fullmatch(r"i\d{6}").all()
    assert every["timestamp"].dtype == np.int64
    assert not every.duplicated(["user_id", "item_id"]).any()
    for k, block in enumerate(stream):
        assert block["timestamp"].is_monotonic_increasing
        assert block.groupby("user_id").size().min() >= SampleConfig().min_interactions
        if k:
            assert stream[k - 1]["timestamp"].max() < block["timestamp"].min()
            earlier = pd.concat(stream[:k])
            assert (~block["user_id"].isin(earlier["user_id"])).sum() > 100
            assert (~block["item_id"].isin(earlier["item_id"])).sum() > 100
            assert block["user_id"].isin(earlier["user_id"]).sum() > 0
    span0 = stream[0]["timestamp"].max() - stream[0]["timestamp"].min()
    span1 = stream[1]["timestamp"].max() - stream[1]["timestamp"].min()
    assert span0 > 5 * span1


def test_popularity_is_heavy_tailed(stream: list[pd.DataFrame]) -> None:
    counts = pd.concat(stream)["item_id"].value_counts().to_numpy()  # descending
    top_decile = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_decile > 0.35  # uniform would be 0.10
    assert counts[0] > 20 * np.median(counts)


def test_tastes_beat_popularity(stream: list[pd.DataFrame]) -> None:
    """A rank-24 PureSVD fitted on 80% of block 0 far outranks popularity on the other 20%."""
    block = stream[0]
    held_out = np.random.default_rng(0).random(len(block)) < 0.2
    users, items, train = _matrix(block[~held_out])
    test = _hits(block[held_out], users, items)
    pop = np.broadcast_to(train.sum(0), train.shape)
    assert _recall(_svd_scores(train), train, test) > 1.5 * _recall(pop, train, test)


def test_drift_makes_a_frozen_model_go_stale(stream: list[pd.DataFrame]) -> None:
    """Fitted on block 0, PureSVD predicts returning users' block-5 items worse with drift than without."""
    still = generate_stream(dataclasses.replace(SampleConfig(), drift=0.0))
    assert _stale_recall(still) > _stale_recall(stream) + 0.015


def test_sample_is_a_config_section() -> None:
    config = RunConfig.load(overrides=["sample.n_users=100", "sample.drift=0.5"])
    assert config.sample.n_users == 100 and config.sample.drift == 0.5


def test_impossible_config_is_rejected() -> None:
    with pytest.raises(BadInputError, match="n_blocks"):
        generate_stream(SampleConfig(n_blocks=1))
    with pytest.raises(BadInputError, match="new ones"):
        generate_stream(SampleConfig(n_users=10, base_user_share=0.9))


def _matrix(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted user and item labels and the dense 0/1 matrix of `frame`, shape (U, I)."""
    users, u = np.unique(frame["user_id"], return_inverse=True)
    items, i = np.unique(frame["item_id"], return_inverse=True)
    matrix = np.zeros((len(users), len(items)))
    matrix[u, i] = 1.0
    return users, items, matrix


def _hits(frame: pd.DataFrame, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """0/1 matrix (U, I) of `frame`'s pairs whose user and item are in the labels."""
    known = frame[frame["user_id"].isin(users) & frame["item_id"].isin(items)]
    hits = np.zeros((len(users), len(items)), dtype=bool)
    hits[np.searchsorted(users, known["user_id"]), np.searchsorted(items, known["item_id"])] = True
    return hits


def _svd_scores(train: np.ndarray, rank: int = 24) -> np.ndarray:
    """PureSVD: project each user row on the top-`rank` left singular subspace, shape (U, I).

    The subspace comes from a few seeded subspace iterations on X Xᵀ (a full eigh is slow).
    """
    gram = train @ train.T  # (U, U)
    basis = np.random.default_rng(0).standard_normal((len(train), rank))
    for _ in range(6):
        basis, _ = np.linalg.qr(gram @ basis)  # (U, rank)
    return basis @ (basis.T @ train)


def _recall(scores: np.ndarray, train: np.ndarray, test: np.ndarray, k: int = 20) -> float:
    """Mean Recall@k over users with test items, train items excluded from the ranking."""
    scores = np.where(train > 0, -np.inf, scores)
    top = np.argpartition(-scores, k, axis=1)[:, :k]  # (U, k)
    active = test.sum(1) > 0
    found = np.take_along_axis(test, top, axis=1)[active].sum(1)
    return float((found / np.minimum(test[active].sum(1), k)).mean())


def _stale_recall(stream: list[pd.DataFrame]) -> float:
    users, items, train = _matrix(stream[0])
    return _recall(_svd_scores(train), train, _hits(stream[-1], users, items))
