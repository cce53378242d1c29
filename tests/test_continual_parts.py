"""CCD building blocks: proxy blending, replay sampling, LWC-KD loss, similarity graphs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ccd.continual.lwckd import contrastive_kd_loss, csr_from_pairs, positives_in_batch, similarity_graph
from ccd.continual.proxies import blend_state, blend_table
from ccd.continual.replay import ReplaySet, draw_replay, merge_replay, top_items
from ccd.continual.schedules import replay_weight
from ccd.evaluate import UserItemCSR


def test_blend_table_blends_old_rows_and_copies_new_ones():
    previous = torch.ones(2, 3)
    current = torch.full((4, 3), 3.0)
    blended = blend_table(previous, current, weight=0.25)
    assert torch.allclose(blended[:2], torch.full((2, 3), 0.25 * 1 + 0.75 * 3))
    assert torch.equal(blended[2:], current[2:])
    assert torch.equal(blend_table(None, current, 0.9), current)
    with pytest.raises(ValueError):
        blend_table(torch.ones(5, 3), current, 0.5)


def test_blend_state_needs_the_same_tables():
    state = {"user": torch.zeros(2, 2), "item": torch.zeros(3, 2)}
    assert set(blend_state(None, state, 0.5)) == {"user", "item"}
    with pytest.raises(ValueError):
        blend_state({"user": torch.zeros(2, 2)}, state, 0.5)


def test_replay_weight_schedule():
    assert replay_weight(0, initial=0.5, temperature=10.0) == 0.5
    assert math.isclose(replay_weight(10, initial=0.5, temperature=10.0), 0.5 / math.e)
    assert math.isclose(replay_weight(5, initial=0.5, temperature=5.0), 0.5 / math.e)


def _table_scores(table: torch.Tensor):
    return lambda users: table[users]


def test_replay_draws_only_from_proxy_top_and_never_excluded_items():
    torch.manual_seed(0)
    proxy_table = torch.randn(20, 50)
    reference_table = torch.randn(20, 50)
    best = proxy_table.argmax(dim=1).numpy()
    exclude = UserItemCSR.from_pairs(np.stack([np.arange(20), best], axis=1), n_users=20)
    tops = top_items(_table_scores(proxy_table), np.arange(20), exclude, top=6, batch_users=512)
    replay = draw_replay(_table_scores(reference_table), [(tops, 3)], eps=1e-4, seed=1, batch_users=512)
    assert len(replay) == 60
    for u, i, y in zip(replay.users, replay.items, replay.labels):
        row = proxy_table[u].clone()
        row[best[u]] = -np.inf
        assert i in set(row.topk(6).indices.tolist())
        assert i != best[u]
        assert math.isclose(y, torch.sigmoid(proxy_table[u, i]).item(), rel_tol=1e-5)
    # no duplicate items per user
    assert len({(u, i) for u, i in zip(replay.users, replay.items)}) == 60


def test_replay_prefers_items_the_reference_forgot():
    n_items = 1000
    proxy = torch.linspace(1, 0, n_items).repeat(200, 1)          # proxy ranks items 0..9 on top
    reference = torch.linspace(0, 1, n_items).repeat(200, 1)      # reference ranks item 0 last
    reference[:, 9] = 10.0                                         # ... and item 9 first
    tops = top_items(_table_scores(proxy), np.arange(200), None, top=10, batch_users=512)
    replay = draw_replay(_table_scores(reference), [(tops, 1)], eps=5e-3, seed=0, batch_users=512)
    counts = np.bincount(replay.items, minlength=10)
    # weight ratio of item 0 (forgotten: reference rank ~999) to item 9 (kept: rank 0) is e^5
    assert counts[0] > 10 and counts[9] <= 2


def test_replay_zero_samples_is_empty_and_merge_keeps_max_label():
    tops = top_items(_table_scores(torch.zeros(3, 5)), np.arange(3), None, top=5, batch_users=512)
    assert len(draw_replay(None, [(tops, 0)], eps=1e-4, seed=0, batch_users=512)) == 0
    a = ReplaySet(np.array([0, 1]), np.array([5, 6]), np.array([0.2, 0.9], np.float32))
    b = ReplaySet(np.array([0, 2]), np.array([5, 7]), np.array([0.7, 0.1], np.float32))
    merged = merge_replay([a, b, ReplaySet.empty()])
    assert sorted(zip(merged.users.tolist(), merged.items.tolist(), np.round(merged.labels.astype(float), 3).tolist())) == [
        (0, 5, 0.7), (1, 6, 0.9), (2, 7, 0.1)]


def test_contrastive_kd_loss_matches_direct_formula():
    torch.manual_seed(0)
    anchors, candidates = torch.randn(3, 4), torch.randn(5, 4, requires_grad=True)
    rows, cols = torch.tensor([0, 0, 2]), torch.tensor([1, 3, 4])
    loss = contrastive_kd_loss(anchors, candidates, rows, cols, tau=2.0)
    logp = torch.log_softmax(anchors @ candidates.T / 2.0, dim=1)
    expected = -((logp[0, 1] + logp[0, 3]) / 2 + logp[2, 4]) / 2   # anchor 1 has no positive
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.isfinite(candidates.grad).all()
    empty = contrastive_kd_loss(anchors, candidates, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), tau=2.0)
    assert empty.item() == 0.0


def test_positives_in_batch_maps_neighbours_to_candidate_columns():
    indptr, indices = csr_from_pairs(np.array([0, 0, 2, 1]), np.array([7, 3, 7, 5]), n_rows=3)
    column_of = np.full(10, -1)
    column_of[[3, 7]] = [0, 1]                      # item 5 is not a candidate
    rows, cols = positives_in_batch(np.array([2, 0, 1]), indptr, indices, column_of)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0), (1, 1)]


def test_similarity_graph_finds_cosine_neighbours_without_self_loops():
    # users 0 and 1 share items {0,1}; user 2 shares item 1 with them; user 3 is alone.
    pairs = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [2, 1], [2, 2], [3, 3]])
    indptr, indices = similarity_graph(pairs, n_rows=4, n_cols=4, degree=2, min_similarity=0.1, batch=2)
    neighbours = {u: set(indices[indptr[u]:indptr[u + 1]].tolist()) for u in range(4)}
    assert neighbours[0] == {1, 2} and neighbours[1] == {0, 2} and neighbours[2] == {0, 1}
    assert neighbours[3] == set()
    assert all(u not in n for u, n in neighbours.items())


def test_similarity_graph_matches_dense_cosine_top_neighbours():
    rng = np.random.default_rng(3)
    dense = rng.random((40, 25)) < 0.15
    pairs = np.argwhere(dense)
    indptr, indices = similarity_graph(pairs, n_rows=40, n_cols=25, degree=3, min_similarity=0.2, batch=7)
    norms = np.sqrt(dense.sum(1)).clip(1e-12)
    sims = (dense @ dense.T.astype(float)) / (norms[:, None] * norms[None, :])
    for row in range(40):
        candidates = [(-sims[row, c], c) for c in range(40) if c != row and sims[row, c] >= 0.2]
        expected = [c for _, c in sorted(candidates)[:3]]
        assert indices[indptr[row]:indptr[row + 1]].tolist() == sorted(expected)
