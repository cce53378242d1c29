"""Items BPR must not draw as negatives during an update: old users' top items under the models
the update replays from or distils (the spec's exclusion lists, 2.2 and 2.3d).

Replay pulls an old user's items from the proxies' (and the teacher's) top ranks *up*; a uniform
BPR negative that happens to be one of them would push the same pair *down* in the same epoch.
So each old user's top-`k` items under those models (its recent training items removed first)
join the negatives' exclusion set, `ccd.train.train(exclude_negatives=...)`.
"""

from __future__ import annotations

import numpy as np
import torch

from ccd.evaluate import ScoreFn, UserItemCSR


def cap(k: int, n_items: int) -> int:
    """`k`, but at most a tenth of the items: a few models' top lists together must never cover
    every item of a small catalogue, or a user would have no negative left to draw."""
    return max(0, min(k, n_items // 10))


@torch.no_grad()
def top_pairs(
    score_fn: ScoreFn,
    users: np.ndarray,
    k: int,
    exclude: UserItemCSR | None,
    batch_users: int,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """(user, item) pairs of each user's top-`k` items under `score_fn`, shape (U * k, 2).

    Parameters
    ----------
    score_fn : callable
        `users` (B,) -> scores (B, n_items).
    users : np.ndarray, shape (U,)
    exclude : UserItemCSR, optional
        Items removed before taking the top (the user's recent training items); items past the
        model's width are ignored.
    """
    if k <= 0 or len(users) == 0:
        return np.zeros((0, 2), np.int64)
    parts = []
    for start in range(0, len(users), batch_users):
        chunk = torch.as_tensor(users[start : start + batch_users], device=device)
        scores = score_fn(chunk).float().clone()  # (B, n_items)
        if exclude is not None:
            rows, items = (t.to(scores.device) for t in exclude.gather(chunk))
            inside = items < scores.shape[1]  # the index may know items newer than the model
            scores[rows[inside], items[inside]] = float("-inf")
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices.cpu()  # (B, k)
        parts.append(np.stack([chunk.cpu()[:, None].expand_as(top).reshape(-1).numpy(), top.reshape(-1).numpy()], 1))
    return np.concatenate(parts).astype(np.int64)


def list_pairs(ids: np.ndarray, k: int, users: np.ndarray) -> np.ndarray:
    """(user, item) pairs of the first `k` entries of stored top lists, shape (<= U * k, 2).

    Parameters
    ----------
    ids : np.ndarray, shape (n_users, K)
        `ccd.ensemble.read_topk` output: row u holds user u's items, -1 padded.
    users : np.ndarray, shape (U,)
        Rows to take (ids past the table have no list).
    """
    users = users[users < len(ids)]
    top = ids[users, : max(0, k)]  # (U, k)
    pairs = np.stack([np.repeat(users, top.shape[1]), top.reshape(-1)], 1)
    return pairs[pairs[:, 1] >= 0].astype(np.int64)
