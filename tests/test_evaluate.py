"""Evaluation metrics against plain-Python brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ccd.evaluate import UserItemCSR, drop_seen_truth, rank_metrics


def _random_case(seed: int, n_users: int = 13, n_items: int = 40):
    """Random continuous scores (no ties), random truth and exclude sets that overlap."""
    rng = np.random.default_rng(seed)
    scores = torch.as_tensor(rng.standard_normal((n_users, n_items)))
    pairs = np.array([(u, i) for u in range(n_users) for i in range(n_items)])
    picked = rng.permutation(len(pairs))
    truth = pairs[picked[: rng.integers(1, 60)]]
    exclude = pairs[picked[rng.integers(20, 50) : rng.integers(80, 200)]]
    if len(exclude) and rng.random() < 0.5:  # some truth pairs are also seen in training
        exclude = np.concatenate([exclude, truth[: len(truth) // 3]])
    return scores, truth, exclude


def _brute_force(scores: torch.Tensor, truth, exclude, ks) -> dict[str, float]:
    excluded = {(int(u), int(i)) for u, i in exclude}
    wanted: dict[int, set[int]] = {}
    for u, i in truth:
        if (int(u), int(i)) not in excluded:
            wanted.setdefault(int(u), set()).add(int(i))
    out = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    for u, items in wanted.items():
        candidates = [i for i in range(scores.shape[1]) if (u, i) not in excluded]
        ranked = sorted(candidates, key=lambda i: -float(scores[u, i]))
        for k in ks:
            top = ranked[:k]
            hits = [p for p, i in enumerate(top) if i in items]
            out[f"recall@{k}"] += len(hits) / len(items)
            dcg = sum(1 / math.log2(p + 2) for p in hits)
            idcg = sum(1 / math.log2(p + 2) for p in range(min(len(items), k)))
            out[f"ndcg@{k}"] += dcg / idcg
    n = len(wanted)
    return {**{key: (v / n if n else 0.0) for key, v in out.items()}, "users": n}


def _table(scores: torch.Tensor):
    return lambda users: scores[users]


@pytest.mark.parametrize("seed", range(25))
def test_rank_metrics_match_brute_force(seed):
    scores, truth, exclude = _random_case(seed)
    ks = (1, 3, 10, 20)
    got = rank_metrics(_table(scores), truth, exclude, scores.shape[1], ks=ks, batch_users=4)
    want = _brute_force(scores, truth, exclude, ks)
    assert got["users"] == want["users"]
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


@pytest.mark.parametrize("seed", range(5))
def test_chunking_does_not_change_results(seed):
    scores, truth, exclude = _random_case(seed, n_users=30, n_items=25)
    one = rank_metrics(_table(scores), truth, exclude, 25, batch_users=1)
    big = rank_metrics(_table(scores), truth, exclude, 25, batch_users=1000)
    assert one == big


def test_excluded_items_are_never_ranked():
    # User 0 scores items 0 and 1 highest, but both were seen in training: item 2 must be
    # ranked first, so a truth of {2} is a hit at position 0.
    scores = torch.tensor([[9.0, 8.0, 7.0, 1.0, 0.0]])
    got = rank_metrics(_table(scores), np.array([[0, 2]]), np.array([[0, 0], [0, 1]]), 5, ks=(1,))
    assert got == {"recall@1": 1.0, "ndcg@1": 1.0, "users": 1}
    # Without the exclusion item 2 is third: a miss at K=1.
    got = rank_metrics(_table(scores), np.array([[0, 2]]), np.zeros((0, 2), np.int64), 5, ks=(1, 3))
    assert got["recall@1"] == 0.0 and got["recall@3"] == 1.0
    assert got["ndcg@3"] == pytest.approx(1 / math.log2(4))


def test_seen_truth_is_dropped_and_empty_users_skipped():
    truth = np.array([[0, 1], [0, 2], [1, 3], [1, 3]])
    exclude = np.array([[0, 1], [1, 3]])
    assert drop_seen_truth(truth, exclude, 5).tolist() == [[0, 2]]
    scores = torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    got = rank_metrics(_table(scores), truth, exclude, 5, ks=(1,))
    assert got["users"] == 1 and got["recall@1"] == 1.0


def test_hand_computed_ndcg_with_two_truth_items():
    # Ranking: 4, 3, 2, 1, 0. Truth {3, 0}: hits at positions 1 and 4.
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    got = rank_metrics(_table(scores), np.array([[0, 3], [0, 0]]), np.zeros((0, 2)), 5, ks=(2, 5))
    assert got["recall@2"] == 0.5 and got["recall@5"] == 1.0
    assert got["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert got["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3)))


def test_no_users_and_large_k():
    scores = torch.zeros((2, 3))
    empty = rank_metrics(_table(scores), np.zeros((0, 2)), np.zeros((0, 2)), 3)
    assert empty["users"] == 0 and empty["recall@20"] == 0.0
    # K beyond n_items is clamped: every truth item is found.
    got = rank_metrics(_table(torch.tensor([[1.0, 2.0, 3.0]])), np.array([[0, 0]]), np.zeros((0, 2)), 3, ks=(50,))
    assert got["recall@50"] == 1.0


def test_users_are_passed_as_long_tensors_in_chunks():
    calls = []

    def score_fn(users):
        calls.append(users.clone())
        return torch.zeros((len(users), 4))

    truth = np.array([[5, 0], [2, 1], [7, 2]])
    rank_metrics(score_fn, truth, np.zeros((0, 2)), 4, batch_users=2)
    assert [c.tolist() for c in calls] == [[2, 5], [7]]
    assert all(c.dtype == torch.int64 for c in calls)


def test_csr_gather_returns_every_pair_of_the_chunk():
    pairs = np.array([[3, 1], [0, 2], [3, 0], [1, 4], [3, 5]])
    csr = UserItemCSR.from_pairs(pairs, 6)
    rows, items = csr.gather(torch.tensor([3, 2, 0, 9]))  # user 9 is past the end: no pairs
    got = sorted(zip(rows.tolist(), items.tolist()))
    assert got == [(0, 0), (0, 1), (0, 5), (2, 2)]
