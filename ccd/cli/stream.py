"""`ccd stream`: run CCD (or a baseline) over a stream of blocks and report its continual metrics.

    ccd stream --data data/sample --method ccd            # ingest, run every block, report
    ccd stream --method finetune --blocks 3 --json        # blocks 0..2 of the lake, one JSON object
    ccd stream --method ccd --from-block 3 --run-key retrain-1   # retrain blocks 3.. under a new key
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ccd.cli.common import add_command, emit, home_of, show_progress, table
from ccd.config import RunConfig
from ccd.continual.loop import first_block, run_stream
from ccd.continual.pinned_config import run_settings
from ccd.continual.state import METHODS
from ccd.errors import BadInputError
from ccd.evaluate import CUTOFF, NDCG, RECALL
from ccd.lake.ingest import block_files, ingest_block
from ccd.stages import DEFAULT_RUN_KEY

COLUMNS = ["block", f"student_r@{CUTOFF}", f"student_n@{CUTOFF}", "LA", "RA", "H", "H_ndcg", f"teacher_r@{CUTOFF}", "teacher_H"]


def register(commands: argparse._SubParsersAction) -> None:
    parser = add_command(commands, "stream", run, "run CCD or a baseline over a stream of blocks; table of LA/RA/H per block")
    parser.add_argument("--data", default=None, metavar="FOLDER",
                        help="folder of block_<K> files to ingest first (blocks already ingested are no-ops); "
                             "default: the blocks already in the lake")
    parser.add_argument("--method", choices=METHODS, default="ccd", help="CCD or a baseline (default ccd)")
    parser.add_argument("--blocks", type=int, default=None, metavar="N", help="use blocks 0..N-1 only (default: all)")
    parser.add_argument("--run-key", default=DEFAULT_RUN_KEY, help="ledger key; a new key retrains without touching the default run")
    parser.add_argument("--from-block", type=int, default=None, metavar="K",
                        help="first block to run, earlier ones must be done (default: 0, or where the run key started)")


def run(args: argparse.Namespace) -> int:
    named = RunConfig.named(args.config, args.overrides)  # bad settings fail before the home is created
    if args.blocks is not None and args.blocks < 1:
        raise BadInputError(f"--blocks must be >= 1, got {args.blocks}")
    home = home_of(args)
    config = run_settings(home, args.run_key, named)
    if args.data is not None:
        for block, path in block_files(args.data):
            if args.blocks is None or block < args.blocks:
                ingest_block(home, path, block, config.lake)
    last = None if args.blocks is None else args.blocks - 1
    callback = None if args.json else _print_stage
    start = first_block(home, args.method, args.run_key) if args.from_block is None else args.from_block
    result = run_stream(home, args.method, config, last, args.run_key, start, progress=show_progress(args), callback=callback)
    emit(args, result, lambda: _human(result))
    return 0


def _print_stage(stage: str, info: dict[str, Any]) -> None:
    if info["event"] != "start":
        seconds = f" in {info['seconds']:.1f} s" if "seconds" in info else ""
        print(f"block {info['block']} {stage}: {info['event']}{seconds}", file=sys.stderr)


def _human(result: dict[str, Any]) -> str:
    student, teacher = result["student"], result.get("teacher")
    teachers = {row["block"]: row for row in teacher["blocks"]} if teacher else {}
    rows = []
    for row in student["blocks"]:
        summary = row["summary"] or {}
        own = teachers.get(row["block"])
        rows.append({
            "block": row["block"],
            f"student_r@{CUTOFF}": row[RECALL],
            f"student_n@{CUTOFF}": row[NDCG],
            "LA": summary.get(RECALL, {}).get("LA"),
            "RA": summary.get(RECALL, {}).get("RA"),
            "H": summary.get(RECALL, {}).get("H"),
            "H_ndcg": summary.get(NDCG, {}).get("H"),
            f"teacher_r@{CUTOFF}": own[RECALL] if own else None,
            "teacher_H": (own["summary"] or {}).get(RECALL, {}).get("H") if own else None,
        })
    params = f"student {student['params']:,} parameters" + (f", teacher {teacher['params']:,}" if teacher else "")
    lines = [f"{result['method']} over blocks 0..{result['blocks'][-1]} (run key {result['run_key']}; {params})",
             table(rows, COLUMNS), f"metrics: {result['files']['metrics']}", f"plot: {result['files']['plot']}"]
    if "plot_all" in result["files"]:
        lines.append(f"all methods: {result['files']['plot_all']}")
    if "ccd_lead" in result:
        lines += ["CCD student's H-mean lead over each baseline (Recall@20):", _lead_table(result["ccd_lead"]),
                  f"plot: {result['files']['plot_lead']}"]
    return "\n".join(lines)


def _lead_table(leads: dict[str, list[dict[str, Any]]]) -> str:
    blocks = sorted({point["block"] for points in leads.values() for point in points})
    rows = [{"baseline": name, **{f"D{p['block']}": p["lead"] for p in points}} for name, points in leads.items()]
    return table(rows, ["baseline"] + [f"D{b}" for b in blocks])
