"""The one recommender interface every model implements.

The training loop, the evaluator, the teacher ensemble and distillation use nothing but this
interface, so a new model kind only has to fill it in:

- `score(users)` gives full rows of scores; `recommend(users, k, exclude)` the top-K of them.
- `set_interactions(pairs)` hands the model the (user, item) pairs it learns from: LightGCN
  builds its graph from them, Mult-VAE encodes each user's row of them, BPR-MF ignores them.
- `training_loss(batch, weight_decay)` is the whole objective of one step. `batch_kind` says
  which batches the loop must build: BPR triples (`"pairs"`) or user rows (`"users"`).
- `grow(n_users, n_items, pairs)` enlarges the tables for new ids with the CCD initialisation.
- `user_item_representations()` gives the embeddings distillation works on.

Example
-------
>>> model = build_model(LightGCNConfig(dim=64, layers=2), n_users, n_items)
>>> model.set_interactions(block.train)
>>> ids, scores = model.recommend(torch.arange(10), k=20, exclude=UserItemCSR.from_pairs(block.seen_train, n_users))
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from ccd.evaluate import UserItemCSR


@dataclass(frozen=True)
class Batch:
    """One training step's input.

    Attributes
    ----------
    users : torch.LongTensor, shape (B,)
    pos, neg : torch.LongTensor, shape (B,), or None
        Positive and sampled negative item of each user for `batch_kind == "pairs"`; None for
        models trained on whole user rows.
    generator : torch.Generator
        The loop's seeded generator: a model draws any training noise (dropout, sampling) from
        it, so a run is reproducible without touching torch's global random state.
    """

    users: torch.Tensor
    pos: torch.Tensor | None
    neg: torch.Tensor | None
    generator: torch.Generator


class Recommender(nn.Module, ABC):
    """Base class: a model that scores every item for a batch of users.

    Attributes
    ----------
    kind : str
        Registry name ("bpr", "lightgcn", "vae"); saved with the model.
    batch_kind : {"pairs", "users"}
        How the training loop batches data for `training_loss`.
    uses_interactions : bool
        Whether scores depend on the pairs given to `set_interactions` (LightGCN's graph,
        Mult-VAE's input rows); such models save the pairs beside their weights, so a loaded
        model scores exactly as it did.
    config : frozen dataclass
        The model's hyperparameters (dim, seed, ...), saved with it.
    n_users, n_items : int
        Size of the id space the tables cover.
    """

    kind: ClassVar[str]
    batch_kind: ClassVar[Literal["pairs", "users"]] = "pairs"
    uses_interactions: ClassVar[bool] = True

    def __init__(self, config: Any, n_users: int, n_items: int) -> None:  # the kind's Config dataclass
        super().__init__()
        if n_users < 1 or n_items < 1:
            raise ValueError(f"a model needs at least one user and one item, got {n_users} x {n_items}")
        self.config = config
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self.interactions = np.zeros((0, 2), np.int64)  # (N, 2) unique pairs, see set_interactions

    @property
    def dim(self) -> int:
        return int(self.config.dim)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @abstractmethod
    def score(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each user: users (B,) -> (B, n_items), higher is better."""

    @abstractmethod
    def training_loss(self, batch: Batch, weight_decay: float) -> torch.Tensor:
        """The scalar objective of one step on `batch`, regularisation included."""

    @abstractmethod
    def grow(self, n_users: int, n_items: int, pairs: np.ndarray, init: str, k: int) -> None:
        """Enlarge the tables to `n_users` x `n_items`, keeping every existing row.

        Parameters
        ----------
        n_users, n_items : int
            New sizes, at least the current ones.
        pairs : np.ndarray, shape (N, 2), int64
            The new block's training (user, item) pairs: the neighbours that initialise new ids.
        init : {"neighbour", "random"}
            CCD initialisation (`ccd.models.init.neighbour_rows`) or N(0, 0.01^2).
        k : int
            Two-hop candidates per new id (the spec's `init_topk`).
        """

    @abstractmethod
    def user_item_representations(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Named (users (n_users, d), items (n_items, d)) pairs whose inner products score.

        "final" always exists and `score(u) == users[u] @ items.T`. Embedding models also give
        "ego", the layer-0 tables (different from "final" only for LightGCN), which DE-RRD and
        CCD distil on (spec 2.2, B10).
        """

    def set_interactions(self, pairs: np.ndarray) -> None:
        """Hand the model the (user, item) pairs (N, 2) it learns from; see the module docstring."""
        self.interactions = _dedup(pairs, self.n_users, self.n_items)

    @torch.no_grad()
    def recommend(
        self, users: torch.Tensor, k: int, exclude: UserItemCSR | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-`k` items for each user.

        Parameters
        ----------
        users : torch.LongTensor, shape (B,)
        k : int
            At most `n_items`.
        exclude : UserItemCSR, optional
            Pairs never to recommend (e.g. all training data seen so far); their items get
            score -inf, so they come last and only appear when a user has fewer than `k` others.

        Returns
        -------
        ids, scores : torch.Tensor, shape (B, k)
            Item ids and their scores, best first.
        """
        if not 1 <= k <= self.n_items:
            raise ValueError(f"k must be in [1, {self.n_items}], got {k}")
        users = torch.as_tensor(users, dtype=torch.long, device=self.device)
        scores = self.score(users).clone()  # (B, n_items); cloned because -inf is written into it
        if exclude is not None:
            rows, items = exclude.to(scores.device).gather(users)
            scores[rows, items] = float("-inf")
        top = torch.topk(scores, k, dim=1)
        return top.indices, top.values

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"n_users={self.n_users}, n_items={self.n_items}, config={self.config}"


def _dedup(pairs: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    """Unique (user, item) pairs (N, 2) int64, checked to lie inside the model's id space."""
    pairs = np.unique(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=0)
    if len(pairs) and (pairs.min() < 0 or pairs[:, 0].max() >= n_users or pairs[:, 1].max() >= n_items):
        raise ValueError(f"pairs reach past the model's id space {n_users} x {n_items}")
    return pairs
