"""Ingest of the real Gowalla stream (marker `slow`): counts must match the datasets README."""

from __future__ import annotations

import pytest

from ccd.config import LakeConfig
from ccd.lake import catalog
from ccd.lake.ingest import ingest_block
from tests.conftest import GOWALLA

# From ../shared/datasets/README.md: rows, users, items, new users, new items per block.
EXPECTED = {
    0: (512_784, 19_095, 39_149, 19_095, 39_149),
    1: (49_748, 7_745, 19_423, 1_413, 462),
    2: (101_914, 12_071, 27_198, 3_005, 702),
    3: (112_797, 13_103, 29_163, 2_939, 364),
    4: (116_268, 13_326, 28_948, 2_520, 228),
    5: (77_684, 9_954, 23_177, 886, 83),
}


@pytest.mark.slow
def test_gowalla_stream_ingests_with_documented_counts(home):
    if not GOWALLA.exists():
        pytest.fail(f"Gowalla data not found at {GOWALLA}")
    for block in range(6):
        ingest_block(home, GOWALLA / f"block_{block}.parquet", block, LakeConfig())
    got = {b.block: (b.rows, b.users, b.items, b.new_users, b.new_items) for b in catalog.list_blocks(home)}
    assert got == EXPECTED
    last = catalog.list_blocks(home)[-1]
    assert (last.n_users, last.n_items) == (29_858, 40_988)
    assert sum(b.rows for b in catalog.list_blocks(home)) == 971_195
