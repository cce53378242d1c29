"""Read the lake: the interactions of a block, with internal ids, as the catalog names them.

Only files the catalog records are read, so an orphan left by a crashed ingest is invisible.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ccd.data import BlockData
from ccd.errors import CcdError
from ccd.home import Home
from ccd.lake import catalog


def read_block(home: Home, block: int) -> pd.DataFrame:
    """Block `block` as a frame with columns user, item (int64), split (str), timestamp."""
    record = _record(home, block)
    frame = pq.read_table(home.root / record.file).to_pandas()
    frame["split"] = frame["split"].astype(str)
    return frame


def load_block_data(home: Home, block: int) -> BlockData:
    """What training and evaluation need for block k: its splits and the train history before it."""
    record = _record(home, block)
    history = [_train_pairs(read_block(home, k)) for k in range(block)]
    return BlockData.from_frame(
        read_block(home, block),
        block=block,
        n_users=record.n_users,
        n_items=record.n_items,
        history=np.concatenate(history) if history else np.zeros((0, 2), np.int64),
    )


def _train_pairs(frame: pd.DataFrame) -> np.ndarray:
    return frame.loc[frame["split"] == "train", ["user", "item"]].to_numpy(np.int64)


def _record(home: Home, block: int) -> catalog.BlockRecord:
    record = catalog.get_block(home, block)
    if record is None:
        known = [b.block for b in catalog.list_blocks(home)]
        raise CcdError(f"block {block} is not in the lake (ingested blocks: {known or 'none'})")
    return record
