"""Proxy-guided replay: which old (user, item) pairs to rehearse, and with what soft label.

For every old user, items are drawn from a proxy's top ranks, favouring items that the proxy
ranks much higher than the reference model does (knowledge the reference is losing):

    weight(u, i) ∝ exp(eps * (rank_ref(u, i) - rank_proxy(u, i))) * 1[rank_proxy(u, i) < top]

with 0-based ranks over all items. `n_per_user` items are sampled without replacement and
labelled sigma(proxy score). Ranks under the reference come from a sorted copy of its score row
(searchsorted), so nothing larger than a (users-chunk x items) matrix is ever held.

`ReplayLoss` rehearses a replay set inside the one training loop, annealed, with the set redrawn
every few epochs: binary cross-entropy of the model's score against the soft label (the spec's
form), or a BPR term that ranks the pair above a random item, weighted by the label (scale-free:
for a model whose logits live on another scale than the source's, such as a teacher replaying a
small student, see `ContinualConfig.teacher_replay_form`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ccd.continual.schedules import replay_weight
from ccd.evaluate import ScoreFn, UserItemCSR
from ccd.models import Batch, Recommender


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


@dataclass(frozen=True)
class TopItems:
    """Each user's best items under a frozen model, best first, its recent items removed.

    A proxy does not change during an update, so its top lists are computed once and shared by
    every replay redraw and by the BPR exclusion lists; only the reference's ranks are redrawn.
    Scores are -inf where a user had fewer than `top` items left.
    """

    users: np.ndarray     # (U,) int64
    items: torch.Tensor   # (U, top) int64, CPU
    scores: torch.Tensor  # (U, top) float32, CPU

    def pairs(self, k: int) -> np.ndarray:
        """(user, item) pairs of each user's first `k` items (all, when the lists are shorter),
        shape (<= U * k, 2)."""
        items, finite = self.items[:, :k].numpy(), torch.isfinite(self.scores[:, :k]).numpy()
        users = np.broadcast_to(self.users[:, None], items.shape)
        return np.stack([users[finite], items[finite]], 1).astype(np.int64)

    def restricted(self, keep: np.ndarray) -> "TopItems":
        """The lists of the users in `keep` only, in the same order."""
        rows = torch.from_numpy(np.flatnonzero(np.isin(self.users, keep)))
        return TopItems(self.users[rows.numpy()], self.items[rows], self.scores[rows])


@torch.no_grad()
def top_items(
    score_fn: ScoreFn,
    users: np.ndarray,
    exclude: UserItemCSR | None,
    top: int,
    batch_users: int,
    device: torch.device | str = "cpu",
) -> TopItems:
    """`score_fn`'s top `top` items of every user in `users`, `exclude`d items removed first
    (items in `exclude` past the model's width, newer than it, are ignored)."""
    items, scores = [], []
    for chunk in np.array_split(users, max(1, -(-len(users) // batch_users))):
        chunk = torch.as_tensor(chunk, device=device)
        chunk_scores = score_fn(chunk).float().clone()                         # (B, n_items)
        if exclude is not None:
            rows, cols = (t.to(chunk_scores.device) for t in exclude.gather(chunk))
            inside = cols < chunk_scores.shape[1]
            chunk_scores[rows[inside], cols[inside]] = float("-inf")
        best_scores, best_items = chunk_scores.topk(min(top, chunk_scores.shape[1]), dim=1)
        items.append(best_items.cpu())
        scores.append(best_scores.cpu())
    return TopItems(np.asarray(users, dtype=np.int64), torch.cat(items), torch.cat(scores))


def draw_replay(
    reference: ScoreFn,
    sources: list[tuple[TopItems, int]],
    eps: float,
    seed: int,
    batch_users: int,
    device: torch.device | str = "cpu",
) -> ReplaySet:
    """`n_per_user` items per user from each source's top lists (`top_items`, all over the same
    users), merged with `merge_replay`; the reference ranks each chunk of users once for all
    sources. Source j draws with seed `seed + j`."""
    sources = [(tops, n) for tops, n in sources if n > 0]
    if not sources or len(sources[0][0].users) == 0:
        return ReplaySet.empty()
    for tops, n in sources:
        if n > tops.items.shape[1]:
            raise ValueError(f"cannot draw {n} items per user from the top {tops.items.shape[1]}")
    users = sources[0][0].users
    generators = [torch.Generator(device="cpu").manual_seed(seed + j) for j in range(len(sources))]
    parts: list[list[tuple[np.ndarray, ...]]] = [[] for _ in sources]
    start = 0
    for chunk in np.array_split(users, max(1, -(-len(users) // batch_users))):
        rows = slice(start, start + len(chunk))
        start += len(chunk)
        chunk = torch.as_tensor(chunk, device=device)
        with torch.no_grad():
            ref_scores = reference(chunk).float()                          # (B, n_items)
            ref_sorted = sorted_rows(ref_scores)                            # ascending
        for (tops, n), generator, part in zip(sources, generators, parts):
            part.append(_sample_chunk(ref_scores, ref_sorted, tops.items[rows], tops.scores[rows], chunk, n, eps, generator))
    return merge_replay([ReplaySet(*(np.concatenate(column) for column in zip(*part))) for part in parts])


def sorted_rows(scores: torch.Tensor) -> torch.Tensor:
    """Each row of `scores` sorted ascending. On CPU numpy's sort is about 5x faster than
    torch's (0.4 s vs 2.0 s for 512 x 40k floats, one thread), and sorting was most of a
    teacher update's time."""
    if scores.device.type == "cpu":
        return torch.from_numpy(np.sort(scores.numpy(), axis=1))
    return scores.sort(dim=1).values


@torch.no_grad()
def _sample_chunk(ref_scores, ref_sorted, top_items, top_scores, users, n_per_user, eps, generator):
    top = top_items.shape[1]                                             # rank_proxy = column
    ref_of_top = ref_scores.gather(1, top_items.to(ref_scores.device))   # (B, top)
    # 0-based rank under the reference = number of items scored strictly higher.
    ref_rank = ref_scores.shape[1] - torch.searchsorted(ref_sorted, ref_of_top, right=True)
    proxy_rank = torch.arange(top, device=ref_rank.device).expand_as(ref_rank)
    logits = eps * (ref_rank - proxy_rank).double().cpu()
    logits[~torch.isfinite(top_scores)] = float("-inf")                  # excluded items never drawn
    weights = torch.softmax(logits, dim=1)
    drawable = torch.isfinite(top_scores).sum(dim=1)
    keep = drawable >= n_per_user
    picks = torch.multinomial(weights[keep], n_per_user, replacement=False, generator=generator)
    rows = torch.nonzero(keep).squeeze(1)
    chosen_items = top_items[rows.unsqueeze(1), picks]
    labels = torch.sigmoid(top_scores[rows.unsqueeze(1), picks])
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


class ReplayLoss:
    """`ccd.train.Extension`: rehearse replay pairs with soft labels (spec 2.3d, 2.4).

    Each epoch's replay set is split into as many chunks as the epoch has BPR batches; the
    step's term is

        "bce":  lambda_e * sum_{(u, i, y) in chunk} BCEWithLogits(s(u, i), y) / B
        "bpr":  lambda_e * sum_{(u, i, y) in chunk} y * -log sigma(s(u, i) - s(u, j)) / B

    with s the model's serving score, j a uniformly random item, B the BPR batch size and
    lambda_e = weight * exp(-(e-1)/T) at epoch e (`schedules.replay_weight`). The spec weighs the
    summed BCE against a summed BPR loss; the loop's BPR loss is a mean, so dividing by B keeps
    the spec's ratio. BCE pulls s(u, i) toward the source's logit, so when the source's logits
    are large (labels all near 1) it inflates the pair's score without bound; the BPR form only
    asks the pair to rank above a random item.

    Parameters
    ----------
    model : Recommender
        The model being trained (scores from its "final" representations).
    draw : callable
        `draw(epoch) -> ReplaySet`; called at epoch 1 and every `resample_every` epochs after,
        so a reference that is the model itself (the teacher update) is its state at that time.
    steps_per_epoch : int
        BPR batches per epoch (`ccd.train.steps_per_epoch`).
    weight, temperature : float
        Initial replay weight and annealing temperature.
    resample_every : int
    seed : int
        Of the chunk shuffling and the "bpr" form's random items.
    form : {"bce", "bpr"}
    """

    def __init__(self, model: Recommender, draw: Callable[[int], ReplaySet], steps_per_epoch: int, weight: float,
                 temperature: float, resample_every: int, seed: int, form: Literal["bce", "bpr"]) -> None:
        if steps_per_epoch < 1 or resample_every < 1:
            raise ValueError(f"steps_per_epoch and resample_every must be >= 1, got {steps_per_epoch}, {resample_every}")
        if form not in ("bce", "bpr"):
            raise ValueError(f"replay form must be 'bce' or 'bpr', got {form!r}")
        self.model, self.draw, self.steps, self.form = model, draw, steps_per_epoch, form
        self.initial, self.temperature, self.every = weight, temperature, resample_every
        self.generator = torch.Generator(device=model.device).manual_seed(seed)
        self.size = 0
        self.weight = weight

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(())

    def start_epoch(self, epoch: int) -> None:
        """Redraw the set when due, anneal the weight, shuffle the set into this epoch's chunks."""
        device = self.model.device
        if (epoch - 1) % self.every == 0:
            replay = self.draw(epoch)
            self.users = torch.as_tensor(replay.users, device=device)
            self.items = torch.as_tensor(replay.items, device=device)
            self.labels = torch.as_tensor(replay.labels, dtype=torch.float32, device=device)
            self.size = len(replay)
        self.weight = replay_weight(epoch - 1, self.initial, self.temperature)
        order = torch.randperm(self.size, generator=self.generator, device=device)
        self.chunks = iter(order.tensor_split(self.steps))

    def loss(self, batch: Batch) -> torch.Tensor:
        """The step's replay term (a scalar; 0 once the epoch's chunks are used up)."""
        rows = next(self.chunks, None)
        users, items = self.model.user_item_representations()["final"]  # (n_users, d), (n_items, d)
        if rows is None or len(rows) == 0:
            return users.sum() * 0.0
        u, i, y = self.users[rows], self.items[rows], self.labels[rows]
        scores = (users[u] * items[i]).sum(dim=1)  # (R,)
        if self.form == "bce":
            total = F.binary_cross_entropy_with_logits(scores, y, reduction="sum")
        else:
            j = torch.randint(items.shape[0], (len(rows),), generator=self.generator, device=items.device)
            total = (y * F.softplus(-(scores - (users[u] * items[j]).sum(dim=1)))).sum()
        return self.weight * total / len(batch.users)
