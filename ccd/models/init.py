"""Initial embeddings for users and items that first appear in a new block (spec 2.3b).

A new id starts from what its neighbours in the new block already know, not from noise:

- one-hop: the mean of the *old* embeddings on the other side that the entity interacted with
  in the block (a new user: the old items it touched); zero when it touched none;
- two-hop: the mean of K old embeddings on its own side: the old entities that share at least
  one neighbour with it in the block, ranked by popularity (number of pairs in the block), and
  padded with the most popular other old entities when there are fewer than K;
- the initial embedding is (one-hop + two-hop) / 2.

Bug B9 of the authors' code is avoided by construction: the two-hop choice is one top-K over a
key (shares a neighbour, then popularity, then lower id), so exactly K sharing candidates give
exactly those K, and never "all old entities". Users and items are handled by the same
functions, with the pairs' columns swapped for items.

"Old" ids are `0..n_old-1` (the rows of the table passed in); ids are cumulative, so every id
past the old table is new.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

INIT_STD = 0.01  # spec 1: every embedding starts from N(0, 0.01^2)
Init = Literal["neighbour", "random"]


def random_rows(n: int, dim: int, generator: torch.Generator | None = None, device: torch.device | None = None) -> torch.Tensor:
    """(n, dim) rows drawn from N(0, 0.01^2)."""
    rows = torch.empty(n, dim, device=device)
    return torch.nn.init.normal_(rows, 0.0, INIT_STD, generator=generator)


def one_hop(other: torch.Tensor, pairs: np.ndarray, n_own_old: int, n_own: int) -> torch.Tensor:
    """Mean old neighbour embedding of each new id.

    Parameters
    ----------
    other : torch.Tensor, shape (n_other_old, d)
        Old embeddings of the other side (items, when initialising users).
    pairs : np.ndarray, shape (N, 2)
        (own id, other id) pairs of the new block's training data.
    n_own_old, n_own : int
        Old and new size of the own side; rows are produced for ids n_own_old..n_own-1.

    Returns
    -------
    torch.Tensor, shape (n_own - n_own_old, d)
        Zero for a new id without old neighbours.
    """
    pairs = _unique(pairs)
    keep = (pairs[:, 0] >= n_own_old) & (pairs[:, 1] < len(other))
    own = torch.as_tensor(pairs[keep, 0] - n_own_old, device=other.device)
    nbr = torch.as_tensor(pairs[keep, 1], device=other.device)
    n_new = n_own - n_own_old
    sums = torch.zeros(n_new, other.shape[1], dtype=other.dtype, device=other.device).index_add_(0, own, other[nbr])
    counts = torch.bincount(own, minlength=n_new).clamp(min=1).to(other.dtype)
    return sums / counts[:, None]


def two_hop(own: torch.Tensor, pairs: np.ndarray, n_own: int, k: int, chunk: int = 256) -> torch.Tensor:
    """Mean embedding of the K old same-side entities chosen for each new id.

    For new id u, old entity v is ranked by (v shares a neighbour with u in `pairs`, popularity
    of v in `pairs`, lower id first) and the top min(K, n_old) are averaged: sharing entities
    come first, the K most popular of them when there are more than K, padded with the most
    popular others when there are fewer (spec 2.3b, without bug B9).

    Parameters
    ----------
    own : torch.Tensor, shape (n_old, d)
        Old embeddings of the own side.
    pairs : np.ndarray, shape (N, 2)
        (own id, other id) pairs of the new block's training data.
    n_own : int
        New size of the own side; rows are produced for ids n_old..n_own-1.
    k : int
        Candidates per new id (`init_topk`, 20 in the spec).
    chunk : int
        New ids per step; memory is O(chunk x (n_old + n_other)).

    Returns
    -------
    torch.Tensor, shape (n_own - n_old, d)
        Zero when there is no old entity at all.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_old, device = own.shape[0], own.device
    n_new = n_own - n_old
    if n_old == 0 or n_new == 0:
        return torch.zeros(n_new, own.shape[1], dtype=own.dtype, device=device)
    pairs = _unique(pairs)
    n_other = int(pairs[:, 1].max()) + 1 if len(pairs) else 1
    old = pairs[pairs[:, 0] < n_old]
    new = pairs[pairs[:, 0] >= n_old]
    # Old side as a sparse (n_old, n_other) 0/1 matrix; popularity = its row sums.
    old_t = torch.as_tensor(old.T, device=device)
    graph = torch.sparse_coo_tensor(
        old_t, torch.ones(len(old), device=device), (n_old, n_other), check_invariants=True
    ).coalesce()
    popularity = torch.bincount(old_t[0], minlength=n_old)  # (n_old,)
    ids = torch.arange(n_old, device=device)
    # One integer key orders everything: shares a neighbour >> popularity >> lower id.
    key = popularity * n_old + (n_old - 1 - ids)  # (n_old,)
    bonus = (int(popularity.max()) + 1) * n_old  # larger than any `key`
    take = min(k, n_old)
    new_own = torch.as_tensor(new[:, 0] - n_old, device=device)
    new_other = torch.as_tensor(new[:, 1], device=device)
    rows = []
    for start in range(0, n_new, chunk):
        stop = min(start + chunk, n_new)
        inside = (new_own >= start) & (new_own < stop)
        neighbours = torch.zeros(n_other, stop - start, device=device)  # (n_other, C)
        neighbours[new_other[inside], new_own[inside] - start] = 1.0
        shares = torch.sparse.mm(graph, neighbours).T > 0  # (C, n_old): shares a neighbour
        chosen = torch.topk(key + shares.long() * bonus, take, dim=1).indices  # (C, take)
        rows.append(own[chosen].mean(dim=1))  # (C, d)
    return torch.cat(rows)


