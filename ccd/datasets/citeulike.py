"""CiteULike-t as released by the DE-RRD authors, for the leave-one-out protocol.

The file (`../shared/datasets/citeulike/interactions.parquet`) has columns `user_id`,
`item_id` and `split` (train / valid / test): per user one valid and one test item, the rest
train. Ids are mapped to dense internal ids here (sorted external ids), and each held-out pair
gets its 499 candidates: items the user never interacted with, sampled uniformly and fixed by a
seed, as in the paper (`ccd.evaluate.sample_loo_candidates`).

The released file holds 5,219 users and 25,181 items with interactions; the paper's counts
(5,220 / 25,182) include one user and one item that have none, so they do not exist here.

Example
-------
>>> data = load_citeulike()
>>> loo_metrics(model.score, data.test, data.test_candidates)["hit@5"]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ccd.errors import BadInputError
from ccd.evaluate import sample_loo_candidates

DEFAULT_PATH = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "citeulike" / "interactions.parquet"


@dataclass(frozen=True)
class LooData:
    """A static leave-one-out dataset with fixed candidates.

    Attributes
    ----------
    n_users, n_items : int
        Internal ids are `0..n_users-1` and `0..n_items-1`.
    train : np.ndarray, shape (N, 2), int64
        (user, item) training pairs.
    valid, test : np.ndarray, shape (U, 2), int64
        One held-out (user, item) pair per user that has one, sorted by user.
    valid_candidates, test_candidates : np.ndarray, shape (U, C), int64
        Row r: the C sampled items ranked against `valid[r]` / `test[r]`; none of them is any
        item the user interacted with (train, valid or test).
    user_ids, item_ids : np.ndarray, int64
        External id of each internal id.
    """

    n_users: int
    n_items: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    valid_candidates: np.ndarray
    test_candidates: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray


def load_citeulike(path: str | Path = DEFAULT_PATH, n_candidates: int = 499, seed: int = 0) -> LooData:
    """Read the CiteULike Parquet file and sample the LOO candidates.

    Parameters
    ----------
    path : path
        Parquet with `user_id`, `item_id`, `split`.
    n_candidates : int
        Sampled negatives per held-out pair (499 in DE-RRD).
    seed : int
        Valid candidates use `seed`, test candidates `seed + 1`.
    """
    path = Path(path)
    try:
        frame = pq.read_table(path, columns=["user_id", "item_id", "split"]).to_pandas()
    except (OSError, KeyError) as exc:
        raise BadInputError(f"cannot read LOO dataset {path}: {exc}") from None
    return loo_from_frame(frame, n_candidates, seed)


def loo_from_frame(frame: pd.DataFrame, n_candidates: int = 499, seed: int = 0) -> LooData:
    """Build `LooData` from a frame with `user_id`, `item_id`, `split` columns."""
    split = frame["split"].astype(str).to_numpy()
    unknown = set(np.unique(split)) - {"train", "valid", "test"}
    if unknown:
        raise BadInputError(f"unknown split value(s) {sorted(unknown)}; expected train / valid / test")
    user_ids, users = np.unique(frame["user_id"].to_numpy(np.int64), return_inverse=True)
    item_ids, items = np.unique(frame["item_id"].to_numpy(np.int64), return_inverse=True)
    pairs = np.stack([users, items], 1).astype(np.int64)
    held = {}
    for name in ("valid", "test"):
        part = pairs[split == name]
        if len(np.unique(part[:, 0])) != len(part):
            raise BadInputError(f"leave-one-out needs at most one {name} item per user")
        held[name] = part[np.argsort(part[:, 0])]
    n_items = len(item_ids)
    candidates = {
        name: sample_loo_candidates(n_items, part[:, 0], part[:, 1], pairs, n=n_candidates, seed=seed + offset)
        for offset, (name, part) in enumerate(held.items())
    }
    return LooData(
        n_users=len(user_ids),
        n_items=n_items,
        train=pairs[split == "train"],
        valid=held["valid"],
        test=held["test"],
        valid_candidates=candidates["valid"],
        test_candidates=candidates["test"],
        user_ids=user_ids,
        item_ids=item_ids,
    )
