"""Ranking Distillation (RD, Tang & Wang KDD 2018), the pointwise baseline of DE-RRD.

The teacher's top-K unobserved items of a user become extra positives for the student, each
weighted by its teacher rank: for student scores s_1..s_K of the teacher's top-K (best first),

    L_RD(u) = − Σ_r w_r · log σ(s_r),    w_r = exp(−r/λ) / Σ_{r'} exp(−r'/λ),  r = 1..K.

Our variant, stated exactly because DE-RRD does not give RD's settings: RD's *position*
weighting only (its "hybrid" scheme adds a dynamic weight from the student's rank of each item,
which we leave out), weights normalised to sum 1 per user so λ_RD alone sets the term's scale,
and positive-only log-loss on the raw student score (the inner product for BPR-MF), which is
the BCE of a positive label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rank_weights(k: int, temperature: float, device: torch.device | str | None = None) -> torch.Tensor:
    """Position weights w_r ∝ exp(−r/λ) for r = 1..k, summing to 1, shape (k,).

    Example
    -------
    >>> rank_weights(2, 1.0)  # e^-1 / (e^-1 + e^-2), e^-2 / (...)
    tensor([0.7311, 0.2689])
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got {k}, {temperature}")
    ranks = torch.arange(1, k + 1, dtype=torch.float32, device=device)
    return torch.softmax(-ranks / temperature, dim=0)


def rd_loss(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted positive log-loss of each row.

    Parameters
    ----------
    scores : torch.Tensor, shape (B, K)
        Student scores of each user's teacher top-K items, in teacher order.
    weights : torch.Tensor, shape (K,)
        From `rank_weights`.

    Returns
    -------
    torch.Tensor, shape (B,)
        −Σ_r w_r log σ(s_r), >= 0.
    """
    if scores.ndim != 2 or weights.shape != scores.shape[1:]:
        raise ValueError(f"expected scores (B, K) and weights (K,), got {tuple(scores.shape)} and {tuple(weights.shape)}")
    return -(F.logsigmoid(scores) * weights).sum(dim=1)
