"""The teacher: an ensemble of recommenders combined by rank, and its top-K lists on disk.

Members of different kinds (LightGCN, BPR-MF, Mult-VAE) score on different scales, so CCD
(spec §2.5) combines ranks, not scores: each member ranks every item of the user's full row
(rank r = 0 is best, train items included), the rank becomes (r + 1)^-0.05 (the exponent is
`teacher.rank_exponent`), and the ensemble
score is the mean over members. The exponent is small, so the transform stays informative deep
into the list: rank 1 -> 1.0, 2 -> 0.966, 100 -> 0.794, 10^4 -> 0.631.

Later stages never need the dense users x items matrix, only each user's top-K items and each
item's top-K users; `write_topk` streams over user chunks and writes just those as Parquet.

Example
-------
>>> teacher = Ensemble([lightgcn_0, lightgcn_1, bpr_0], exponent=0.05)   # teacher.rank_exponent
>>> write_topk(teacher.score, n_users, n_items, block.seen_train, out_dir, 100, 100, 1024)  # k_user, k_item, batch_users
>>> items, scores = read_topk(out_dir / "user_topk.parquet")   # (n_users, 100) each
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from ccd.atomic import remove_temp_files, write_with
from ccd.evaluate import ScoreFn, UserItemCSR

USER_TOPK = "user_topk.parquet"
ITEM_TOPK = "item_topk.parquet"
_META_KEY = b"ccd.topk"


class Scorer(Protocol):
    """Anything that scores users against all items: `score(users (B,)) -> (B, n_items)`."""

    def score(self, users: torch.Tensor) -> torch.Tensor: ...


def rank_transform(scores: torch.Tensor, exponent: float) -> torch.Tensor:
    """Replace each score by (r + 1)^-exponent, r its 0-based descending rank in its row.

    Parameters
    ----------
    scores : torch.Tensor, shape (B, N)

    Returns
    -------
    torch.Tensor, shape (B, N), float32
    """
    order = _descending_order(scores)  # (B, N): item at each rank
    positions = torch.arange(1, scores.shape[1] + 1, device=scores.device, dtype=torch.float32)
    transformed = positions.pow(-exponent).expand_as(order)  # (B, N): value of each rank
    return torch.empty(scores.shape, device=scores.device).scatter_(1, order, transformed)


def _descending_order(scores: torch.Tensor) -> torch.Tensor:
    """Each row's items from best to worst score, NaN last (a diverged member's NaN scores rank
    below everything, on every device). On CPU numpy's argsort is about 3x faster than
    torch's, and this sort is most of the ensemble's cost (docs/benchmarks.md). Neither sort is
    stable: equal scores come out in an order that may depend on the device and the CPU."""
    # nan_to_num would also clamp +-inf to finite values; keep them as they are.
    scores = scores.detach().nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    if scores.device.type == "cpu":
        wide = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
        return torch.from_numpy(np.argsort(-wide.numpy(), axis=1))
    return torch.argsort(scores, dim=1, descending=True)


class Ensemble:
    """Mean of the members' rank-transformed scores (CCD's teacher system).

    Parameters
    ----------
    members : sequence of Scorer
        Models with `score(users) -> (B, n_items)`; all must score the same items.
    exponent : float
        Of the rank transform (r + 1)^-exponent.

    Attributes
    ----------
    n_items : int or None
        Taken from the members' `n_items` attribute when they have one.
    """

    def __init__(self, members: Sequence[Scorer], exponent: float) -> None:
        if not members:
            raise ValueError("an Ensemble needs at least one member")
        sizes = {getattr(m, "n_items", None) for m in members}
        if len(sizes) > 1:
            raise ValueError(f"ensemble members score different item counts: {sorted(map(str, sizes))}")
        self.members = list(members)
        self.exponent = exponent
        self.n_items = sizes.pop()

    @torch.no_grad()
    def score(self, users: torch.Tensor) -> torch.Tensor:
        """Ensemble scores of `users` (B,) against every item, shape (B, n_items), in (0, 1]."""
        total = None
        for member in self.members:
            part = rank_transform(member.score(users), self.exponent)
            total = part if total is None else total + part.to(total.device)
        return total / len(self.members)

    def __len__(self) -> int:
        return len(self.members)


class StoredTopK:
    """Scores read back from `write_topk`'s user lists: each user's K listed items keep their
    ensemble score, every other item gets -inf.

    Ranking metrics at cut-offs up to K computed on these scores equal the ensemble's own, as
    long as they exclude the pairs the lists were written without (the training pairs seen so
    far): the top of the full ranking *is* the list. Evaluating the teacher this way re-ranks
    nothing; on CPU, re-ranking every member over the catalogue was most of the evaluation.

    Parameters
    ----------
    path : Path
        A `user_topk.parquet` of `write_topk`.
    n_items : int
        Width of the score rows.
    """

    def __init__(self, path: Path, n_items: int) -> None:
        ids, scores = read_topk(path)
        self.ids, self.scores = torch.as_tensor(ids), torch.as_tensor(scores)
        self.n_items, self.k = n_items, ids.shape[1]

    @torch.no_grad()
    def score(self, users: torch.Tensor) -> torch.Tensor:
        """(B, n_items) scores of `users` (B,); users past the lists get -inf everywhere."""
        out = torch.full((len(users), self.n_items), float("-inf"))
        rows = users.cpu()
        listed = torch.nonzero(rows < len(self.ids)).squeeze(1)
        ids, scores = self.ids[rows[listed]], self.scores[rows[listed]]    # (L, K)
        valid = ids >= 0
        out[listed[:, None].expand_as(ids)[valid], ids[valid]] = scores[valid]
        return out.to(users.device)


@torch.no_grad()
def write_topk(
    score_fn: ScoreFn,
    n_users: int,
    n_items: int,
    exclude: np.ndarray,
    out_dir: Path,
    k_user: int,
    k_item: int,
    batch_users: int,
    device: torch.device | str | None = None,
) -> dict:
    """Write each user's top items and each item's top users as Parquet, atomically.

    Scores are computed for users `0..n_users-1` in chunks; `exclude` pairs (e.g. the training
    pairs seen so far, so distillation targets are unobserved items, unlike the authors' bug B1)
    get -inf and never appear. The item side keeps a running top-`k_item` per item: each chunk's
    transposed scores are concatenated with the best so far and cut back with one `topk`, so
    memory is `n_items x (k_item + batch_users)` whatever the number of users.

    Parameters
    ----------
    score_fn : callable
        `users` (B,) -> scores (B, n_items), e.g. `Ensemble.score`.
    exclude : np.ndarray, shape (E, 2), int
        (user, item) pairs left out of both lists; pass an empty (0, 2) array to keep all.
    out_dir : Path
        Receives `user_topk.parquet` (user, rank, item, score) and `item_topk.parquet`
        (item, rank, user, score); rank is 0-based, rows sorted by entity then rank. One
        writer at a time (its stage's or folder's lock): a killed earlier write's temporary
        files there are removed first (not in subfolders: other run keys' lists live there).

    Returns
    -------
    dict
        `{"user_topk": path, "item_topk": path, "user_rows": int, "item_rows": int}`; the
        files' schema metadata records the entity count and K for `read_topk`.
    """
    if n_users < 1 or n_items < 1:
        raise ValueError(f"write_topk needs at least one user and one item, got {n_users} x {n_items}")
    out_dir = Path(out_dir)
    exclude = np.asarray(exclude, dtype=np.int64).reshape(-1, 2)
    seen = UserItemCSR.from_pairs(exclude, max(n_users, int(exclude[:, 0].max(initial=-1)) + 1))
    k_user, k_item = min(k_user, n_items), min(k_item, n_users)
    user_parts: list[tuple[torch.Tensor, ...]] = []
    best_scores = best_users = None
    for start in tqdm(range(0, n_users, batch_users), desc="teacher top-K", unit="chunk", leave=False, disable=None):
        chunk = torch.arange(start, min(start + batch_users, n_users), device=device)
        scores = score_fn(chunk).float().clone()  # (B, n_items)
        dev = scores.device
        if best_scores is None:
            seen = seen.to(dev)
            best_scores = torch.full((n_items, k_item), float("-inf"), device=dev)
            best_users = torch.full((n_items, k_item), -1, dtype=torch.int64, device=dev)
        rows, items = seen.gather(chunk)
        scores[rows, items] = float("-inf")
        top = torch.topk(scores, k_user, dim=1)  # (B, k_user)
        user_parts.append((chunk.to(dev)[:, None].expand_as(top.indices), top.indices, top.values))
        # Running per-item top-k over users: (n_items, k_item + B) -> (n_items, k_item).
        pool_scores = torch.cat([best_scores, scores.T], 1)
        pool_users = torch.cat([best_users, chunk.to(dev)[None, :].expand(n_items, -1)], 1)
        best = torch.topk(pool_scores, k_item, dim=1)
        best_scores, best_users = best.values, torch.gather(pool_users, 1, best.indices)
    user_table = _long_table(*(torch.cat(part) for part in zip(*user_parts)), ("user", "item"))
    item_ids = torch.arange(n_items)[:, None].expand(-1, k_item)
    item_table = _long_table(item_ids, best_users, best_scores, ("item", "user"))
    out = {}
    remove_temp_files(out_dir, recursive=False)
    for entity, table, name, n, k in (
        ("user", user_table, USER_TOPK, n_users, k_user),
        ("item", item_table, ITEM_TOPK, n_items, k_item),
    ):
        table = table.replace_schema_metadata({_META_KEY: json.dumps({"entity": entity, "n": n, "k": k}).encode()})
        write_with(out_dir / name, lambda tmp, t=table: pq.write_table(t, tmp))
        out[f"{entity}_topk"], out[f"{entity}_rows"] = out_dir / name, table.num_rows
    return out


def _long_table(owners: torch.Tensor, ids: torch.Tensor, scores: torch.Tensor, names: tuple[str, str]) -> pa.Table:
    """(N, K) owner / id / score matrices -> long table, dropping -inf (excluded) slots."""
    owners, ids, scores = owners.cpu(), ids.cpu(), scores.cpu()
    ranks = torch.arange(ids.shape[1])[None, :].expand_as(ids)
    keep = torch.isfinite(scores).numpy().ravel()
    return pa.table(
        {
            names[0]: owners.numpy().ravel()[keep].astype(np.int64),
            "rank": ranks.numpy().ravel()[keep].astype(np.int32),
            names[1]: ids.numpy().ravel()[keep].astype(np.int64),
            "score": scores.numpy().ravel()[keep].astype(np.float32),
        }
    )


def read_topk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a file of `write_topk` back as dense lists.

    Returns
    -------
    ids : np.ndarray, shape (N, K), int64
        Row e holds entity e's top ids in rank order; -1 where the list is shorter (an entity
        with fewer than K non-excluded candidates).
    scores : np.ndarray, shape (N, K), float32
        Matching scores; -inf where `ids` is -1.
    """
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[_META_KEY])
    entity = meta["entity"]
    other = "item" if entity == "user" else "user"
    ids = np.full((meta["n"], meta["k"]), -1, dtype=np.int64)
    scores = np.full((meta["n"], meta["k"]), -np.inf, dtype=np.float32)
    rows = table[entity].to_numpy()
    ranks = table["rank"].to_numpy()
    ids[rows, ranks] = table[other].to_numpy()
    scores[rows, ranks] = table["score"].to_numpy()
    return ids, scores
