"""Proxy-guided replay: which old (user, item) pairs to rehearse, and with what soft label.

For every old user, items are drawn from a proxy's top ranks, favouring items that the proxy
ranks much higher than the reference model does (knowledge the reference is losing):

    weight(u, i) ∝ exp(eps * (rank_ref(u, i) - rank_proxy(u, i))) * 1[rank_proxy(u, i) < top]

with 0-based ranks over all items. `n_per_user` items are sampled without replacement and
labelled sigma(proxy score). Ranks under the reference come from a sorted copy of its score row
(searchsorted), so nothing larger than a (users-chunk x items) matrix is ever held.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ccd.evaluate import ScoreFn, UserItemCSR


@dataclass(frozen=True)
class ReplaySet:
    """Replay pairs with soft labels; arrays of equal length."""

    users: np.ndarray   # (N,) int64
    items: np.ndarray   # (N,) int64
    labels: np.ndarray  # (N,) float32 in (0, 1)

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def empty(cls) -> "ReplaySet":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def sample_replay(
    reference: ScoreFn,
    proxy: ScoreFn,
    users: np.ndarray,
    exclude: UserItemCSR | None,
    n_per_user: int,
    top: int,
    eps: float = 1e-4,
    seed: int = 0,
    batch_users: int = 512,
    device: torch.device | str = "cpu",
) -> ReplaySet:
    """Sample `n_per_user` replay items per user from `proxy`'s top `top` ranks.

    Parameters
    ----------
    reference, proxy : score functions, users (B,) -> (B, n_items)
    users : (U,) int64, the old users to replay for
    exclude : UserItemCSR or None
        Items removed from the proxy's ranking before sampling (the user's recent training items:
        they are learned from data directly, so rehearsing them adds nothing).
    n_per_user : items per user; 0 gives an empty set (the authors' code crashes there, B13)
    top : only the proxy's first `top` ranks can be drawn
    """
    if n_per_user <= 0 or len(users) == 0:
        return ReplaySet.empty()
    if n_per_user > top:
        raise ValueError(f"cannot draw {n_per_user} items per user from the top {top}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    parts = [
        _sample_chunk(reference, proxy, torch.as_tensor(chunk, device=device), exclude, n_per_user, top, eps, generator)
        for chunk in np.array_split(users, max(1, -(-len(users) // batch_users)))
    ]
    return ReplaySet(*(np.concatenate(column) for column in zip(*parts)))


@torch.no_grad()
def _sample_chunk(reference, proxy, users, exclude, n_per_user, top, eps, generator):
    proxy_scores = proxy(users).float()                                  # (B, n_items)
    if exclude is not None:
        rows, cols = exclude.gather(users)
        proxy_scores[rows.to(proxy_scores.device), cols.to(proxy_scores.device)] = float("-inf")
    top_scores, top_items = proxy_scores.topk(top, dim=1)               # (B, top), rank_proxy = column
    ref_scores = reference(users).float()                                # (B, n_items)
    ref_sorted = ref_scores.sort(dim=1).values                           # ascending
    ref_of_top = ref_scores.gather(1, top_items)                         # (B, top)
    # 0-based rank under the reference = number of items scored strictly higher.
    ref_rank = ref_scores.shape[1] - torch.searchsorted(ref_sorted, ref_of_top, right=True)
    proxy_rank = torch.arange(top, device=users.device).expand_as(ref_rank)
    logits = eps * (ref_rank - proxy_rank).double()
    logits[~torch.isfinite(top_scores)] = float("-inf")                  # excluded items never drawn
    weights = torch.softmax(logits, dim=1).cpu()
    drawable = torch.isfinite(top_scores).sum(dim=1).cpu()
    keep = drawable >= n_per_user
    picks = torch.multinomial(weights[keep], n_per_user, replacement=False, generator=generator)
    rows = torch.nonzero(keep).squeeze(1)
    chosen_items = top_items.cpu()[rows.unsqueeze(1), picks]
    labels = torch.sigmoid(top_scores.cpu()[rows.unsqueeze(1), picks])
    chosen_users = users.cpu()[rows].unsqueeze(1).expand_as(chosen_items)
    return chosen_users.reshape(-1).numpy(), chosen_items.reshape(-1).numpy(), labels.reshape(-1).float().numpy()


def merge_replay(sets: list[ReplaySet]) -> ReplaySet:
    """Union of replay sets; a pair drawn by several proxies keeps its largest label."""
    sets = [s for s in sets if len(s)]
    if not sets:
        return ReplaySet.empty()
    users = np.concatenate([s.users for s in sets])
    items = np.concatenate([s.items for s in sets])
    labels = np.concatenate([s.labels for s in sets])
    order = np.lexsort((-labels, items, users))          # best label first within each pair
    users, items, labels = users[order], items[order], labels[order]
    first = np.r_[True, (np.diff(users) != 0) | (np.diff(items) != 0)]
    return ReplaySet(users[first], items[first], labels[first])