def neighbour_rows(own: torch.Tensor, other: torch.Tensor, pairs: np.ndarray, n_own: int, k: int) -> torch.Tensor:
    """CCD initial rows for new ids: (one_hop + two_hop) / 2, shape (n_own - len(own), d)."""
    return (one_hop(other, pairs, len(own), n_own) + two_hop(own, pairs, n_own, k)) / 2


@torch.no_grad()
def grow_tables(
    users: torch.Tensor,
    items: torch.Tensor,
    pairs: np.ndarray,
    n_users: int,
    n_items: int,
    init: Init,
    k: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Enlarged copies of a user and an item table, old rows first and unchanged.

    Parameters
    ----------
    users : torch.Tensor, shape (U_old, d)
    items : torch.Tensor, shape (I_old, d)
    pairs : np.ndarray, shape (N, 2)
        (user, item) training pairs of the new block.
    n_users, n_items : int
        New sizes (at least the old ones).
    init : {"neighbour", "random"}
    k : int
        Two-hop candidates for "neighbour".
    generator : torch.Generator, optional
        For "random".

    Returns
    -------
    users, items : torch.Tensor, shapes (n_users, d) and (n_items, d)
    """
    if n_users < len(users) or n_items < len(items):
        raise ValueError(f"cannot shrink {len(users)} x {len(items)} tables to {n_users} x {n_items}")
    pairs = _unique(pairs)
    if init == "neighbour":
        new_users = neighbour_rows(users, items, pairs, n_users, k)
        new_items = neighbour_rows(items, users, pairs[:, ::-1], n_items, k)
    elif init == "random":
        new_users = random_rows(n_users - len(users), users.shape[1], generator, users.device)
        new_items = random_rows(n_items - len(items), items.shape[1], generator, items.device)
    else:
        raise ValueError(f"init must be 'neighbour' or 'random', got {init!r}")
    return torch.cat([users, new_users]), torch.cat([items, new_items])


def _unique(pairs: np.ndarray) -> np.ndarray:
    """Distinct pairs (N, 2) int64: popularity counts a pair once, however often it repeats."""
    return np.unique(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=0)
