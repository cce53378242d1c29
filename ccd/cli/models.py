"""Model commands: `ccd train-teacher`."""

from __future__ import annotations

import argparse
import dataclasses

from ccd.cli.common import add_command, config_of, emit, home_of, show_progress, table
from ccd.errors import BadInputError
from ccd.evaluate import SPLIT_METRICS
from ccd.teacher import train_teacher

COLUMNS = ["member", "kind", "params", "status", "best_epoch", "epochs", "s_per_epoch", *SPLIT_METRICS]


def register(commands: argparse._SubParsersAction) -> None:
    parser = add_command(commands, "train-teacher", run_train_teacher,
                         "train the teacher ensemble of an ingested block and write its top-K lists")
    parser.add_argument("--block", type=int, required=True, help="block number K (ingested)")
    parser.add_argument("--members", default=None, metavar="SPEC[,SPEC...]",
                        help="kind:dim[xcount] list, e.g. lightgcn:64x3,bpr:64x2,vae:64x1 (default: config teacher.members)")
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs per member (default: config train.max_epochs)")
    parser.add_argument("--retrain", action="store_true", help="retrain members even when a matching saved one exists")


def run_train_teacher(args: argparse.Namespace) -> int:
    config = config_of(args)
    if args.members is not None:
        config = config.replace(teacher=dataclasses.replace(config.teacher, members=tuple(args.members.split(","))))
    if args.epochs is not None:
        if args.epochs < 1:
            raise BadInputError(f"--epochs must be >= 1, got {args.epochs}")
        config = config.replace(train=dataclasses.replace(config.train, max_epochs=args.epochs))
    report = train_teacher(home_of(args), args.block, config, retrain=args.retrain, progress=show_progress(args))
    rows = [*report["members"], report["ensemble"]]
    emit(args, report, lambda: f"teacher of block {args.block}\n" + table(rows, COLUMNS) + f"\ntop-K lists: {report['topk']['user_topk']}")
    return 0
