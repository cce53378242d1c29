"""`ccd stages`: the stage ledger, i.e. which stages of which block finished, failed or are running."""

from __future__ import annotations

import argparse

from ccd import stages
from ccd.cli.common import add_command, emit, home_of, table

COLUMNS = ["block", "stage", "run_key", "status", "attempts", "started_at", "seconds", "error"]


def register(commands: argparse._SubParsersAction) -> None:
    parser = add_command(commands, "stages", run_stages, "list pipeline stages per block (done, failed, running)", settings=False)
    parser.add_argument("--block", type=int, default=None, help="only this block")
    parser.add_argument("--run-key", default=None, help="only this run (default: all; the normal run is 'default')")


def run_stages(args: argparse.Namespace) -> int:
    records = [r.to_dict() for r in stages.list_stages(home_of(args), args.block, args.run_key)]
    emit(args, {"stages": records}, lambda: table(records, COLUMNS))
    return 0
