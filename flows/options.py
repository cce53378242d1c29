"""Command-line options shared by the flows' `python -m flows.<name>` entry points."""

from __future__ import annotations

import argparse
from typing import Any

from ccd.config import RunConfig


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """`--home`, `--config FILE` and repeatable `--set section.key=value`, as in the `ccd` CLI."""
    parser.add_argument("--home", default=None, help="state folder (default: $CCD_HOME, else ./.ccd)")
    parser.add_argument("--config", default=None, help="config file (JSON or TOML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")


def config_parameter(args: argparse.Namespace) -> dict[str, Any]:
    """The flows' `config` parameter: only the settings that differ from the defaults.

    Loading through `RunConfig` first rejects unknown keys and wrong types before any run starts.
    """
    return RunConfig.load(args.config, args.overrides).changes()
