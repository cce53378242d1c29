"""The `ccd` command line.

Each area of the library owns one module here with a `register(subparsers)` function that adds
its commands; `main` wires them together and turns `CcdError` into one line on stderr and a
non-zero exit. Commands that report take `--json` and then print exactly one JSON object.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

import duckdb

from ccd.cli import distill, lake, models, sample, registry, report, serve, settings, stages, stream
from ccd.errors import CcdError

COMMAND_MODULES = [lake, sample, registry, models, distill, stages, serve, report, stream, settings]
# What a missing, unreadable or corrupt file under the home raises; other errors are bugs and
# keep their traceback.
HOME_FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError,
                    duckdb.IOException, duckdb.SerializationException)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a refused command line gives one line on stderr, as the CLI's other errors
    do, pointing to `--help` instead of printing the usage block. Subcommands inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ccd", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`parse_args`, but an unknown option is refused by the (sub)command it was given to, so
    the line points to that command's `--help`, as every other refused command line does."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # The innermost (sub)command named before the first unknown option refuses it:
        # `ccd --bogus stages` is ccd's, `ccd registry --bogus list` is `ccd registry`'s.
        where = argv.index(unknown[0]) if unknown[0] in argv else len(argv)
        refusing, words = parser, [args.command, getattr(args, "action", None)]
        for word in words:
            if word not in _choices(refusing) or argv.index(word) > where:
                break
            refusing = _choices(refusing)[word]
        # Only the unknown words given to it, before the next (sub)command word.
        later = [argv.index(w) for w in words if w in argv and argv.index(w) > where]
        own = [w for w in unknown if w not in argv or not later or argv.index(w) < min(later)]
        refusing.error(f"unrecognized arguments: {' '.join(own)}")
    return args


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's subcommands by name (none when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args) or 0)
    except CcdError as exc:
        # One line even when the message quotes a user's value holding a line break.
        return _one_line(args.command, str(exc).replace("\r", "\\r").replace("\n", "\\n"), 2)
    except BrokenPipeError:  # `ccd stages | head` stopped reading: nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except HOME_FILE_ERRORS as exc:  # the home's files: missing, unreadable, corrupt
        logging.getLogger(__name__).info("the error in full", exc_info=True)  # shown with -v
        return _one_line(args.command, f"{type(exc).__name__}: {exc}", 1)
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise  # a bug: keep its traceback
        return _one_line(args.command, f"out of memory: these settings need more memory than there is ({exc})", 1)
    except KeyboardInterrupt:
        print(f"ccd {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(command: str, message: str, code: int) -> int:
    """Print the first line of the error (a library's message may run on); return `code`."""
    first = next((line.strip() for line in message.splitlines() if line.strip()), "")
    print(f"ccd {command}: error: {first}", file=sys.stderr)
    return code


def _out_of_memory(exc: BaseException) -> bool:
    """Whether a failure is an allocation that did not fit (torch's CPU or CUDA allocator)."""
    return isinstance(exc, MemoryError) or "allocate memory" in str(exc) or "out of memory" in str(exc).lower()
