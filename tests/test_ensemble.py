"""Teacher ensemble: rank transform, ensemble score, top-K lists against dense brute force."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ccd.ensemble import Ensemble, StoredTopK, rank_transform, read_topk, write_topk
from ccd.evaluate import rank_metrics


class TableModel:
    """A fixed score table behind the `score(users)` interface."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table
        self.n_items = table.shape[1]

    def score(self, users: torch.Tensor) -> torch.Tensor:
        return self.table[users]


def test_rank_transform_hand_case():
    scores = torch.tensor([[0.1, 3.0, -2.0, 0.5]])  # ranks 2, 0, 3, 1
    want = torch.tensor([[3.0, 1.0, 4.0, 2.0]]) ** -0.05
    assert torch.allclose(rank_transform(scores, 0.05), want)
    # The values quoted in the spec: rank 1 -> 1.0, 2 -> 0.966, 100 -> 0.794.
    row = rank_transform(-torch.arange(100.0)[None, :], 0.05)[0]
    assert row[0] == 1.0 and row[1] == pytest.approx(0.966, abs=1e-3) and row[99] == pytest.approx(0.794, abs=1e-3)


def test_rank_transform_matches_a_full_descending_sort():
    """The CPU path sorts with numpy; each score must get the value of its 0-based rank r."""
    scores = torch.randperm(5000, generator=torch.Generator().manual_seed(0)).float().reshape(4, 1250)
    ranks = (scores[:, None, :] > scores[:, :, None]).sum(2)   # items scored higher = rank
    assert torch.equal(rank_transform(scores, 0.05), (ranks + 1).float() ** -0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rank_transform_orders_infinities_and_puts_nan_last(dtype):
    scores = torch.tensor([[float("nan"), float("inf"), 1.0, -3.0, 0.5], [0.0, float("-inf"), float("inf"), -1.0, 2.0]], dtype=dtype)
    ranks = torch.tensor([[4, 0, 1, 3, 2], [2, 4, 0, 3, 1]])
    assert torch.equal(rank_transform(scores, 0.05), (ranks + 1).float() ** -0.05)


def test_rank_transform_keeps_float64_precision_and_takes_any_layout():
    close = torch.tensor([[1.0, 1.0 + 1e-12, 0.5]], dtype=torch.float64)   # equal in float32
    assert torch.equal(rank_transform(close, 0.05), torch.tensor([[2.0, 1.0, 3.0]]) ** -0.05)
    table = torch.randn(30, 4, requires_grad=True)
    assert torch.equal(rank_transform(table.T, 0.05), rank_transform(table.detach().T.contiguous(), 0.05))


def test_ensemble_is_mean_of_rank_transforms_and_ignores_scale():
    rng = np.random.default_rng(0)
    a = torch.as_tensor(rng.standard_normal((6, 9)), dtype=torch.float32)
    b = torch.as_tensor(rng.standard_normal((6, 9)), dtype=torch.float32)
    teacher = Ensemble([TableModel(a), TableModel(1000 * b)], 0.05)
    users = torch.tensor([4, 0, 2])
    want = (rank_transform(a[users], 0.05) + rank_transform(b[users], 0.05)) / 2
    assert torch.allclose(teacher.score(users), want)
    assert teacher.n_items == 9 and len(teacher) == 2
    # A member scaled by 1000 ranks exactly like the original: scale does not matter.
    assert torch.allclose(Ensemble([TableModel(a * 1000)], 0.05).score(users), Ensemble([TableModel(a)], 0.05).score(users))


def test_ensemble_rejects_bad_members():
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([], 0.05)
    with pytest.raises(ValueError, match="different item counts"):
        Ensemble([TableModel(torch.zeros(2, 3)), TableModel(torch.zeros(2, 4))], 0.05)


def _brute_force_topk(dense: np.ndarray, exclude: np.ndarray, k: int):
    """Per row, the k best columns not excluded, as lists of (column, score)."""
    masked = dense.astype(np.float64).copy()
    masked[exclude[:, 0], exclude[:, 1]] = -np.inf
    out = []
    for row in masked:
        order = [int(c) for c in np.argsort(-row, kind="stable") if np.isfinite(row[c])][:k]
        out.append([(c, float(row[c])) for c in order])
    return out


@pytest.mark.parametrize("seed", range(4))
def test_write_topk_matches_dense_brute_force(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n_users, n_items, k = 23, 17, 5
    dense = rng.standard_normal((n_users, n_items)).astype(np.float32)
    exclude = np.array([(u, i) for u in range(n_users) for i in range(n_items) if rng.random() < 0.3])
    exclude = np.concatenate([exclude, [(0, i) for i in range(n_items - 2)]])  # user 0: 2 items left
    model = TableModel(torch.as_tensor(dense))
    out = write_topk(model.score, n_users, n_items, exclude, tmp_path, k_user=k, k_item=k, batch_users=4)
    assert out["user_topk"] == tmp_path / "user_topk.parquet" and out["item_topk"].exists()

    items, item_scores = read_topk(out["user_topk"])
    assert items.shape == (n_users, k)
    for u, want in enumerate(_brute_force_topk(dense, exclude, k)):
        assert items[u, : len(want)].tolist() == [c for c, _ in want]
        assert np.allclose(item_scores[u, : len(want)], [s for _, s in want])
        assert (items[u, len(want) :] == -1).all() and np.isneginf(item_scores[u, len(want) :]).all()
    assert out["user_rows"] == sum(len(w) for w in _brute_force_topk(dense, exclude, k))

    users, user_scores = read_topk(out["item_topk"])
    assert users.shape == (n_items, k)
    for i, want in enumerate(_brute_force_topk(dense.T, exclude[:, ::-1], k)):
        assert users[i, : len(want)].tolist() == [c for c, _ in want]
        assert np.allclose(user_scores[i, : len(want)], [s for _, s in want])


def test_write_topk_layout_and_no_exclusion(tmp_path):
    dense = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]])
    out = write_topk(TableModel(dense).score, 2, 3, np.zeros((0, 2)), tmp_path, k_user=2, k_item=5, batch_users=1024)
    table = pq.read_table(out["user_topk"]).to_pydict()
    assert table == {"user": [0, 0, 1, 1], "rank": [0, 1, 0, 1], "item": [0, 2, 1, 2], "score": [3.0, 2.0, 5.0, 4.0]}
    # k_item is clamped to the number of users.
    users, _ = read_topk(out["item_topk"])
    assert users.tolist() == [[0, 1], [1, 0], [1, 0]]
    assert not list(tmp_path.glob(".tmp-*"))


