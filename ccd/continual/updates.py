"""What every update of a trained model on a new block shares (student, teacher, baselines).

- `update_config`: the training budget of an update (`continual.update_*` over `train`);
- `grown`: a copy of the model, its tables grown to the block's id space (neighbour init);
- `recent_items`: each user's training items of blocks k-1 and k, which replay never draws;
- `ProxyReplay`: replay sets drawn from several frozen sources (spec 2.3c, 2.4).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ccd.config import RunConfig, TrainConfig
from ccd.continual.replay import ReplaySet, draw_replay, top_items
from ccd.data import BlockData
from ccd.evaluate import UserItemCSR
from ccd.models import Recommender, build_model


def update_config(config: RunConfig) -> TrainConfig:
    """The training settings of an update: `train` with the continual section's budget."""
    c = config.continual
    return dataclasses.replace(config.train, max_epochs=c.update_epochs, lr=c.update_lr, batch_size=c.update_batch_size)


def clone(model: Recommender) -> Recommender:
    """An independent copy of `model` on its device: same config, weights and interactions.

    Built anew rather than `copy.deepcopy`-ed, since a LightGCN's sparse CSR graph cannot be
    deep-copied; the graph is rebuilt from the interactions instead.
    """
    twin = build_model(model.config, model.n_users, model.n_items).to(model.device)
    twin.load_state_dict(model.state_dict())
    twin.set_interactions(model.interactions)
    return twin


def grown(model: Recommender, data: BlockData, config: RunConfig) -> Recommender:
    """A copy of `model` (left unchanged) grown to block `data`'s id space, new ids initialised
    from their neighbours in the block (`continual.init`, `init_k`)."""
    twin = clone(model)
    twin.grow(data.n_users, data.n_items, data.train, config.continual.init, config.continual.init_k)
    return twin


def recent_items(data: BlockData, previous_train: np.ndarray, device: torch.device | str | None = None) -> UserItemCSR:
    """Each user's training items of blocks k-1 and k (the spec's `filtering_simple`): replay
    never draws them, since they are learned from the data directly."""
    return UserItemCSR.from_pairs(np.concatenate([previous_train, data.train]), data.n_users, device)


class ProxyReplay:
    """Replay from frozen sources during one update (spec 2.3c, 2.4).

    The sources' top lists are computed once (`replay.top_items`, recent items removed); each
    `draw` compares them with the reference's ranks *at that moment*, so a reference that is
    the model being trained is followed as it changes. The same lists give the BPR exclusion
    lists (`exclusion_pairs`), so no source ranks the catalogue twice.

    Parameters
    ----------
    reference : Recommender
        The model whose ranks weight the draws.
    sources : list of (model, samples per user)
    users : np.ndarray, shape (U,)
        The old users whose source lists are kept (the exclusion lists cover them all).
    recent : UserItemCSR
        Items never drawn (`recent_items`).
    top : int
        Only each source's first `top` ranks can be drawn.
    eps : float
        Sharpness of the rank-disagreement weight.
    replay_users : np.ndarray, optional
        The users drawn for, a subset of `users` (default: all of them).
    """

    def __init__(self, reference: Recommender, sources: list[tuple[Recommender, int]], users: np.ndarray,
                 recent: UserItemCSR, top: int, eps: float, batch_users: int, replay_users: np.ndarray | None = None) -> None:
        self.reference, self.eps, self.batch_users = reference, eps, batch_users
        self.tops = [(top_items(source.score, users, recent, min(top, source.n_items), batch_users, reference.device), n)
                     for source, n in sources]
        self.drawn = self.tops if replay_users is None else [(tops.restricted(replay_users), n) for tops, n in self.tops]

    def draw(self, seed: int) -> ReplaySet:
        """A replay set: the union of each source's draws; a pair drawn twice keeps its larger label."""
        return draw_replay(self.reference.score, self.drawn, self.eps, seed, self.batch_users, self.reference.device)

    def exclusion_pairs(self, k: int, sources: list[int] | None = None) -> np.ndarray:
        """Every user's first `k` items under each source (or those at the indices `sources`),
        shape (E, 2), never BPR negatives."""
        picked = self.tops if sources is None else [self.tops[i] for i in sources]
        return np.concatenate([tops.pairs(k) for tops, _ in picked] or [np.zeros((0, 2), np.int64)])
