"""Mult-VAE (Liang et al., WWW 2018): a variational autoencoder over each user's item row.

The encoder reads the user's row of known items (L2-normalised, with input dropout during
training) through one tanh hidden layer to a Gaussian q(z|x) of size `dim`; the decoder maps z
through one tanh hidden layer to logits over all items, trained with the multinomial likelihood
plus beta * KL(q || N(0, I)), beta annealed linearly from 0 to `kl_cap`.

A user has no embedding table: scores come from decoding the user's known row, so the model
needs the rows (`set_interactions`), and a new user needs nothing but its row. The two
item-sized weights are item tables: `item_in` (n_items, hidden) is the encoder's input layer
read row by row (cheap for sparse rows), `item_out` (n_items, hidden) with `out_bias` the
decoder's output layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ccd.evaluate import UserItemCSR
from ccd.models.base import Batch, Recommender
from ccd.models.init import Init, random_rows, two_hop


@dataclass(frozen=True)
class VAEConfig:
    dim: int = 64  # latent size
    hidden: int = 600  # Liang et al.: [I -> 600 -> 200 -> 600 -> I]
    dropout: float = 0.5  # input dropout, Liang et al.
    kl_cap: float = 0.2  # Liang et al.'s best anneal cap
    # Steps to reach kl_cap. Liang et al. anneal over 200,000 steps of 500 users; our larger
    # batches take far fewer steps, so the ramp is shorter to reach the cap within training.
    kl_anneal_steps: int = 2000
    seed: int = 0


def kl_weight(step: int, cap: float, anneal_steps: int) -> float:
    """beta at optimiser step `step`: linear from 0 to `cap` over `anneal_steps`, then `cap`."""
    return cap * min(1.0, step / max(anneal_steps, 1))


class MultVAE(Recommender):
    """Mult-VAE with a seeded, explicit-generator training path.

    Attributes
    ----------
    item_in : nn.Parameter, shape (n_items, hidden)
    item_out : nn.Parameter, shape (n_items, hidden)
    out_bias : nn.Parameter, shape (n_items,)
    steps : torch.LongTensor, scalar buffer
        Optimiser steps taken, which drives the KL annealing; saved with the weights.
    """

    kind = "vae"
    Config = VAEConfig
    batch_kind = "users"
    uses_interactions = True

    def __init__(self, config: VAEConfig, n_users: int, n_items: int) -> None:
        if not 0.0 <= config.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")
        super().__init__(config, n_users, n_items)
        generator = torch.Generator().manual_seed(config.seed)
        xavier = lambda *shape: nn.Parameter(nn.init.xavier_uniform_(torch.empty(*shape), generator=generator))
        self.item_in = xavier(n_items, config.hidden)
        self.in_bias = nn.Parameter(torch.zeros(config.hidden))
        self.to_latent = nn.Linear(config.hidden, 2 * config.dim)  # -> (mu, logvar)
        self.from_latent = nn.Linear(config.dim, config.hidden)
        for layer in (self.to_latent, self.from_latent):
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            nn.init.zeros_(layer.bias)
        self.item_out = xavier(n_items, config.hidden)
        self.out_bias = nn.Parameter(torch.zeros(n_items))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.set_interactions(np.zeros((0, 2), np.int64))

    def set_interactions(self, pairs: np.ndarray) -> None:
        super().set_interactions(pairs)
        self.rows = UserItemCSR.from_pairs(self.interactions, self.n_users, self.device)

    def encode(self, users: torch.Tensor, keep: float = 1.0, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each (B, dim), of the users' rows; `keep` < 1 applies input dropout."""
        if self.rows.indptr.device != self.device:
            self.rows = self.rows.to(self.device)
        row, items = self.rows.gather(users)  # (M,), (M,): the batch's nonzero entries
        count = torch.bincount(row, minlength=len(users)).clamp(min=1).float()  # (B,)
        value = count.rsqrt()[row]  # (M,): the entries of the L2-normalised binary rows
        if keep < 1.0:
            value = value * (torch.rand(len(row), generator=generator, device=self.device) < keep) / keep
        # Sparse row (B, n_items) @ item_in (n_items, hidden), summed over the nonzeros only.
        first = torch.zeros(len(users), self.config.hidden, device=self.device).index_add_(0, row, self.item_in[items] * value[:, None])
        hidden = torch.tanh(first + self.in_bias)  # (B, hidden)
        mu, logvar = self.to_latent(hidden).chunk(2, dim=1)  # (B, dim) each
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits over all items: z (B, dim) -> (B, n_items)."""
        return self.decode_hidden(z) @ self.item_out.T + self.out_bias

    def decode_hidden(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.from_latent(z))  # (B, hidden)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(users)
        return self.decode(mu)  # deterministic: no dropout, z = mu

    def training_loss(self, batch: Batch, weight_decay: float) -> torch.Tensor:
        mu, logvar = self.encode(batch.users, 1.0 - self.config.dropout, batch.generator)
        noise = torch.randn(mu.shape, generator=batch.generator, device=mu.device)
        z = mu + noise * torch.exp(0.5 * logvar)  # reparameterisation, (B, dim)
        log_probs = F.log_softmax(self.decode(z), dim=1)  # (B, n_items)
        row, items = self.rows.gather(batch.users)
        nll = -log_probs[row, items].sum() / len(batch.users)  # multinomial likelihood of the row
        kl = 0.5 * (torch.exp(logvar) + mu.pow(2) - 1.0 - logvar).sum(dim=1).mean()
        beta = kl_weight(int(self.steps), self.config.kl_cap, self.config.kl_anneal_steps)
        self.steps += 1
        reg = sum(p.pow(2).sum() for p in (self.item_in, self.to_latent.weight, self.from_latent.weight, self.item_out)) / 2
        return nll + beta * kl + weight_decay * reg

    def grow(self, n_users: int, n_items: int, pairs: np.ndarray, init: Init, k: int) -> None:
        """Add item rows to the three item tables; users need nothing (they are their rows).

        "neighbour" uses only the two-hop term of the CCD initialisation, on the concatenated
        item tables: the one-hop term is a mean of user embeddings, which a VAE does not have.
        """
        if n_users < self.n_users or n_items < self.n_items:
            raise ValueError(f"cannot shrink {self.n_users} x {self.n_items} to {n_users} x {n_items}")
        with torch.no_grad():
            tables = torch.cat([self.item_in, self.item_out, self.out_bias[:, None]], dim=1)  # (I_old, 2h+1)
            if init == "neighbour":
                new = two_hop(tables, np.asarray(pairs)[:, ::-1], n_items, k)
            elif init == "random":
                generator = torch.Generator(device=self.device).manual_seed(self.config.seed + n_users + n_items)
                new = random_rows(n_items - self.n_items, tables.shape[1], generator, self.device)
            else:
                raise ValueError(f"init must be 'neighbour' or 'random', got {init!r}")
            item_in, item_out, out_bias = torch.cat([tables, new]).split([self.config.hidden, self.config.hidden, 1], dim=1)
        self.item_in, self.item_out = nn.Parameter(item_in.contiguous()), nn.Parameter(item_out.contiguous())
        self.out_bias = nn.Parameter(out_bias.squeeze(1).contiguous())
        self.n_users, self.n_items = n_users, n_items
        self.set_interactions(pairs)

    @torch.no_grad()
    def user_item_representations(self, batch_users: int = 4096) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{"final": (users (n_users, hidden + 1), items (n_items, hidden + 1))}.

        A user's vector is the decoder's last hidden layer at z = mu plus a constant 1, an
        item's is its output row plus its bias, so their inner product is exactly `score`.
        """
        parts = []
        for start in range(0, self.n_users, batch_users):
            users = torch.arange(start, min(start + batch_users, self.n_users), device=self.device)
            parts.append(self.decode_hidden(self.encode(users)[0]))
        hidden = torch.cat(parts)
        users = torch.cat([hidden, torch.ones(len(hidden), 1, device=self.device)], dim=1)
        return {"final": (users, torch.cat([self.item_out, self.out_bias[:, None]], dim=1))}