def test_write_topk_clears_a_killed_writes_leftovers_but_not_other_runs(tmp_path):
    """A killed write leaves `.tmp-*` files beside the lists; the stage's re-run removes them.
    Another run key's lists live in a subfolder (`run=<key>`) and may be mid-write: untouched."""
    leftover, other_run = tmp_path / ".tmp-killed.parquet", tmp_path / "run=other" / ".tmp-writing.parquet"
    other_run.parent.mkdir()
    for path in (leftover, other_run):
        path.write_bytes(b"partial")
    dense = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]])
    write_topk(TableModel(dense).score, 2, 3, np.zeros((0, 2)), tmp_path, k_user=2, k_item=2, batch_users=1024)
    assert not leftover.exists()
    assert other_run.read_bytes() == b"partial"


def test_ensemble_feeds_write_topk(tmp_path):
    rng = np.random.default_rng(1)
    members = [TableModel(torch.as_tensor(rng.standard_normal((8, 12)), dtype=torch.float32)) for _ in range(3)]
    teacher = Ensemble(members, 0.05)
    out = write_topk(teacher.score, 8, 12, np.zeros((0, 2)), tmp_path, k_user=12, k_item=8, batch_users=3)
    items, scores = read_topk(out["user_topk"])
    dense = teacher.score(torch.arange(8)).numpy()
    assert np.allclose(np.sort(scores, axis=1)[:, ::-1], np.sort(dense, axis=1)[:, ::-1])
    assert np.allclose(np.take_along_axis(dense, items, 1), scores)


def test_stored_topk_gives_the_ensembles_metrics(tmp_path):
    # Lists written without the seen pairs rank like the ensemble itself at cut-offs <= K.
    rng = np.random.default_rng(2)
    members = [TableModel(torch.as_tensor(rng.standard_normal((30, 60)), dtype=torch.float32)) for _ in range(3)]
    teacher = Ensemble(members, 0.05)
    seen = np.argwhere(rng.random((30, 60)) < 0.2)
    truth = np.argwhere(rng.random((30, 60)) < 0.1)
    out = write_topk(teacher.score, 30, 60, seen, tmp_path, k_user=15, k_item=5, batch_users=7)
    stored = StoredTopK(out["user_topk"], 60)
    for ks in [(5,), (15,)]:
        assert rank_metrics(stored.score, truth, seen, 60, ks=ks) == rank_metrics(teacher.score, truth, seen, 60, ks=ks)
    assert torch.isinf(stored.score(torch.tensor([40]))).all()  # a user past the lists ranks nothing
