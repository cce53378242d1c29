"""Layer-wise contrastive knowledge distillation (LWC-KD), the teacher's memory of itself.

When a teacher member trains on block k, its frozen block-(k-1) state anchors it: a user's OLD
embedding should still pick out, among the CURRENT embeddings of the previous block's items, the
items the user interacted with (and symmetrically for items, and for user-user and item-item
neighbours):

    L = - mean_a [ 1/|P_a| * sum_{p in P_a} log softmax_{c in C}( e_prev(a) . e_cur(c) / tau )_p ]

Anchors a are the batch's users (or items) that existed at k-1; candidates C are all entities
of the other (or same) side that appear in block k-1's training data; P_a are a's positives
there. The "before" embeddings are looked up by entity id, never by position in a sorted id
list (the authors' bug B8).

`LwcKd` adds the four terms (user-item, item-user, user-user, item-item) to the one training
loop as an `Extension`; `imitation_weights` gives the personalised weights that scale the user
terms (PIW, without the authors' bug B7). The authors' DEC cluster loss is left out: its
gradients reach only the cluster centres, which feed only their learned PIW, and the weights
here need no training.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ccd.config import ContinualConfig
from ccd.models import Batch, Recommender
from ccd.models.lightgcn import SymmetricSpmm


def contrastive_kd_loss(
    anchors_prev: torch.Tensor,
    candidates: torch.Tensor,
    pos_rows: torch.Tensor,
    pos_cols: torch.Tensor,
    tau: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contrastive distillation loss for a batch of anchors.

    Parameters
    ----------
    anchors_prev : (B, d)  frozen previous-state embeddings of the anchors
    candidates : (C, d)    current embeddings of the candidate entities (gradients flow here)
    pos_rows, pos_cols : (P,) int64
        Positive pairs as (anchor row in 0..B-1, candidate column in 0..C-1).
    tau : softmax temperature
    weights : (B,), optional
        Per-anchor weights (personalised imitation weights). They are normalised to mean 1 over
        the anchors with a positive, so the loss is a weighted mean: each anchor's own term is
        scaled, unlike the authors' (B, 1) x (B,) broadcast whose mean ignores them (bug B7).

    Returns
    -------
    Scalar tensor: (weighted) mean over anchors with at least one positive of the negative mean
    log-probability of their positives; 0 when no anchor has a positive.
    """
    if pos_rows.numel() == 0:
        return candidates.sum() * 0.0
    log_prob = F.log_softmax(anchors_prev @ candidates.T / tau, dim=1)     # (B, C)
    picked = log_prob[pos_rows, pos_cols]                                  # (P,)
    n_anchors = anchors_prev.shape[0]
    per_anchor = torch.zeros(n_anchors, dtype=picked.dtype, device=picked.device).index_add_(0, pos_rows, picked)
    counts = torch.bincount(pos_rows, minlength=n_anchors)
    has_pos = counts > 0
    terms = per_anchor[has_pos] / counts[has_pos]                          # (B',)
    if weights is None:
        return -terms.mean()
    w = weights[has_pos].to(terms.dtype)
    return -(w * terms).sum() / w.sum()


