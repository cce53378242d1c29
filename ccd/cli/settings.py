"""`ccd settings`: every setting with its value, default, allowed values and the note beside it.

    ccd settings                                   # all settings, as any command would read them
    ccd settings continual --changed               # one section, only what differs from the defaults
    ccd settings continual.kd_init                 # one setting, with the note in ccd/config.py
    ccd settings --run-key default --home .ccd     # what `ccd stream` resumes the default run with

The notes are the comments above each field in `ccd/config.py`, the one typed place settings
live, so this listing never drifts from the code. With `--run-key` the values are the run's
pinned settings (`runs/<key>/config.json`, or the default run's for a new key) with `--config`
and `--set` on top, as `ccd stream` and the flows read them, and the changes `ccd stream` would
refuse under a pinned key are named; without it, the defaults with `--config` and `--set` on
top, as every other command reads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import typing
from typing import Any

from ccd.cli.common import add_command, config_of, emit, home_of, table
from ccd.config import RunConfig
from ccd.continual.pinned_config import PINNED_SECTIONS, differing, pinned_settings, read_pin, run_settings
from ccd.errors import BadInputError
from ccd.home import Home

COLUMNS = ["setting", "value", "default", "allowed"]


def register(commands: argparse._SubParsersAction) -> None:
    parser = add_command(commands, "settings", run, "list the settings: value, default, allowed values and notes")
    parser.add_argument("name", nargs="?", default=None, help="a section (e.g. continual) or one setting (continual.kd_init)")
    parser.add_argument("--run-key", default=None, help="the settings this run key's stream runs with (its pin in the home)")
    parser.add_argument("--changed", action="store_true", help="only settings whose value differs from the default")


def run(args: argparse.Namespace) -> int:
    if args.run_key is None:
        if args.home is not None:
            raise BadInputError("--home is read only with --run-key (the settings a run of that home resumes with)")
        config = config_of(args)
    else:
        config = run_settings(home_of(args), args.run_key, RunConfig.named(args.config, args.overrides))
    named = [row for row in setting_rows(config) if _named(row, args.name)]
    if not named:
        raise BadInputError(f"no setting or section {args.name!r} (sections: {', '.join(_sections())})")
    rows = [row for row in named if not args.changed or row["value"] != row["default"]]
    payload: dict[str, Any] = {"settings": rows, "run_key": args.run_key}
    if args.run_key is not None:
        payload.update(_against_pin(home_of(args), args.run_key, config))
    one = args.name is not None and "." in args.name
    emit(args, payload, lambda: _human(rows, one, payload.get("refused", [])))
    return 0


def _against_pin(home: Home, run_key: str, config: RunConfig) -> dict[str, Any]:
    """Whether `run_key` is pinned, and the settings of `config` that `ccd stream` would refuse
    under it (a pinned key keeps its settings; a change needs a new key)."""
    pinned = read_pin(home, run_key)
    if pinned is None:
        return {"pinned": False, "refused": []}
    changed = differing(pinned_settings(config), pinned, PINNED_SECTIONS)
    return {"pinned": True, "refused": changed.split(", ") if changed else []}


def setting_rows(config: RunConfig) -> list[dict[str, Any]]:
    """One row per setting: `setting` (section.key), `value`, `default`, `allowed`, `note`."""
    rows = []
    defaults = RunConfig()
    for section in _sections():
        current, default = getattr(config, section), getattr(defaults, section)
        kind = type(default)
        notes, hints = field_notes(kind), typing.get_type_hints(kind)
        for f in dataclasses.fields(kind):
            rows.append({
                "setting": f"{section}.{f.name}",
                "value": _plain(getattr(current, f.name)),
                "default": _plain(getattr(default, f.name)),
                "allowed": _allowed(hints[f.name]),
                "note": notes.get(f.name, ""),
            })
    return rows


def field_notes(kind: type) -> dict[str, str]:
    """The comment above each field of a config dataclass, as one line of text.

    A comment above a group of fields describes them all ("Adam lr 1e-3 and batches of 2048"
    above `update_epochs`, `update_lr`, `update_batch_size`), so a field with no comment of its
    own, right below another field, shares that field's note.
    """
    notes: dict[str, str] = {}
    comment: list[str] = []
    group = ""
    for line in inspect.getsource(kind).splitlines()[1:]:
        text = line.strip()
        name = text.split(":")[0]
        if text.startswith("#"):
            comment.append(text.lstrip("#").strip())
        elif name.isidentifier() and not text.startswith(("def ", "class ")):
            group = " ".join(comment) if comment else group
            notes[name], comment = group, []
        else:  # a blank line, the docstring: whatever follows starts anew
            comment, group = [], ""
    return notes


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def _allowed(hint: Any) -> str:
    """The values a setting takes: a Literal's choices, a list's element type, else its type's name."""
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(str(choice) for choice in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:  # written as a list in a config file
        return f"list of {typing.get_args(hint)[0].__name__}"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _plain(value: Any) -> Any:
    """JSON-ready: tuples become lists, as in a config file."""
    return json.loads(json.dumps(value))


def _named(row: dict[str, Any], name: str | None) -> bool:
    return name is None or row["setting"] == name or row["setting"].startswith(f"{name}.")


def _human(rows: list[dict[str, Any]], one: bool, refused: list[str]) -> str:
    if one and rows:  # one setting: its note in full
        text = "\n".join(f"{key}: {_text(rows[0][key])}" for key in ("setting", "value", "default", "allowed", "note"))
    else:
        text = table([{**row, "value": _text(row["value"]), "default": _text(row["default"])} for row in rows], COLUMNS)
    if refused:
        text += f"\n\nccd stream would refuse these under the run key's pin (retrain under a new --run-key): {', '.join(refused)}"
    return text


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)

