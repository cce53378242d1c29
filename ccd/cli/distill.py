"""Distillation command: `ccd distill --block K --method de-rrd`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ccd.cli.common import add_command, config_of, emit, home_of, show_progress, table
from ccd.distill.run import distill_stored
from ccd.distill.trainer import METHODS
from ccd.errors import BadInputError
from ccd.evaluate import CUTOFF, RECALL, SPLIT_METRICS

COLUMNS = ["model", "kind", "dim", "params", *SPLIT_METRICS, "latency_ms"]


def register(commands: argparse._SubParsersAction) -> None:
    parser = add_command(commands, "distill", run_distill, "distill a compact student from a block's trained teacher")
    parser.add_argument("--block", type=int, required=True, help="block number K (ingested, teacher trained)")
    parser.add_argument("--method", choices=list(METHODS), default=None, help="default: config distill.method")
    parser.add_argument("--teacher", default=None, metavar="PATH",
                        help="teacher folder: train-teacher's ensemble lists or one saved model (default: the block's ensemble)")
    parser.add_argument("--dim", type=int, default=None, help="student dimension (default: config distill.student_dim)")
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: config train.max_epochs)")


def run_distill(args: argparse.Namespace) -> int:
    config = config_of(args)
    distill = config.distill
    if args.method is not None:
        distill = dataclasses.replace(distill, method=args.method)
    if args.dim is not None:
        if args.dim < 1:
            raise BadInputError(f"--dim must be >= 1, got {args.dim}")
        distill = dataclasses.replace(distill, student_dim=args.dim)
    config = config.replace(distill=distill)
    if args.epochs is not None:
        if args.epochs < 1:
            raise BadInputError(f"--epochs must be >= 1, got {args.epochs}")
        config = config.replace(train=dataclasses.replace(config.train, max_epochs=args.epochs))
    teacher = Path(args.teacher) if args.teacher else None
    report = distill_stored(home_of(args), args.block, config, teacher, progress=show_progress(args))
    emit(args, report, lambda: _human(report))
    return 0


def _human(report: dict) -> str:
    rows = [{"model": "student", **report["student"]}, {"model": "teacher", **report["teacher"]}]
    ratio = report["ratio"]
    share = lambda key: "-" if ratio[key] is None else f"{ratio[key]:.3f}"
    return "\n".join([
        f"block {report['block']}: {report['method']} student, best epoch {report['train']['best_epoch']} of {report['train']['epochs']}",
        table(rows, COLUMNS),
        f"student / teacher: params {share('params')}, latency {share('latency')}, test Recall@{CUTOFF} {share(f'test_{RECALL}')}",
        f"saved to {report['saved']}",
    ])