def positives_in_batch(batch: np.ndarray, indptr: np.ndarray, indices: np.ndarray, column_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive (row, column) pairs for a batch of anchors, from a CSR adjacency.

    Parameters
    ----------
    batch : (B,) anchor ids
    indptr, indices : CSR of the anchors' neighbours (entity ids), over all anchor ids
    column_of : (n_entities,) int64, candidate column of each neighbour id, -1 if not a candidate
    """
    starts, ends = indptr[batch], indptr[batch + 1]
    lengths = ends - starts
    rows = np.repeat(np.arange(len(batch)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    cols = column_of[indices[np.repeat(starts, lengths) + offsets]]
    keep = cols >= 0
    return rows[keep], cols[keep]


def csr_from_pairs(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, indices) of pairs, indices sorted within each row."""
    order = np.lexsort((cols, rows))
    indptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, cols[order].astype(np.int64)


def similarity_graph(pairs: np.ndarray, n_rows: int, n_cols: int, degree: int,
                     min_similarity: float, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `degree` most cosine-similar other rows of a binary interaction matrix.

    Rows are users (pairs (user, item)) or, with the columns swapped, items. The authors search
    a global similarity threshold so that the mean degree is about 10; taking each row's top 10
    neighbours above a small floor gives the same mean degree in one chunked pass, and no
    entity is left without neighbours just because it is in a sparse region.

    Only rows that share a column have a non-zero similarity, so overlaps are counted from the
    co-occurring pairs (sum over columns of degree^2, chunked by `batch` rows) rather than from
    dense (rows x rows) blocks: seconds instead of a minute on a Gowalla block. Ties go to the
    smaller row id. `pairs` must be distinct.

    Returns the CSR (indptr, indices) of the neighbour lists; self-loops are excluded.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    norms = np.sqrt(np.bincount(pairs[:, 0], minlength=n_rows).astype(np.float64))
    col_ptr, col_rows = csr_from_pairs(pairs[:, 1], pairs[:, 0], n_cols)  # column -> its rows
    rows_out, cols_out = [], []
    for start in range(0, n_rows, batch):
        mine = pairs[(pairs[:, 0] >= start) & (pairs[:, 0] < start + batch)]
        rows, cols, overlap = _co_occurrences(mine, col_ptr, col_rows, n_rows)
        sims = overlap / (norms[rows] * norms[cols])
        keep = (rows != cols) & (sims >= min_similarity)
        rows, cols, sims = rows[keep], cols[keep], sims[keep]
        order = np.lexsort((cols, -sims, rows))                      # per row: most similar first
        rows, cols = rows[order], cols[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows)    # position within the row
        rows_out.append(rows[rank < degree])
        cols_out.append(cols[rank < degree])
    return csr_from_pairs(np.concatenate(rows_out), np.concatenate(cols_out), n_rows)


def _co_occurrences(pairs: np.ndarray, col_ptr: np.ndarray, col_rows: np.ndarray,
                    n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, other row, number of shared columns) for every row in `pairs` and every row that
    shares a column with it."""
    starts, lengths = col_ptr[pairs[:, 1]], np.diff(col_ptr)[pairs[:, 1]]
    rows = np.repeat(pairs[:, 0], lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    others = col_rows[np.repeat(starts, lengths) + offsets]
    keys, overlap = np.unique(rows * n_rows + others, return_counts=True)
    return keys // n_rows, keys % n_rows, overlap.astype(np.float64)


def layer_tables(model: Recommender) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (users (n_users, d), items (n_items, d)) tables LWC-KD compares, one pair per layer.

    Layer 0 is the ego tables; a LightGCN also gives layer 1, one propagation over its current
    graph (spec 2.4: LightGCN's terms are taken on layers 0 and 1 and averaged). Gradients flow
    when called with autograd on.
    """
    users, items = model.user_item_representations()["ego"]
    layers = [(users, items)]
    if model.kind == "lightgcn" and model.config.layers >= 1:
        both = SymmetricSpmm.apply(model.graph.to(users.device), torch.cat([users, items]))  # (n_users + n_items, d)
        layers.append((both[: model.n_users], both[model.n_users :]))
    return layers


@torch.no_grad()
def imitation_weights(previous: Recommender, pairs: np.ndarray, temperature: float) -> torch.Tensor:
    """Personalised imitation weight of every old user, shape (previous.n_users,).

    A user whose new interactions sit far from its old taste has changed and should imitate its
    old self less (plasticity), one whose new items confirm it should imitate more (stability).
    With e_u the user's previous ego embedding and m_u the mean previous ego embedding of its
    old items in the new block's `pairs`, shift_u = 1 - cos(e_u, m_u) in [0, 2] and the weight
    is exp(-shift_u / temperature). A user with no old item in the block has nothing to compare
    and gets shift 0 (weight 1, the largest). The authors' learned PIW never reaches the loss
    (B7); this parameter-free weight does, and needs no cluster loss to train it.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    users, items = (t.detach() for t in previous.user_item_representations()["ego"])
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    old = pairs[(pairs[:, 0] < len(users)) & (pairs[:, 1] < len(items))]
    rows = torch.as_tensor(old[:, 0], device=users.device)
    sums = torch.zeros_like(users).index_add_(0, rows, items[torch.as_tensor(old[:, 1], device=users.device)])
    counts = torch.bincount(rows, minlength=len(users))                              # (n_users,)
    shift = 1.0 - F.cosine_similarity(users, sums, dim=1)                            # mean's direction = sum's
    shift = torch.where(counts > 0, shift, torch.zeros_like(shift))
    return torch.exp(-shift / temperature)


class LwcKd:
    """`ccd.train.Extension`: LWC-KD of a model against a frozen copy of its previous state.

    Per batch, with anchors the batch's users (and positive items) that were active in the
    previous block, at most `config.lwckd_anchors` of each:

        weight * mean over layers of (L_UI + L_IU + L_UU + L_II)

    L_UI: a user's previous embedding must pick out, among the current embeddings of all items
    of the previous block's training data, the items it had there; L_IU the same from items to
    users; L_UU and L_II use the user-user / item-item similarity graphs of the previous block
    as positives (`contrastive_kd_loss`, `similarity_graph`). Previous embeddings are looked up
    by entity id in the frozen tables (never by position in a list of active ids, bug B8), and
    the user terms carry the personalised imitation weights when `config.piw` is on.

    Parameters
    ----------
    model : Recommender
        The model being trained, grown to the new block's id space.
    previous : Recommender
        Its state after the previous block (not modified; its tables are copied).
    previous_train : np.ndarray, shape (N, 2)
        The previous block's training pairs: candidates and positives.
    train : np.ndarray, shape (M, 2)
        The new block's training pairs: for the imitation weights, and with
        `config.lwckd_moves = "block"` the only candidates whose rows LWC-KD moves.
    config : ContinualConfig
    """

    def __init__(self, model: Recommender, previous: Recommender, previous_train: np.ndarray, train: np.ndarray, config: ContinualConfig) -> None:
        self.model, self.config = model, config
        device = model.device
        with torch.no_grad():
            self.previous = [(u.detach().to(device).clone(), i.detach().to(device).clone()) for u, i in layer_tables(previous)]
        n_users, n_items = previous.n_users, previous.n_items
        pairs = np.unique(np.asarray(previous_train, dtype=np.int64).reshape(-1, 2), axis=0)
        self.users = torch.as_tensor(np.unique(pairs[:, 0]), device=device)                # candidate users (C_u,)
        self.items = torch.as_tensor(np.unique(pairs[:, 1]), device=device)                # candidate items (C_i,)
        self.user_column = _columns(self.users, n_users)
        self.item_column = _columns(self.items, n_items)
        self.user_items = csr_from_pairs(pairs[:, 0], pairs[:, 1], n_users)
        self.item_users = csr_from_pairs(pairs[:, 1], pairs[:, 0], n_items)
        self.user_users = similarity_graph(pairs, n_users, n_items, config.graph_degree, config.graph_min_similarity)
        self.item_items = similarity_graph(pairs[:, ::-1].copy(), n_items, n_users, config.graph_degree,
                                           config.graph_min_similarity)
        self.active_users = torch.as_tensor(np.diff(self.user_items[0]) > 0, device=device)  # (n_users,)
        self.active_items = torch.as_tensor(np.diff(self.item_users[0]) > 0, device=device)  # (n_items,)
        # Candidates whose current rows LWC-KD's gradient may move (`ContinualConfig.lwckd_moves`).
        train = np.asarray(train, dtype=np.int64).reshape(-1, 2)
        everyone = config.lwckd_moves == "all"
        self.users_move = _in_block(self.users, train[:, 0], everyone)  # (C_u,)
        self.items_move = _in_block(self.items, train[:, 1], everyone)  # (C_i,)
        self.piw = imitation_weights(previous, train, config.piw_temperature).to(device) if config.piw else None

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(())

    def start_epoch(self, epoch: int) -> None:
        """Nothing changes between epochs: the previous state is frozen."""

    def loss(self, batch: Batch) -> torch.Tensor:
        """The batch's LWC-KD terms, a scalar."""
        users = self._anchors(batch.users, self.active_users, batch.generator)
        items = self._anchors(batch.pos, self.active_items, batch.generator)
        weights = None if self.piw is None else self.piw[users]
        users_np, items_np = users.cpu().numpy(), items.cpu().numpy()
        total = torch.zeros((), device=self.model.device)
        current = layer_tables(self.model)
        for (prev_u, prev_i), (cur_u, cur_i) in zip(self.previous, current):
            cand_u = _frozen_unless(cur_u[self.users], self.users_move)                # (C_u, d)
            cand_i = _frozen_unless(cur_i[self.items], self.items_move)                # (C_i, d)
            total = total + self._term(prev_u[users], cand_i, users_np, self.user_items, self.item_column, weights)
            total = total + self._term(prev_i[items], cand_u, items_np, self.item_users, self.user_column, None)
            total = total + self._term(prev_u[users], cand_u, users_np, self.user_users, self.user_column, weights)
            total = total + self._term(prev_i[items], cand_i, items_np, self.item_items, self.item_column, None)
        return self.config.lwckd_weight * total / len(current)

    def _anchors(self, ids: torch.Tensor, active: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Distinct ids of the batch that were active in the previous block, at most `lwckd_anchors`."""
        ids = torch.unique(ids)
        ids = ids[ids < len(active)]
        ids = ids[active[ids]]
        if len(ids) > self.config.lwckd_anchors:
            pick = torch.randperm(len(ids), generator=generator, device=generator.device)[: self.config.lwckd_anchors]
            ids = ids[pick.to(ids.device)]
        return ids

    def _term(self, anchors_prev, candidates, anchor_ids, graph, column_of, weights) -> torch.Tensor:
        rows, cols = positives_in_batch(anchor_ids, graph[0], graph[1], column_of)
        device = candidates.device
        return contrastive_kd_loss(anchors_prev, candidates, torch.as_tensor(rows, device=device),
                                   torch.as_tensor(cols, device=device), self.config.lwckd_tau, weights)


def _in_block(ids: torch.Tensor, block_ids: np.ndarray, everyone: bool) -> torch.Tensor:
    """Boolean mask over `ids`: which occur in `block_ids` (all True when `everyone`)."""
    inside = np.ones(len(ids), bool) if everyone else np.isin(ids.cpu().numpy(), block_ids)
    return torch.as_tensor(inside, device=ids.device)


def _frozen_unless(rows: torch.Tensor, moves: torch.Tensor) -> torch.Tensor:
    """`rows` (C, d) with the gradient stopped wherever `moves` (C,) is False; same values."""
    return torch.where(moves[:, None], rows, rows.detach())


def _columns(ids: torch.Tensor, n: int) -> np.ndarray:
    """Candidate column of every entity id 0..n-1 (-1 for entities that are not candidates)."""
    column = np.full(n, -1, np.int64)
    column[ids.cpu().numpy()] = np.arange(len(ids))
    return column
