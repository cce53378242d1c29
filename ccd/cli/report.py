"""`ccd report`: write the static ops dashboard (HTML page + PNG plots) and print its path."""

from __future__ import annotations

import argparse

from ccd.cli.common import add_command, emit, home_of


def register(commands: argparse._SubParsersAction) -> None:
    parser = add_command(commands, "report", run_report, "write the ops dashboard: blocks, validation, quality, models, registry", settings=False)
    parser.add_argument("--out", default=None, help="output folder (default <home>/reports/dashboard)")
    parser.add_argument("--no-latency", action="store_true", help="skip timing each registered student's scoring")


def run_report(args: argparse.Namespace) -> int:
    from ccd.report import build_dashboard  # matplotlib loads only for this command

    result = build_dashboard(home_of(args), args.out, latency=not args.no_latency)
    emit(args, result, lambda: result["path"])
    return 0
