"""`BlockData`: what models, training and evaluation need from the lake for one block.

The lake stores interactions with dense internal ids (`ccd.lake`); this module is the contract
between it and everything that learns. Ids are assigned in order of first appearance, so the
entities seen up to block k are exactly ids `0..n_users-1` and `0..n_items-1`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class BlockData:
    """Interactions of one block plus the history needed to evaluate it.

    Attributes
    ----------
    block : int
        Block number k.
    n_users, n_items : int
        Size of the id space after block k (all ids seen in blocks 0..k).
    train, valid, test : np.ndarray, shape (N, 2), int64
        (user, item) pairs of block k's splits.
    history : np.ndarray, shape (H, 2), int64
        Training pairs of all blocks *before* k. Evaluation excludes these and block k's train
        pairs from the ranking (the protocol, without the authors' bug B14).
    """

    block: int
    n_users: int
    n_items: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    history: np.ndarray

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        block: int,
        n_users: int | None = None,
        n_items: int | None = None,
        history: np.ndarray | None = None,
    ) -> "BlockData":
        """Build from a frame with integer columns `user`, `item` and a `split` column."""
        pairs = {s: frame.loc[frame["split"] == s, ["user", "item"]].to_numpy(np.int64) for s in SPLITS}
        hist = np.zeros((0, 2), np.int64) if history is None else np.asarray(history, np.int64)
        every = np.concatenate([hist, *pairs.values()]) if len(frame) or len(hist) else np.zeros((0, 2), np.int64)
        n_u = int(every[:, 0].max()) + 1 if n_users is None and len(every) else (n_users or 0)
        n_i = int(every[:, 1].max()) + 1 if n_items is None and len(every) else (n_items or 0)
        return cls(block, n_u, n_i, pairs["train"], pairs["valid"], pairs["test"], hist)

    @property
    def seen_train(self) -> np.ndarray:
        """Every training pair seen so far (history plus this block's train), shape (H+N, 2)."""
        return np.concatenate([self.history, self.train])
