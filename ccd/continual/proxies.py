"""Stability and plasticity proxies: exponential moving blends of past students.

After block k-1 the CCD student lineage has a distilled student D_{k-1}. The two proxies keep a
memory of earlier students at different speeds:

    S_{k-1}[r] = sw * S_{k-2}[r] + (1 - sw) * D_{k-1}[r]     for rows r that S_{k-2} has
    S_{k-1}[r] = D_{k-1}[r]                                  for rows new since then

and the same for P with weight pw. A large sw keeps old knowledge (stability); a small pw
follows the latest student (plasticity). At k = 1 both proxies are D_0 itself. Blends act on the
embedding tables (the ego tables for LightGCN), row by row.
"""

from __future__ import annotations

import torch


def blend_table(previous: torch.Tensor | None, current: torch.Tensor, weight: float) -> torch.Tensor:
    """Blend one embedding table.

    Parameters
    ----------
    previous : (n_prev, d) or None
        The proxy's table after the block before; None at the first block (no proxy yet).
    current : (n_cur, d), n_cur >= n_prev
        The latest distilled student's table.
    weight : float in [0, 1]
        Weight on the previous proxy (`sw` or `pw`).

    Returns
    -------
    (n_cur, d) tensor, a new tensor (inputs are not modified).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"proxy weight must be in [0, 1], got {weight}")
    blended = current.detach().clone()
    if previous is None:
        return blended
    if previous.shape[0] > current.shape[0] or previous.shape[1] != current.shape[1]:
        raise ValueError(f"proxy table {tuple(previous.shape)} does not fit student table {tuple(current.shape)}")
    n_prev = previous.shape[0]
    blended[:n_prev] = weight * previous.detach() + (1.0 - weight) * current.detach()[:n_prev]
    return blended


def blend_state(previous: dict[str, torch.Tensor] | None, current: dict[str, torch.Tensor], weight: float) -> dict[str, torch.Tensor]:
    """Blend every embedding table of two model state dicts (same keys; rows may have grown)."""
    if previous is not None and set(previous) != set(current):
        raise ValueError(f"proxy and student differ in tables: {sorted(set(previous) ^ set(current))}")
    return {name: blend_table(None if previous is None else previous[name], table, weight) for name, table in current.items()}
