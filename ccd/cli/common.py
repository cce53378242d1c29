"""Shared pieces of the CLI: the common options and the two output modes (table or JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ccd.config import RunConfig
from ccd.home import Home


def add_command(
    commands: argparse._SubParsersAction,
    name: str,
    handler: Callable[[argparse.Namespace], int | None],
    help: str,
    reports: bool = True,
    settings: bool = True,
    home: bool = True,
) -> argparse.ArgumentParser:
    """Add a subcommand with the options every command shares (`--home`, `--json`, `--config`).

    A command offers `--config`/`--set` only when it reads settings and `--home` only when it
    touches the home, so an option that would be ignored is refused by argparse instead."""
    parser = commands.add_parser(name, help=help, description=help)
    if home:
        parser.add_argument("--home", default=None, help="state folder (default: $CCD_HOME, else ./.ccd)")
    if settings:
        parser.add_argument("--config", default=None, help="config file (JSON or TOML)")
        parser.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
            help="override one config value (repeatable)",
        )
    if reports:
        parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.set_defaults(handler=handler)
    return parser


def home_of(args: argparse.Namespace) -> Home:
    return Home.resolve(args.home)


def config_of(args: argparse.Namespace) -> RunConfig:
    return RunConfig.load(args.config, args.overrides)


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars (on stderr) for long work: always in table mode, and with `--json` when
    stderr is a terminal, since stdout then still holds nothing but the one JSON object."""
    return not getattr(args, "json", False) or sys.stderr.isatty()


def emit(args: argparse.Namespace, payload: dict[str, Any], human: Callable[[], str]) -> None:
    """Print `payload` as JSON with `--json`, else the human-readable text `human()`."""
    if getattr(args, "json", False):
        json.dump(payload, sys.stdout, default=str)
        sys.stdout.write("\n")
    else:
        print(human())


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Render rows as a plain aligned text table."""
    if not rows:
        return "(none)"
    columns = list(columns or rows[0].keys())
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(values, widths)).rstrip()
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(".", "", 1).replace("-", "", 1).isdigit()
