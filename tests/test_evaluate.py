"""Evaluation metrics against plain-Python brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ccd.evaluate import (
    UserItemCSR,
    continual_summaries,
    continual_summary,
    drop_seen_truth,
    loo_metrics,
    rank_metrics,
    sample_loo_candidates,
)


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


# --- continual summary -------------------------------------------------------------------

# Hand-made Recall@20 matrix: (trained block, test block) -> value.
MATRIX = {
    (0, 0): 0.30,
    (1, 0): 0.20, (1, 1): 0.40,
    (2, 0): 0.10, (2, 1): 0.30, (2, 2): 0.50,
}


def test_continual_summary_with_base_block():
    got = continual_summary(MATRIX)
    la, ra = (0.30 + 0.40 + 0.50) / 3, (0.10 + 0.30) / 2
    assert got["LA"] == pytest.approx(la) and got["RA"] == pytest.approx(ra)
    assert got["H"] == pytest.approx(2 * la * ra / (la + ra))


def test_continual_summary_without_base_block_and_upto():
    got = continual_summary(MATRIX, with_base_block=False)
    assert got["LA"] == pytest.approx(0.45) and got["RA"] == pytest.approx(0.30)
    early = continual_summary(MATRIX, upto=1)  # the summary as it stood after block 1
    assert early["LA"] == pytest.approx(0.35) and early["RA"] == pytest.approx(0.20)


def test_continual_summary_edge_cases():
    zeros = {key: 0.0 for key in MATRIX}
    assert continual_summary(zeros) == {"LA": 0.0, "RA": 0.0, "H": 0.0}
    with pytest.raises(ValueError, match="before the current"):
        continual_summary({(0, 0): 0.3})
    with pytest.raises(ValueError, match="no entry"):
        continual_summary({(0, 0): 0.3, (1, 1): 0.2})


def test_continual_summaries_per_metric():
    results = {key: {"recall@20": v, "ndcg@20": v / 2} for key, v in MATRIX.items()}
    got = continual_summaries(results)
    assert got["recall@20"] == continual_summary(MATRIX)
    assert got["ndcg@20"]["LA"] == pytest.approx(continual_summary(MATRIX)["LA"] / 2)


# --- leave-one-out protocol ----------------------------------------------------------------


def test_loo_hand_cases():
    scores = torch.tensor(
        [
            [5.0, 1.0, 2.0, 3.0, 4.0],  # held-out 0 beats all 3 candidates: rank 1
            [5.0, 1.0, 2.0, 3.0, 4.0],  # held-out 2 below candidates 0, 4: rank 3
            [1.0, 1.0, 1.0, 1.0, 1.0],  # ties count in the held-out item's favour: rank 1
        ]
    )
    heldout = np.array([[0, 0], [1, 2], [2, 4]])
    candidates = np.array([[1, 2, 3], [0, 4, 1], [0, 1, 2]])
    got = loo_metrics(_table(scores), heldout, candidates, ks=(1, 2, 3))
    assert got["users"] == 3
    assert got["hit@1"] == pytest.approx(2 / 3) and got["hit@3"] == 1.0
    assert got["ndcg@1"] == pytest.approx(2 / 3)
    assert got["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4) + 1) / 3)


@pytest.mark.parametrize("seed", range(5))
def test_loo_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items, n_cand = 9, 30, 7
    scores = torch.as_tensor(rng.standard_normal((n_users, n_items)))
    heldout = np.stack([np.arange(n_users), rng.integers(0, n_items, n_users)], 1)
    candidates = np.stack([rng.choice(np.setdiff1d(np.arange(n_items), [i]), n_cand, replace=False) for i in heldout[:, 1]])
    got = loo_metrics(_table(scores), heldout, candidates, ks=(1, 3, 5), batch_users=2)
    for k in (1, 3, 5):
        hits, gains = [], []
        for (u, i), cands in zip(heldout, candidates):
            rank = 1 + sum(float(scores[u, c]) > float(scores[u, i]) for c in cands)
            hits.append(rank <= k)
            gains.append(1 / math.log2(rank + 1) if rank <= k else 0.0)
        assert got[f"hit@{k}"] == pytest.approx(np.mean(hits))
        assert got[f"ndcg@{k}"] == pytest.approx(np.mean(gains))


def test_sample_loo_candidates_avoids_positives_and_repeats():
    rng = np.random.default_rng(0)
    n_users, n_items, n = 50, 40, 20
    positives = np.array([(u, i) for u in range(n_users) for i in rng.choice(n_items, 15, replace=False)])
    heldout = rng.integers(0, n_items, n_users)
    users = np.arange(n_users)
    got = sample_loo_candidates(n_items, users, heldout, positives, n=n, seed=3)
    assert got.shape == (n_users, n) and got.dtype == np.int64
    seen = {(int(u), int(i)) for u, i in positives}
    for u in users:
        row = got[u].tolist()
        assert len(set(row)) == n
        assert heldout[u] not in row
        assert not any((u, i) in seen for i in row)
    # Fixed by the seed, different across seeds.
    assert np.array_equal(got, sample_loo_candidates(n_items, users, heldout, positives, n=n, seed=3))
    assert not np.array_equal(got, sample_loo_candidates(n_items, users, heldout, positives, n=n, seed=4))


def test_sample_loo_candidates_is_uniform_over_unseen_items():
    # One user saw items 0..4; 20,000 draws of 2 candidates from items 5..9 hit each equally.
    users = np.zeros(20_000, np.int64)
    positives = np.array([(0, i) for i in range(5)])
    got = sample_loo_candidates(10, users, np.zeros(20_000, np.int64), positives, n=2, seed=0)
    counts = np.bincount(got.ravel(), minlength=10)
    assert counts[:5].sum() == 0
    assert np.allclose(counts[5:] / got.size, 0.2, atol=0.01)


def test_sample_loo_candidates_rejects_impossible_requests():
    with pytest.raises(ValueError, match="fewer than"):
        sample_loo_candidates(5, np.array([0]), np.array([0]), np.array([[0, 1], [0, 2]]), n=3)


def test_loo_pair_score_fn_gives_the_same_metrics():
    rng = np.random.default_rng(7)
    scores = torch.as_tensor(rng.standard_normal((6, 20)))
    heldout = np.stack([np.arange(6), rng.integers(0, 20, 6)], 1)
    candidates = rng.integers(0, 20, (6, 5))
    full = loo_metrics(_table(scores), heldout, candidates, batch_users=4)
    pairs = loo_metrics(None, heldout, candidates, batch_users=4, pair_score_fn=lambda u, i: scores[u[:, None], i])
    assert full == pairs
