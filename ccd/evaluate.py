"""Full-ranking evaluation (CCD protocol), the continual summary LA / RA / H, and DE-RRD's
leave-one-out protocol.

Every metric is written against one callable, `score_fn(users) -> scores`, so models, the
teacher ensemble and the student are evaluated by the same code. Scores are produced one chunk
of users at a time, so memory stays bounded by `batch_users x n_items` whatever the data size.

Exclusion follows the protocol *without* the authors' bug B14: every item the user has in any
training data seen so far is removed from the ranking, not only the evaluated block's own.

Example
-------
>>> metrics = rank_metrics(model.score, block.test, block.seen_train, block.n_items)
>>> metrics["recall@20"], metrics["users"]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ccd.config import TrainConfig

# The papers' protocol ranks at 20: every model is selected, gated, compared and reported on
# Recall@20 and NDCG@20, and those names are the keys of every stored metric.
CUTOFF = 20
RECALL, NDCG = f"recall@{CUTOFF}", f"ndcg@{CUTOFF}"
SPLIT_METRICS = tuple(f"{split}_{metric}" for split in ("valid", "test") for metric in (RECALL, NDCG))  # report columns

ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # users LongTensor (B,) -> scores (B, n_items)
PairScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # users (B,), items (B, C) -> (B, C)


@dataclass(frozen=True)
class UserItemCSR:
    """(user, item) pairs grouped by user, built once, queried per chunk without Python loops.

    Attributes
    ----------
    indptr : torch.Tensor, shape (n_users + 1,), int64
        Row `u` holds `items[indptr[u]:indptr[u + 1]]`.
    items : torch.Tensor, shape (N,), int64
    """

    indptr: torch.Tensor
    items: torch.Tensor

    @classmethod
    def from_pairs(cls, pairs: np.ndarray, n_users: int, device: torch.device | str | None = None) -> "UserItemCSR":
        """Group `pairs` (N, 2) of (user, item) by user; users must lie in `[0, n_users)`."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        order = np.argsort(pairs[:, 0], kind="stable")
        counts = np.bincount(pairs[:, 0], minlength=n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return cls(torch.as_tensor(indptr, device=device), torch.as_tensor(pairs[order, 1], device=device))

    def to(self, device: torch.device | str) -> "UserItemCSR":
        return UserItemCSR(self.indptr.to(device), self.items.to(device))

    def gather(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinates of all pairs of `users` (B,) as (row positions in `users`, items).

        Both outputs have shape (M,), M = total pairs of these users; users past the end of the
        index have no pairs.
        """
        users = users.to(self.indptr.device)
        inside = users < len(self.indptr) - 1
        safe = torch.where(inside, users, torch.zeros_like(users))
        starts = self.indptr[safe]
        counts = torch.where(inside, self.indptr[safe + 1] - starts, torch.zeros_like(starts))
        rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts)
        # Position of each pair inside its own row: a global arange minus the row's first slot.
        first = torch.cumsum(counts, 0) - counts
        within = torch.arange(len(rows), device=users.device) - first[rows]
        return rows, self.items[starts[rows] + within]


def _pair_codes(pairs: np.ndarray, n_items: int) -> np.ndarray:
    return pairs[:, 0] * np.int64(n_items) + pairs[:, 1]


def _as_pairs(pairs: np.ndarray, n_items: int, name: str) -> np.ndarray:
    """`pairs` as an (N, 2) int64 array whose items lie in [0, n_items) (codes stay unique)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) and (pairs.min() < 0 or pairs[:, 1].max() >= n_items):
        raise ValueError(f"{name} has negative ids or items outside [0, n_items={n_items})")
    return pairs


def drop_seen_truth(truth: np.ndarray, exclude: np.ndarray, n_items: int) -> np.ndarray:
    """Remove from `truth` (T, 2) every (user, item) pair that is also in `exclude` (E, 2).

    Why: an excluded item can never be ranked, so keeping it in the truth would count a
    guaranteed miss. A user whose truth becomes empty is then simply not evaluated. Repeated
    truth pairs are counted once; the result is sorted by (user, item).
    """
    codes = np.unique(_pair_codes(_as_pairs(truth, n_items, "truth"), n_items))  # sorted
    seen = np.sort(_pair_codes(_as_pairs(exclude, n_items, "exclude"), n_items))
    if len(seen):
        found = seen[np.searchsorted(seen, codes).clip(max=len(seen) - 1)]
        codes = codes[found != codes]
    return np.stack([codes // n_items, codes % n_items], 1)


def _group(pairs: np.ndarray, users: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs of `users` (sorted, unique) laid out so that each chunk of users is a slice.

    Returns `pos` (M,) the index in `users` of each kept pair, `items` (M,), both sorted by
    (pos, item), and `ptr` (len(users) + 1,): user `users[j]` owns `[ptr[j], ptr[j + 1])`.
    Pairs of users not in `users` are dropped.
    """
    pos = np.searchsorted(users, pairs[:, 0]).clip(max=len(users) - 1)
    keep = users[pos] == pairs[:, 0]
    codes = np.sort(pos[keep] * np.int64(n_items) + pairs[keep, 1])
    pos, items = codes // n_items, codes % n_items
    return pos, items, np.searchsorted(pos, np.arange(len(users) + 1))


def _discounts(k: int, device: torch.device) -> torch.Tensor:
    """1 / log2(position + 2) for 0-based positions 0..k-1, shape (k,)."""
    return 1.0 / torch.log2(torch.arange(k, device=device, dtype=torch.float64) + 2.0)


@torch.no_grad()
def rank_metrics(
    score_fn: ScoreFn,
    truth: np.ndarray,
    exclude: np.ndarray,
    n_items: int,
    ks: Sequence[int] = (10, CUTOFF, 50),
    batch_users: int = TrainConfig.eval_batch_users,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Recall@K and NDCG@K by full ranking over all items, averaged over evaluated users.

    Every user with at least one truth pair is ranked against all `n_items` items, in chunks of
    `batch_users` (at most one `(batch_users, n_items)` score matrix exists at a time). The
    `exclude` pairs (all training data seen so far, every earlier block included, unlike the
    authors' bug B14) get score -inf before the top-K. Truth pairs that are also excluded are
    dropped first (`drop_seen_truth`); a user with no truth left is skipped.

    Recall@K = hits / |truth_u| and NDCG@K = DCG / IDCG with binary gains, DCG = sum over hits
    at 0-based position p of 1 / log2(p + 2) and IDCG over the first min(|truth_u|, K) positions.

    Parameters
    ----------
    score_fn : callable
        `users` LongTensor (B,) -> scores (B, n_items), any device. The result is overwritten
        in place (excluded items set to -inf), so it must be a fresh tensor, as a matmul or
        an indexing gives, not a view of a cached table.
    truth : np.ndarray, shape (T, 2), int
        (user, item) pairs to find, e.g. a block's test split.
    exclude : np.ndarray, shape (E, 2), int
        (user, item) pairs never to recommend.
    n_items : int
        Number of items scored (the width of `score_fn`'s output).
    ks : sequence of int
        Cut-offs; K larger than `n_items` is clamped to `n_items`.
    batch_users : int
        Users per chunk.
    device : torch device, optional
        Where the user ids are created (default: CPU); scores stay on `score_fn`'s device.

    Returns
    -------
    dict
        `{"recall@K": ..., "ndcg@K": ... for each K, "users": number of users evaluated}`;
        every metric is 0.0 when no user is evaluated.
    """
    if batch_users < 1:
        raise ValueError(f"batch_users must be >= 1, got {batch_users}")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive cut-offs, got {ks}")
    truth = drop_seen_truth(truth, exclude, n_items)
    users = np.unique(truth[:, 0])
    names = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    if len(users) == 0:
        return {**{name: 0.0 for name in names}, "users": 0}
    # Built once: every chunk's excluded and truth pairs are then plain slices.
    seen_pos, seen_items, seen_ptr = _group(_as_pairs(exclude, n_items, "exclude"), users, n_items)
    truth_pos, truth_items, truth_ptr = _group(truth, users, n_items)
    k_max = min(max(ks), n_items)
    per_user: dict[str, list[torch.Tensor]] = {name: [] for name in names}  # (B,) per chunk
    dev = None
    for start in range(0, len(users), batch_users):
        end = min(start + batch_users, len(users))
        scores = score_fn(torch.as_tensor(users[start:end], device=device))  # (B, n_items), overwritten
        if dev is None:  # first chunk: move the indexes to where the scores live
            dev = scores.device
            seen_pos, seen_items, truth_pos, truth_items = (
                torch.as_tensor(a, device=dev) for a in (seen_pos, seen_items, truth_pos, truth_items)
            )
            n_truth_all = torch.as_tensor(np.diff(truth_ptr), device=dev, dtype=torch.float64)  # (U,)
            discounts = _discounts(k_max, dev)
            ideal = torch.cumsum(discounts, 0)  # ideal[j] = IDCG with j + 1 relevant items
        part = slice(seen_ptr[start], seen_ptr[end])
        scores[seen_pos[part] - start, seen_items[part]] = float("-inf")
        top = torch.topk(scores, k_max, dim=1).indices  # (B, k_max)
        # Hits by binary search of (row, item) codes in the chunk's truth codes, sorted by
        # construction: no second (B, n_items) matrix.
        part = slice(truth_ptr[start], truth_ptr[end])
        truth_codes = (truth_pos[part] - start) * n_items + truth_items[part]  # (M,), M >= B
        query = torch.arange(end - start, device=dev)[:, None] * n_items + top  # (B, k_max)
        found = torch.searchsorted(truth_codes, query).clamp_(max=len(truth_codes) - 1)
        hits = (truth_codes[found] == query).double()  # (B, k_max)
        n_truth = n_truth_all[start:end]  # (B,)
        for k in ks:
            kk = min(k, k_max)
            per_user[f"recall@{k}"].append((hits[:, :kk].sum(1) / n_truth).cpu())
            dcg = (hits[:, :kk] * discounts[:kk]).sum(1)
            idcg = ideal[(n_truth.clamp(max=kk) - 1).long()]
            per_user[f"ndcg@{k}"].append((dcg / idcg).cpu())
    # One sum over all users at the end, so the result does not depend on the chunking.
    means = {name: float(torch.cat(parts).mean()) for name, parts in per_user.items()}
    return {**means, "users": int(len(users))}


def first_counted_block(with_base_block: bool) -> int:
    """The first block LA and RA count: the base block D0 only when `with_base_block`."""
    return 0 if with_base_block else 1


def continual_summary(
    matrix: Mapping[tuple[int, int], float], upto: int | None = None, with_base_block: bool = True
) -> dict[str, float]:
    """LA, RA and their harmonic mean H from a (trained block, test block) -> metric matrix.

    Let T be the latest trained block (`upto`, default the largest in `matrix`) and B the
    evaluated blocks 0..T (1..T when `with_base_block` is False, for summaries that leave the
    base block D0 out, the `with_base_block` switch of the CCD author's later code).

    - LA (learning average, plasticity) = mean over k in B of metric(trained on k, test of k):
      how well each block was learned right after training on it.
    - RA (retained average, stability) = mean over j in B, j < T, of metric(trained on T,
      test of j): how much of every earlier block the current model still knows.
    - H = 2·LA·RA / (LA + RA), and 0 when both are 0.

    Parameters
    ----------
    matrix : mapping (trained_block, test_block) -> float
        E.g. Recall@20 of the model after block t on block j's test split. Entries with
        trained_block > T are ignored.
    upto : int, optional
        The block whose model is "current".
    with_base_block : bool
        Whether block 0 counts in LA and RA.

    Raises
    ------
    ValueError
        If an entry needed is missing, or no earlier block exists for RA (e.g. T = 0).
    """
    last = max(t for t, _ in matrix) if upto is None else upto
    first = first_counted_block(with_base_block)
    if last <= first:
        raise ValueError(f"RA needs a block before the current one: current {last}, first counted {first}")
    needed = [(k, k) for k in range(first, last + 1)] + [(last, j) for j in range(first, last)]
    missing = [key for key in needed if key not in matrix]
    if missing:
        raise ValueError(f"continual_summary: matrix has no entry for (trained, test) {missing}")
    la = float(np.mean([matrix[(k, k)] for k in range(first, last + 1)]))
    ra = float(np.mean([matrix[(last, j)] for j in range(first, last)]))
    return {"LA": la, "RA": ra, "H": harmonic(la, ra)}


def harmonic(a: float, b: float) -> float:
    """2ab / (a + b), and 0 when both are 0: the H-mean of learning and retaining."""
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def continual_summaries(
    results: Mapping[tuple[int, int], Mapping[str, float]],
    metrics: Sequence[str] = (RECALL, NDCG),
    upto: int | None = None,
    with_base_block: bool = True,
) -> dict[str, dict[str, float]]:
    """`continual_summary` for each metric of a (trained, test) -> `rank_metrics` result map."""
    return {
        name: continual_summary({key: r[name] for key, r in results.items()}, upto, with_base_block)
        for name in metrics
    }


@torch.no_grad()
def loo_metrics(
    score_fn: ScoreFn | None,
    heldout: np.ndarray,
    candidates: np.ndarray,
    ks: Sequence[int] = (5, 10, 20),
    batch_users: int = TrainConfig.eval_batch_users,
    device: torch.device | str | None = None,
    pair_score_fn: PairScoreFn | None = None,
) -> dict[str, float]:
    """Hit@K and NDCG@K of DE-RRD's leave-one-out protocol (sampled ranking).

    Each user's held-out item is ranked among itself and that user's sampled candidates. Its
    1-based rank is 1 + the number of candidates scoring *strictly* higher, so ties are resolved
    in the held-out item's favour (a constant model scores Hit@1 = 1; use continuous scores).
    Hit@K = [rank <= K], NDCG@K = [rank <= K] / log2(rank + 1); both averaged over users.

    Parameters
    ----------
    score_fn : callable or None
        `users` LongTensor (B,) -> scores (B, n_items).
    heldout : np.ndarray, shape (U, 2), int
        One (user, item) pair per row.
    candidates : np.ndarray, shape (U, C), int
        Row r holds the items ranked against `heldout[r]` (C = 499 in the paper).
    ks : sequence of int
        Cut-offs.
    pair_score_fn : callable, optional
        `users` (B,), `items` (B, M) -> scores (B, M). When given it replaces `score_fn` and
        only the C + 1 ranked items of each user are scored, not all n_items: the protocol
        needs no more, and a per-epoch validation gets much cheaper.

    Returns
    -------
    dict
        `{"hit@K": ..., "ndcg@K": ... for each K, "users": U}`.
    """
    heldout = np.asarray(heldout, dtype=np.int64).reshape(-1, 2)
    candidates = np.asarray(candidates, dtype=np.int64)
    if candidates.ndim != 2 or len(candidates) != len(heldout):
        raise ValueError(f"candidates must have shape (U, C) with U = {len(heldout)}, got {candidates.shape}")
    ranks = []
    for start in range(0, len(heldout), batch_users):
        rows = slice(start, start + batch_users)
        users = torch.as_tensor(heldout[rows, 0], device=device)
        items = torch.as_tensor(np.concatenate([heldout[rows, 1:2], candidates[rows]], 1), device=device)
        if pair_score_fn is not None:
            scores = pair_score_fn(users, items)  # (B, 1 + C)
        else:
            full = score_fn(users)  # (B, n_items)
            scores = full.gather(1, items.to(full.device))  # (B, 1 + C)
        ranks.append((1 + (scores[:, 1:] > scores[:, :1]).sum(1)).cpu())
    rank = torch.cat(ranks).double() if ranks else torch.zeros(0, dtype=torch.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = (rank <= k).double()
        out[f"hit@{k}"] = float(hit.mean()) if len(rank) else 0.0
        out[f"ndcg@{k}"] = float((hit / torch.log2(rank + 1)).mean()) if len(rank) else 0.0
    return {**out, "users": int(len(rank))}


def sample_loo_candidates(
    n_items: int,
    users: np.ndarray,
    heldout_items: np.ndarray,
    positives: np.ndarray,
    n: int = 499,
    seed: int = 0,
) -> np.ndarray:
    """Draw, for each user, `n` distinct items the user never interacted with, uniformly.

    Vectorised rejection sampling: draw all slots at once, then redraw only the slots that hit a
    positive pair or repeat an earlier slot of the same row, until none is left. Fixed by `seed`.

    Parameters
    ----------
    n_items : int
        Items are drawn from `[0, n_items)`.
    users : np.ndarray, shape (U,), int
        One row of candidates per entry (the held-out pairs' users).
    heldout_items : np.ndarray, shape (U,), int
        The held-out item of each row; never drawn, even if absent from `positives`.
    positives : np.ndarray, shape (P, 2), int
        Every (user, item) pair the users interacted with (train, valid and test).
    n : int
        Candidates per user.
    seed : int

    Returns
    -------
    np.ndarray, shape (U, n), int64
    """
    users = np.asarray(users, dtype=np.int64)
    heldout_items = np.asarray(heldout_items, dtype=np.int64)
    known = np.concatenate([np.asarray(positives, dtype=np.int64).reshape(-1, 2), np.stack([users, heldout_items], 1)])
    codes = np.unique(_pair_codes(known, n_items))
    per_user = np.bincount(codes // n_items, minlength=int(users.max(initial=-1)) + 1)[users]
    if len(users) and (n_items - per_user).min() < n:
        raise ValueError(f"a user has fewer than n={n} items they never interacted with")
    rng = np.random.default_rng(seed)
    out = rng.integers(0, n_items, size=(len(users), n), dtype=np.int64)
    while True:
        bad = np.isin(users[:, None] * np.int64(n_items) + out, codes)
        # A repeat inside a row: after a stable sort, equal to its left neighbour.
        order = np.argsort(out, axis=1, kind="stable")
        ordered = np.take_along_axis(out, order, 1)
        repeat = np.zeros(out.shape, dtype=bool)
        np.put_along_axis(repeat, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], 1)
        redo = bad | repeat
        if not redo.any():
            return out
        out[redo] = rng.integers(0, n_items, size=int(redo.sum()), dtype=np.int64)
