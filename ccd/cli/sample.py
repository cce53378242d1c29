"""`ccd make-sample` (the embedded synthetic stream) and `ccd make-blocks` (raw log to blocks)."""

from __future__ import annotations

import argparse
import dataclasses
from datetime import datetime, timezone
from typing import Any

from ccd.cli.common import add_command, config_of, emit, table
from ccd.lake.make_blocks import make_blocks
from ccd.lake.synthetic import write_sample


def register(commands: argparse._SubParsersAction) -> None:
    sample = add_command(commands, "make-sample", _make_sample, "generate the synthetic sample stream (section [sample] of the config)", home=False)
    sample.add_argument("--out", default="data/sample", help="output folder (default: data/sample)")
    sample.add_argument("--seed", type=int, default=None, help="random seed (default: sample.seed of the config)")

    blocks = add_command(commands, "make-blocks", _make_blocks, "cut a raw timestamped log into a base block and incremental blocks",
                         settings=False, home=False)
    blocks.add_argument("raw", metavar="RAW_FILE", help="CSV or Parquet log with a user, an item and a timestamp column")
    blocks.add_argument("--out", required=True, help="output folder for block_0..block_N")
    blocks.add_argument("--blocks", type=int, default=5, help="incremental blocks after the base block (default: 5)")
    blocks.add_argument("--base-fraction", type=float, default=0.5, help="share of interactions in block 0 (default: 0.5)")
    blocks.add_argument("--kcore", type=int, default=0, help="keep users and items with at least K interactions (default: 0, off)")
    blocks.add_argument("--kcore-single-pass", action="store_true", help="filter once, as the CCD authors did, instead of until stable")
    blocks.add_argument("--user-col", default="user_id")
    blocks.add_argument("--item-col", default="item_id")
    blocks.add_argument("--time-col", default="timestamp", help="integer unix seconds or ISO 8601 date/times")
    blocks.add_argument("--format", dest="fmt", choices=("parquet", "csv"), default="parquet")


def _make_sample(args: argparse.Namespace) -> int:
    config = config_of(args).sample
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    stats = write_sample(args.out, config)
    payload = {"out": args.out, "seed": config.seed, "rows": sum(s["rows"] for s in stats), "blocks": stats}
    emit(args, payload, lambda: _describe(payload))
    return 0


def _make_blocks(args: argparse.Namespace) -> int:
    report = make_blocks(
        args.raw,
        args.out,
        n_blocks=args.blocks,
        base_fraction=args.base_fraction,
        kcore=args.kcore,
        single_pass=args.kcore_single_pass,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        fmt=args.fmt,
    )
    emit(args, report, lambda: _describe(report))
    return 0


def _describe(payload: dict[str, Any]) -> str:
    rows = [{**s, "from": _day(s["min_timestamp"]), "to": _day(s["max_timestamp"])} for s in payload["blocks"]]
    columns = ["block", "rows", "users", "items", "new_users", "new_items", "from", "to"]
    lines = [f"wrote {len(rows)} blocks, {payload['rows']} interactions, to {payload['out']}"]
    if "input_rows" in payload:
        lines.append(
            f"read {payload['input_rows']} rows; dropped {payload['duplicates_dropped']} duplicate pairs "
            f"and {payload['kcore_dropped']} by k-core"
        )
    return "\n".join([*lines, table(rows, columns)])


def _day(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d")
