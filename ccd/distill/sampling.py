"""Teacher lists and the interesting / uninteresting sets of RRD (DE-RRD §3, IR-RRD).

For every user (or, on the item side, every item) the teacher gives a ranked list of its top-N
*unobserved* entities. Each epoch draws from it:

- interesting: K entities in teacher order. By default the teacher's top-K itself, which the
  authors later found better than sampling (spec §3, "later author note"); optionally K ranks
  drawn without replacement with p(r) ∝ exp(−r/T) from the top-N and sorted, as in the paper;
- uninteresting: L entities drawn uniformly without replacement from those neither observed
  nor in the teacher's top-N.

Observed training pairs never count as interesting (the authors' bug B1): `clean_lists` drops
them from any list, whether it comes from a model's scores or from `ccd.ensemble.read_topk`.
Everything is vectorised over all rows: membership tests are one `searchsorted` over sorted
pair codes, and sampling without replacement is a Gumbel top-k or a rejection loop over the
whole matrix at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from ccd.evaluate import UserItemCSR

ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # users (B,) -> scores (B, n_items)


class PairSet:
    """A set of (row, column) pairs for fast vectorised membership tests.

    Parameters
    ----------
    pairs : torch.Tensor or np.ndarray, shape (P, 2), int
        Pairs with 0 <= column < n_cols; duplicates are fine.
    n_cols : int
    device : torch device, optional

    Attributes
    ----------
    codes : torch.Tensor, shape (P',), int64
        Sorted unique codes row * n_cols + column.
    """

    def __init__(self, pairs: torch.Tensor | np.ndarray, n_cols: int, device: torch.device | str | None = None) -> None:
        pairs = torch.as_tensor(np.asarray(pairs) if isinstance(pairs, np.ndarray) else pairs, dtype=torch.long, device=device)
        pairs = pairs.reshape(-1, 2)
        self.n_cols = int(n_cols)
        self.codes = torch.unique(pairs[:, 0] * self.n_cols + pairs[:, 1])  # sorted

    def contains(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Whether each (rows[...], cols[...]) pair is in the set; broadcast shapes, bool."""
        codes = rows * self.n_cols + cols
        if len(self.codes) == 0:
            return torch.zeros(codes.shape, dtype=torch.bool, device=codes.device)
        where = torch.searchsorted(self.codes, codes.reshape(-1)).clamp_max(len(self.codes) - 1)
        return (self.codes[where] == codes.reshape(-1)).reshape(codes.shape)

    def row_counts(self, n_rows: int) -> torch.Tensor:
        """Number of pairs in each row 0..n_rows-1, shape (n_rows,)."""
        return torch.bincount(self.codes // self.n_cols, minlength=n_rows)[:n_rows]

    def pairs(self) -> torch.Tensor:
        """The distinct pairs, shape (P', 2), sorted by (row, column)."""
        return torch.stack([self.codes // self.n_cols, self.codes % self.n_cols], 1)

    def transposed(self, n_rows: int) -> "PairSet":
        """The same pairs as (column, row); `n_rows` (this set's row count) becomes the column
        count. Turns observed (user, item) pairs into (item, user) ones for IR-RRD."""
        return PairSet(self.pairs().flip(1), n_rows, self.codes.device)

    def union(self, pairs: torch.Tensor) -> "PairSet":
        """A new set with `pairs` (P, 2) added."""
        return PairSet(torch.cat([self.pairs(), pairs.to(self.codes.device).reshape(-1, 2)]), self.n_cols, self.codes.device)


def clean_lists(ids: torch.Tensor | np.ndarray, observed: PairSet) -> torch.Tensor:
    """Drop observed and padding (-1) entries from ranked lists, keeping the order.

    Parameters
    ----------
    ids : shape (R, N), int
        Row r: entity r's teacher list, best first (`read_topk` pads short lists with -1).
    observed : PairSet
        (row, id) pairs that must never be interesting: the training pairs (bug B1).

    Returns
    -------
    torch.Tensor, shape (R, N'), int64
        The valid entries of each row, moved to the front in their order and cut to the
        shortest row's count N', so every row holds N' valid ids.
    """
    ids = torch.as_tensor(ids, dtype=torch.long, device=observed.codes.device)
    rows = torch.arange(len(ids), device=ids.device)[:, None]
    valid = (ids >= 0) & ~observed.contains(rows, ids.clamp_min(0))  # (R, N)
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices  # valid first, in order
    width = int(valid.sum(1).min()) if len(ids) else 0
    return torch.gather(ids, 1, order)[:, :width]


@torch.no_grad()
def teacher_lists(
    score_fn: ScoreFn,
    n_users: int,
    n_items: int,
    observed: PairSet,
    n_user: int,
    n_item: int,
    batch_users: int,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each user's top `n_user` unobserved items and each item's top `n_item` users.

    Scores are computed one chunk of users at a time; observed pairs get -inf first, so they
    are never in either list. The item side keeps a running top-`n_item` per item over the
    chunks (memory n_items x (n_item + batch_users)).

    Parameters
    ----------
    score_fn : callable
        `users` (B,) -> teacher scores (B, n_items), e.g. `model.score` or `Ensemble.score`.
    observed : PairSet
        (user, item) training pairs, `n_cols == n_items`.
    n_user, n_item : int
        List lengths; `n_item = 0` skips the item side.

    Returns
    -------
    user_lists : torch.Tensor, shape (n_users, n_user'), int64
    item_lists : torch.Tensor, shape (n_items, n_item'), int64, or None
        Cut to the shortest row (`clean_lists`), so an entity with fewer free candidates than
        asked shortens every list; callers check that K fits.
    """
    n_user, n_item = min(n_user, n_items), min(n_item, n_users)
    seen = UserItemCSR.from_pairs(observed.pairs().cpu().numpy(), n_users)
    user_parts, best_scores, best_users = [], None, None
    for start in tqdm(range(0, n_users, batch_users), desc="teacher lists", unit="chunk", leave=False, disable=None):
        chunk = torch.arange(start, min(start + batch_users, n_users), device=device)
        scores = score_fn(chunk).float().clone()  # (B, n_items)
        chunk = chunk.to(scores.device)
        seen = seen.to(scores.device)  # copied to a GPU once, with the first chunk
        rows, items = seen.gather(chunk)
        scores[rows, items] = float("-inf")
        user_parts.append(torch.topk(scores, n_user, dim=1).indices)  # (B, n_user)
        if n_item:
            if best_scores is None:
                best_scores = torch.full((n_items, n_item), float("-inf"), device=scores.device)
                best_users = torch.full((n_items, n_item), -1, dtype=torch.long, device=scores.device)
            pool_scores = torch.cat([best_scores, scores.T], 1)  # (n_items, n_item + B)
            pool_users = torch.cat([best_users, chunk[None, :].expand(n_items, -1)], 1)
            best = torch.topk(pool_scores, n_item, dim=1)
            best_scores, best_users = best.values, torch.gather(pool_users, 1, best.indices)
    user_lists = clean_lists(torch.cat(user_parts), observed)
    if not n_item:
        return user_lists, None
    best_users = torch.where(torch.isfinite(best_scores), best_users, torch.full_like(best_users, -1))
    return user_lists, clean_lists(best_users, observed.transposed(n_users))


def sample_interesting(
    lists: torch.Tensor, k: int, sample: bool, temperature: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """K interesting entities per row, in teacher order.

    Parameters
    ----------
    lists : torch.Tensor, shape (R, N), int64
        Teacher lists from `clean_lists` / `teacher_lists` (N >= k).
    k : int
    sample : bool
        False: the top-k of each list. True: k ranks r in 0..N-1 without replacement with
        p(r) ∝ exp(−r/T), the same law for every row (Gumbel top-k, equivalent to the
        authors' sequential multinomial draw), sorted ascending to keep the teacher's order.
    temperature : float
        T of the rank weights (10 in the paper).

    Returns
    -------
    torch.Tensor, shape (R, k), int64
    """
    if not 1 <= k <= lists.shape[1]:
        raise ValueError(f"need 1 <= k <= teacher list length {lists.shape[1]}, got k={k}")
    if not sample:
        return lists[:, :k]
    ranks = torch.arange(lists.shape[1], device=lists.device, dtype=torch.float32)
    uniform = torch.rand(lists.shape, generator=generator, device=lists.device).clamp_min(torch.finfo(torch.float32).tiny)
    keys = -ranks / temperature - torch.log(-torch.log(uniform))  # log p(r) + Gumbel noise, (R, N)
    positions = torch.sort(torch.topk(keys, k, dim=1).indices, dim=1).values  # (R, k), ascending rank
    return torch.gather(lists, 1, positions)


def sample_uninteresting(
    n_cols: int, n: int, forbidden: PairSet, rows: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`n` distinct columns per row, uniformly among those not forbidden for that row.

    Vectorised rejection: all slots are drawn at once, then only the slots that hit a
    forbidden pair or repeat an earlier slot of their row are redrawn, until none is left.

    Parameters
    ----------
    n_cols : int
        Columns are drawn from [0, n_cols).
    n : int
        L, per row.
    forbidden : PairSet
        (row, column) pairs never drawn: observed pairs and each row's teacher top-N.
    rows : torch.Tensor, shape (R,), int64
        The rows to draw for.

    Returns
    -------
    torch.Tensor, shape (R, n), int64
    """
    device = forbidden.codes.device
    rows = rows.to(device)
    free = n_cols - forbidden.row_counts(int(rows.max()) + 1 if len(rows) else 0)[rows]
    if len(rows) and int(free.min()) < n:
        raise ValueError(f"a row has only {int(free.min())} allowed columns, fewer than n={n} uninteresting ones")
    out = torch.randint(0, n_cols, (len(rows), n), generator=generator, device=device)
    while True:
        ordered, order = torch.sort(out, dim=1, stable=True)
        repeat = torch.zeros_like(out, dtype=torch.bool)
        repeat.scatter_(1, order[:, 1:], ordered[:, 1:] == ordered[:, :-1])
        redo = repeat | forbidden.contains(rows[:, None], out)
        count = int(redo.sum())
        if count == 0:
            return out
        out[redo] = torch.randint(0, n_cols, (count,), generator=generator, device=device)


def forbidden_pairs(observed: PairSet, lists: torch.Tensor) -> PairSet:
    """Observed pairs plus (row, id) for every id in each row's teacher list (R, N)."""
    rows = torch.arange(len(lists), device=lists.device)[:, None].expand_as(lists)
    return observed.union(torch.stack([rows.reshape(-1), lists.reshape(-1)], 1))  # + (R*N, 2)
