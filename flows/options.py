"""Command-line options shared by the flows' `python -m flows.<name>` entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ccd.config import RunConfig
from ccd.errors import CcdError


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """`--home`, `--config FILE` and repeatable `--set section.key=value`, as in the `ccd` CLI."""
    parser.add_argument("--home", default=None, help="state folder (default: $CCD_HOME, else ./.ccd)")
    parser.add_argument("--config", default=None, help="config file (JSON or TOML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")


def config_parameter(args: argparse.Namespace) -> dict[str, Any]:
    """The flows' `config` parameter: only the settings the user named, checked.

    Unknown keys and wrong types fail before any run starts; a value named at its default still
    counts, since the flow applies it on top of the run's own pinned settings.
    """
    return RunConfig.named(args.config, args.overrides)


@contextmanager
def one_line_errors(flow_name: str) -> Iterator[None]:
    """End a `python -m flows.<name>` run that failed on bad input or state with one line and exit 2.

    The flow run's log (and the UI) keep the details; the terminal gets the reason, as from `ccd`.
    """
    try:
        yield
    except CcdError as exc:
        message = str(exc).replace("\r", "\\r").replace("\n", "\\n")
        print(f"{flow_name}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
