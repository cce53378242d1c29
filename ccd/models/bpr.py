"""BPR-MF: a user table and an item table, score = inner product, trained with the BPR loss.

Rendle et al. (UAI 2009). It is also the base of LightGCN, which only changes how the final
embeddings are computed from these ego tables (`embeddings`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ccd.models.base import Batch, Recommender
from ccd.models.init import Init, grow_tables, random_rows


@dataclass(frozen=True)
class BPRConfig:
    dim: int = 64
    seed: int = 0  # initial tables; the training loop seeds its own sampling separately


def bpr_loss(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(s(u, i) - s(u, j)); each argument (B, d), returns a scalar."""
    return -F.logsigmoid((users * (pos - neg)).sum(dim=1)).mean()


def l2_rows(*rows: torch.Tensor) -> torch.Tensor:
    """Sum of squared entries / 2 / B over the given (B, d) row batches (batch-wise weight decay)."""
    return sum(r.pow(2).sum() for r in rows) / (2 * len(rows[0]))


class BPRMF(Recommender):
    """Matrix factorisation with BPR loss.

    Attributes
    ----------
    user_emb : nn.Parameter, shape (n_users, dim)
    item_emb : nn.Parameter, shape (n_items, dim)
        Ego tables, initialised from N(0, 0.01^2) (spec 1).
    """

    kind = "bpr"
    Config = BPRConfig
    uses_interactions = False

    def __init__(self, config: BPRConfig, n_users: int, n_items: int) -> None:
        super().__init__(config, n_users, n_items)
        generator = torch.Generator().manual_seed(config.seed)
        self.user_emb = nn.Parameter(random_rows(n_users, config.dim, generator))
        self.item_emb = nn.Parameter(random_rows(n_items, config.dim, generator))

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final (users (n_users, d), items (n_items, d)); for MF the ego tables themselves."""
        return self.user_emb, self.item_emb

    def score(self, users: torch.Tensor) -> torch.Tensor:
        user_final, item_final = self.embeddings()
        return user_final[users] @ item_final.T  # (B, d) @ (d, n_items) -> (B, n_items)

    def training_loss(self, batch: Batch, weight_decay: float) -> torch.Tensor:
        user_final, item_final = self.embeddings()
        loss = bpr_loss(user_final[batch.users], item_final[batch.pos], item_final[batch.neg])
        # Regularise the ego rows this batch touched (LightGCN paper form of weight decay).
        reg = l2_rows(self.user_emb[batch.users], self.item_emb[batch.pos], self.item_emb[batch.neg])
        return loss + weight_decay * reg

    def grow(self, n_users: int, n_items: int, pairs: np.ndarray, init: Init, k: int) -> None:
        generator = torch.Generator(device=self.device).manual_seed(self.config.seed + n_users + n_items)
        users, items = grow_tables(self.user_emb.detach(), self.item_emb.detach(), pairs, n_users, n_items, init, k, generator)
        self.user_emb, self.item_emb = nn.Parameter(users), nn.Parameter(items)
        self.n_users, self.n_items = n_users, n_items
        # The new pairs join the graph rather than replace it, so a grown LightGCN still ranks
        # old users and items from their own edges before it trains (training re-sets the graph).
        self.set_interactions(np.concatenate([self.interactions, np.asarray(pairs, dtype=np.int64).reshape(-1, 2)]))

    def user_item_representations(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {"ego": (self.user_emb, self.item_emb), "final": self.embeddings()}
