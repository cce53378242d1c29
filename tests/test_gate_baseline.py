"""Production re-scored as served on a newer block's tests (ccd.continual.gate_baseline)."""

import numpy as np
import torch

from ccd.continual.gate_baseline import as_served, rescored_metrics
from ccd.models import BPRConfig, BPRMF


def test_known_users_get_the_model_s_scores_and_new_ones_its_popular_items():
    model = BPRMF(BPRConfig(dim=4), n_users=3, n_items=4)
    train = np.array([[0, 1], [1, 1], [2, 1], [0, 3], [1, 0]])  # item 1 most popular, then 0 and 3
    score = as_served(model, n_items=6, train=train)
    out = score(torch.tensor([0, 2, 3, 5]))
    assert out.shape == (4, 6)
    assert torch.equal(out[:2, :4], model.score(torch.tensor([0, 2])))
    assert torch.equal(out[2:, :4], torch.tensor([[1.0, 3.0, 0.0, 1.0]] * 2))  # users 3 and 5 are new
    assert torch.isinf(out[:, 4:]).all() and (out[:, 4:] < 0).all()  # new items are never ranked


def test_a_production_that_knows_more_items_than_the_tests_is_cut_to_their_width():
    model = BPRMF(BPRConfig(dim=4), n_users=5, n_items=8)
    out = as_served(model, n_items=6, train=np.array([[0, 7], [1, 2]]))(torch.tensor([0, 1]))
    assert torch.equal(out, model.score(torch.tensor([0, 1]))[:, :6])


def test_rescored_metrics_use_the_candidate_s_history_and_the_model_s_own_row():
    n_items = 4
    tests = {0: np.array([[0, 2]]), 1: np.array([[1, 3]])}
    seen = np.array([[0, 0], [1, 1]])
    perfect = lambda users: torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])[users]
    history = [{"trained": 0, "test": 0, "recall@20": 0.5, "ndcg@20": 0.5, "users": 1}]
    metrics = rescored_metrics(perfect, history, 1, tests, seen, n_items, with_base_block=True)
    # LA: mean of block 0's own 0.5 (history) and block 1's own 1.0; RA: block 0's test now, 1.0
    assert metrics["la_recall@20"] == 0.75 and metrics["ra_recall@20"] == 1.0
    assert abs(metrics["h_recall@20"] - 2 * 0.75 / 1.75) < 1e-9
