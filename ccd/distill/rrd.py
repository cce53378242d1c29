"""Relaxed Ranking Distillation (RRD, Kang et al. CIKM 2020 §3; IR-RRD on the item side).

For one user, let s_1..s_K be the student's scores of the K "interesting" items in the
teacher's order and t_1..t_L its scores of L "uninteresting" items. RRD is the negative
log-likelihood of the teacher's order under a Plackett–Luce model restricted to the top K, with
every uninteresting item in every denominator (their mutual order is ignored):

    L(u) = Σ_k [ -s_k + log( Σ_{i>=k} exp(s_i) + Σ_j exp(t_j) ) ]

Each denominator is computed in log space: the tail sums Σ_{i>=k} exp(s_i) are a reversed
`logcumsumexp`, joined to the constant `logsumexp(t)` by `logaddexp`. Nothing is clamped, so
the loss is exact for any finite scores (the KDs re-implementation clamps at 80, CCD at 10,
because their `exp` overflowed). IR-RRD is the same function with users in place of items.
"""

from __future__ import annotations

import torch


def rrd_loss(interesting: torch.Tensor, uninteresting: torch.Tensor) -> torch.Tensor:
    """Relaxed Plackett–Luce loss of each row.

    Parameters
    ----------
    interesting : torch.Tensor, shape (B, K)
        Student scores of each row's interesting entities, in the teacher's order (best first).
    uninteresting : torch.Tensor, shape (B, L)
        Student scores of each row's uninteresting entities, any order; L may be 0.

    Returns
    -------
    torch.Tensor, shape (B,)
        -log p(teacher order of the interesting entities), >= 0; sum it for the spec's loss.

    Example
    -------
    >>> rrd_loss(torch.tensor([[2.0, 1.0]]), torch.tensor([[0.0]]))  # -log(e²/(e²+e+1)·e/(e+1))
    tensor([0.7209])
    """
    if interesting.ndim != 2 or uninteresting.ndim != 2 or len(interesting) != len(uninteresting):
        raise ValueError(
            f"expected interesting (B, K) and uninteresting (B, L), got {tuple(interesting.shape)} and {tuple(uninteresting.shape)}"
        )
    # tails[:, k] = log Σ_{i>=k} exp(s_i): a cumulative log-sum-exp from the end.
    tails = torch.logcumsumexp(interesting.flip(1), dim=1).flip(1)  # (B, K)
    rest = torch.logsumexp(uninteresting, dim=1, keepdim=True)  # (B, 1); -inf when L == 0
    denominators = torch.logaddexp(tails, rest)  # (B, K)
    return (denominators - interesting).sum(dim=1)
