"""Teacher lists and RRD's interesting / uninteresting sets: B1, order, uniformity, vectorisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccd.distill.sampling import (
    PairSet,
    clean_lists,
    forbidden_pairs,
    sample_interesting,
    sample_uninteresting,
    teacher_lists,
)
from planted import single_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_pairset_membership_counts_and_transpose():
    pairs = PairSet(np.array([[0, 1], [0, 3], [2, 0], [0, 1]]), 4)
    got = pairs.contains(torch.tensor([[0], [1], [2]]), torch.tensor([[0, 1, 3]]))
    assert got.tolist() == [[False, True, True], [False, False, False], [True, False, False]]
    assert pairs.row_counts(3).tolist() == [2, 0, 1]
    assert pairs.transposed(3).pairs().tolist() == [[0, 2], [1, 0], [3, 0]]
    assert PairSet(np.zeros((0, 2), np.int64), 4).contains(torch.tensor([0]), torch.tensor([1])).tolist() == [False]


def test_observed_items_are_never_interesting_bug_b1():
    # The teacher ranks each user's own training items highest: B1 would put them first.
    n_users, n_items = 12, 12
    rng = np.random.default_rng(0)
    train = np.array([(u, i) for u in range(n_users) for i in rng.choice(n_items, 3, replace=False)])
    scores = torch.rand(n_users, n_items, generator=torch.Generator().manual_seed(0))
    scores[train[:, 0], train[:, 1]] += 10.0
    observed = PairSet(train, n_items)
    users, items = teacher_lists(lambda u: scores[u], n_users, n_items, observed, n_user=6, n_item=3, batch_users=2)
    assert users.shape == (n_users, 6) and items.shape == (n_items, 3)
    train_set = {tuple(p) for p in train.tolist()}
    assert not any((u, i) in train_set for u in range(n_users) for i in users[u].tolist())
    assert not any((u, i) in train_set for i in range(n_items) for u in items[i].tolist())
    # In teacher order: the best unobserved items by score.
    masked = scores.clone()
    masked[train[:, 0], train[:, 1]] = -float("inf")
    assert torch.equal(users, torch.topk(masked, 6, dim=1).indices)
    assert torch.equal(items, torch.topk(masked.T, 3, dim=1).indices)
    interesting = sample_interesting(users, 4, sample=True, temperature=10.0, generator=torch.Generator().manual_seed(1))
    assert not any((u, i) in train_set for u in range(n_users) for i in interesting[u].tolist())


def test_clean_lists_drops_observed_and_padding_keeping_order():
    # As read back by ccd.ensemble.read_topk: -1 pads a short list.
    lists = np.array([[1, 2, 3, 4, -1], [5, 0, 4, 3, 2]])
    observed = PairSet(np.array([[0, 1], [0, 3], [1, 0]]), 6)
    assert clean_lists(lists, observed).tolist() == [[2, 4], [5, 4]]


def test_interesting_deterministic_is_the_top_k():
    lists = torch.arange(20).reshape(2, 10)
    assert sample_interesting(lists, 3, sample=False, temperature=10.0).tolist() == [[0, 1, 2], [10, 11, 12]]
    with pytest.raises(ValueError):
        sample_interesting(lists, 11, sample=False, temperature=10.0)


def test_interesting_sampling_keeps_teacher_order_and_favours_top_ranks():
    lists = torch.arange(50)[None, :].repeat(4000, 1) + 100  # teacher rank r holds item 100 + r
    drawn = sample_interesting(lists, 5, sample=True, temperature=10.0, generator=torch.Generator().manual_seed(0))
    assert drawn.shape == (4000, 5)
    assert (drawn[:, 1:] > drawn[:, :-1]).all()  # distinct and sorted by teacher rank
    ranks = (drawn - 100).flatten()
    counts = torch.bincount(ranks, minlength=50).double()
    assert counts[:10].sum() > counts[10:20].sum() > counts[20:30].sum() > counts[30:].sum() / 3
    again = sample_interesting(lists, 5, sample=True, temperature=10.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(drawn, again)


def test_uninteresting_avoids_observed_and_teacher_lists_and_is_uniform():
    n_items = 30
    observed = PairSet(np.array([[0, 0], [0, 1], [1, 5]]), n_items)
    lists = torch.tensor([[2, 3, 4], [6, 7, 8]])
    forbidden = forbidden_pairs(observed, lists)
    rows = torch.tensor([0, 1]).repeat(3000)
    drawn = sample_uninteresting(n_items, 6, forbidden, rows, torch.Generator().manual_seed(0))
    assert drawn.shape == (6000, 6)
    assert (torch.sort(drawn, 1).values.diff(dim=1) > 0).all()  # distinct within a row
    for user, banned in ((0, {0, 1, 2, 3, 4}), (1, {5, 6, 7, 8})):
        mine = drawn[rows == user].flatten()
        assert not set(mine.tolist()) & banned
        counts = torch.bincount(mine, minlength=n_items).double()
        allowed = counts[[i for i in range(n_items) if i not in banned]]
        assert allowed.min() > 0.8 * allowed.mean() and allowed.max() < 1.2 * allowed.mean()


def test_uninteresting_refuses_rows_without_enough_candidates():
    forbidden = PairSet(np.array([[0, i] for i in range(8)]), 10)
    with pytest.raises(ValueError, match="fewer than n=3"):
        sample_uninteresting(10, 3, forbidden, torch.tensor([0]))
