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
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def contrastive_kd_loss(
    anchors_prev: torch.Tensor,
    candidates: torch.Tensor,
    pos_rows: torch.Tensor,
    pos_cols: torch.Tensor,
    tau: float = 5.0,
) -> torch.Tensor:
    """Contrastive distillation loss for a batch of anchors.

    Parameters
    ----------
    anchors_prev : (B, d)  frozen previous-state embeddings of the anchors
    candidates : (C, d)    current embeddings of the candidate entities (gradients flow here)
    pos_rows, pos_cols : (P,) int64
        Positive pairs as (anchor row in 0..B-1, candidate column in 0..C-1).
    tau : softmax temperature

    Returns
    -------
    Scalar tensor: mean over anchors with at least one positive of the negative mean
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
    return -(per_anchor[has_pos] / counts[has_pos]).mean()


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


def similarity_graph(pairs: np.ndarray, n_rows: int, n_cols: int, degree: int = 10,
                     min_similarity: float = 0.1, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `degree` most cosine-similar other rows of a binary interaction matrix.

    Rows are users (pairs (user, item)) or, with the columns swapped, items. The authors search
    a global similarity threshold so that the mean degree is about 10; taking each row's top 10
    neighbours above a small floor gives the same mean degree in one chunked pass, and no
    entity is left without neighbours just because it is in a sparse region.

    Returns the CSR (indptr, indices) of the neighbour lists; self-loops are excluded.
    """
    matrix = torch.sparse_coo_tensor(
        torch.as_tensor(pairs.T, dtype=torch.long), torch.ones(len(pairs)), (n_rows, n_cols), check_invariants=True
    ).coalesce().to_sparse_csr()
    norms = torch.sqrt(torch.bincount(torch.as_tensor(pairs[:, 0]), minlength=n_rows).float()).clamp_min(1e-12)
    rows_out, cols_out = [], []
    for start in range(0, n_rows, batch):
        stop = min(start + batch, n_rows)
        block = _dense_rows(matrix, start, stop)                                   # (b, n_cols)
        overlap = torch.sparse.mm(matrix, block.T).T                               # (b, n_rows)
        sims = overlap / (norms[start:stop, None] * norms[None, :])
        sims[torch.arange(stop - start), torch.arange(start, stop)] = -1.0         # no self-loops
        values, neighbours = sims.topk(min(degree, n_rows - 1), dim=1)
        keep = values >= min_similarity
        rows_out.append(torch.arange(start, stop)[:, None].expand_as(neighbours)[keep].numpy())
        cols_out.append(neighbours[keep].numpy())
    return csr_from_pairs(np.concatenate(rows_out), np.concatenate(cols_out), n_rows)


def _dense_rows(matrix: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    crow = matrix.crow_indices()
    lo, hi = int(crow[start]), int(crow[stop])
    local = torch.sparse_csr_tensor(crow[start:stop + 1] - lo, matrix.col_indices()[lo:hi], matrix.values()[lo:hi],
                                    (stop - start, matrix.shape[1]), check_invariants=True)
    return local.to_dense()
