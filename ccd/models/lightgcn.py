"""LightGCN (He et al., SIGIR 2020): BPR-MF ego tables smoothed over the user-item graph.

With A the (n_users + n_items) square bipartite adjacency of the training pairs and D its degree
matrix, one layer is e^{l+1} = D^-1/2 A D^-1/2 e^l, and the final embedding is the mean of
e^0..e^L. There are no weights besides the ego tables, no nonlinearity and no dropout (spec 1).

The graph is the one given by `set_interactions`. Training on a block hands it every training
pair seen so far (`train.graph = "seen"`); the authors' code used the block's pairs only, so an
entity inactive in the block keeps e^0 / (L + 1) and its items sink (spec B11, `"block"`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ccd.models.bpr import BPRMF


@dataclass(frozen=True)
class LightGCNConfig:
    dim: int = 64
    layers: int = 2  # spec 1: 2 propagation layers
    seed: int = 0


def normalized_adjacency(pairs: np.ndarray, n_users: int, n_items: int, device: torch.device) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph of unique `pairs` (N, 2), as a sparse CSR
    (n_users + n_items) square matrix; item j is node n_users + j, isolated nodes get zero rows.

    CSR because its sparse x dense product is several times faster than COO's on CPU.
    """
    pairs = torch.as_tensor(pairs, device=device)
    users, items = pairs[:, 0], pairs[:, 1] + n_users
    rows, cols = torch.cat([users, items]), torch.cat([items, users])  # (2N,): both directions
    n = n_users + n_items
    degree = torch.bincount(rows, minlength=n).float()  # (n,)
    inv_sqrt = torch.where(degree > 0, degree.rsqrt(), torch.zeros_like(degree))
    values = inv_sqrt[rows] * inv_sqrt[cols]
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n), check_invariants=True).coalesce()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return coo.to_sparse_csr()


class SymmetricSpmm(torch.autograd.Function):
    """graph @ x for a symmetric sparse `graph`, differentiable in x.

    The gradient graph^T @ g equals graph @ g, so the backward reuses the same CSR matrix;
    torch's generic backward would transpose and re-sort the graph at every step.
    """

    @staticmethod
    def forward(ctx, graph: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.graph = graph
        return torch.sparse.mm(graph, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, torch.sparse.mm(ctx.graph, grad)


class LightGCN(BPRMF):
    """LightGCN with BPR loss on the propagated embeddings.

    Attributes
    ----------
    user_emb, item_emb : nn.Parameter, shapes (n_users, dim), (n_items, dim)
        Ego (layer-0) tables.
    graph : torch.Tensor, sparse (n_users + n_items, n_users + n_items)
        Normalised adjacency of the pairs given to `set_interactions`.
    """

    kind = "lightgcn"
    Config = LightGCNConfig
    uses_interactions = True

    def __init__(self, config: LightGCNConfig, n_users: int, n_items: int) -> None:
        if config.layers < 0:
            raise ValueError(f"layers must be >= 0, got {config.layers}")
        super().__init__(config, n_users, n_items)
        self._cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.set_interactions(np.zeros((0, 2), np.int64))

    def set_interactions(self, pairs: np.ndarray) -> None:
        super().set_interactions(pairs)
        self.graph = normalized_adjacency(self.interactions, self.n_users, self.n_items, self.device)
        self._cache = None

    def _apply(self, fn, *args, **kwargs):
        self._cache = None  # .to(), .cuda(), .double() ... make new tables
        return super()._apply(fn, *args, **kwargs)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Propagated (users (n_users, d), items (n_items, d)), the mean of layers 0..L.

        Without autograd (evaluation) the result is cached until the tables change: the key
        holds each table's storage and in-place version counter, which every optimiser step
        and `load_state_dict` bumps; `set_interactions`, `grow` and device moves drop it.
        """
        if self.graph.device != self.device or self.graph.dtype != self.user_emb.dtype:
            self.graph = self.graph.to(self.device, self.user_emb.dtype)
        key = (self.user_emb.data_ptr(), self.user_emb._version, self.item_emb.data_ptr(), self.item_emb._version)
        if not torch.is_grad_enabled() and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        layer = torch.cat([self.user_emb, self.item_emb])  # e^0: (n_users + n_items, d)
        total = layer
        for _ in range(self.config.layers):
            layer = SymmetricSpmm.apply(self.graph, layer)  # e^{l+1} = D^-1/2 A D^-1/2 e^l
            total = total + layer
        final = total / (self.config.layers + 1)
        result = (final[: self.n_users], final[self.n_users :])
        self._cache = None if torch.is_grad_enabled() else (key, result)
        return result
