"""One config per run key: a stream run refuses settings other than those it started with.

Stages that are done are skipped on a re-run, so a run resumed with other settings would mix
models trained under both (say, block 0 teachers of one ensemble and block 3 teachers of
another) and report numbers that belong to neither. The first run under a key therefore pins the
settings that shape its models to `runs/<run key>/config.json`; a later run under that key must
pass the same ones, or pick a new `--run-key` (which may start from any finished block).

Only the sections that change what is trained are pinned (train, teacher, distill, continual).
The device is not pinned: the same run may resume on a GPU after starting on a CPU.

What a user gives (`--config`, `--set`, a flow's `config` parameter) is read as changes to the
run's settings (`run_settings`): a scheduled stream run with no config continues with the
settings the stream started with, and a retrain under a new key starts from the default run's
settings with only the changes it names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ccd import atomic
from ccd.config import BEFORE_ADDED, RunConfig
from ccd.errors import BadInputError
from ccd.home import Home, safe_name
from ccd.stages import DEFAULT_RUN_KEY

PINNED_SECTIONS = ("train", "teacher", "distill", "continual")
SHARED_TEACHER_SECTIONS = ("train", "teacher")
UNPINNED_KEYS = {("train", "device")}


def pinned_settings(config: RunConfig) -> dict[str, Any]:
    """The part of `config` that a run key is held to, as plain JSON values."""
    full = json.loads(json.dumps(config.to_dict()))  # tuples become lists, as on disk
    return {
        section: {key: value for key, value in full[section].items() if (section, key) not in UNPINNED_KEYS}
        for section in PINNED_SECTIONS
    }


def with_added_settings(pinned: dict[str, Any]) -> dict[str, Any]:
    """A pin with the settings added since it was written: at `BEFORE_ADDED`, else the default."""
    defaults = pinned_settings(RunConfig())
    out = {section: {**defaults[section], **pinned.get(section, {})} for section in PINNED_SECTIONS}
    for (section, key), value in BEFORE_ADDED.items():
        if key not in pinned.get(section, {}):
            out[section][key] = value
    return {**pinned, **out}


def pin_path(home: Home, run_key: str) -> Path:
    return home.root / "runs" / safe_name(run_key, "run key") / "config.json"


def run_settings(home: Home, run_key: str, changes: dict[str, Any]) -> RunConfig:
    """The settings of `run_key`'s run with `changes` (sections of values) applied on top.

    The base is what `run_key` was pinned with, else (a new key) what the default run was pinned
    with, else the defaults.
    """
    base = next(filter(None, (read_pin(home, key) for key in (run_key, DEFAULT_RUN_KEY))), {})
    merged = {section: {**base.get(section, {}), **changes.get(section, {})} for section in {*base, *changes}}
    return RunConfig.from_dict(merged)


def pin_config(home: Home, run_key: str, config: RunConfig) -> None:
    """Record `config` for `run_key` on first use; afterwards refuse a config that differs."""
    path = pin_path(home, run_key)
    wanted = pinned_settings(config)
    if not path.exists():
        # Never overwritten: a concurrent first run's pin is compared against ours below.
        atomic.write_once(path, (json.dumps(wanted, indent=2, sort_keys=True) + "\n").encode())
    changed = differing(wanted, read_pin(home, run_key), PINNED_SECTIONS)
    if changed:
        raise BadInputError(
            f"run key {run_key!r} was started with other settings (differing: {changed}; see {path}): "
            f"pass the same config, or a new --run-key to train under the new settings"
        )


def check_shared_teacher(home: Home, run_key: str, config: RunConfig, trained_by: list[str]) -> None:
    """Refuse to train block 0's teacher under settings other than those it was trained with.

    Block 0's members and ensemble lists live once per home (`models/block=0/teacher*`), shared
    by every run key, so a key that retrained them under other settings would overwrite what the
    runs in `trained_by` (keys with finished block-0 teacher stages) recorded and evaluated.
    Only the sections that shape them count: `train` (the device aside) and `teacher`. The first
    key to reach them also claims them (`runs/block=0-teacher.json`, created once), so two keys
    starting at once under other settings cannot each train some of the members.
    """
    wanted = pinned_settings(config)
    for other in (key for key in trained_by if key != run_key):
        theirs = read_pin(home, other)
        if theirs is not None:
            _refuse_other_teacher(run_key, other, differing(wanted, theirs, SHARED_TEACHER_SECTIONS), "was trained")
    claim = {"run_key": run_key, **{section: wanted[section] for section in SHARED_TEACHER_SECTIONS}}
    path = shared_teacher_claim_path(home)
    atomic.write_once(path, (json.dumps(claim, indent=2, sort_keys=True) + "\n").encode())
    claimed = json.loads(path.read_text(encoding="utf-8"))
    if claimed["run_key"] != run_key:
        _refuse_other_teacher(run_key, claimed["run_key"], differing(wanted, claimed, SHARED_TEACHER_SECTIONS),
                              f"was started (claim: {path})")


def shared_teacher_claim_path(home: Home) -> Path:
    """The settings block 0's shared teacher is trained with ('=' keeps it apart from any run key)."""
    return home.root / "runs" / "block=0-teacher.json"


def _refuse_other_teacher(run_key: str, other: str, changed: str, how: str) -> None:
    if changed:
        raise BadInputError(
            f"block 0's teacher in this home {how} by run key {other!r} with other settings "
            f"(differing: {changed}), and every run key shares it: start run key {run_key!r} at block 1 "
            f"(--from-block 1) to build on it, or use another home for another block-0 teacher"
        )


def read_pin(home: Home, run_key: str) -> dict[str, Any] | None:
    """The settings `run_key` was pinned with, the ones added since at `with_added_settings`
    (so an upgrade does not strand the runs under way); None for a key never pinned."""
    path = pin_path(home, run_key)
    return with_added_settings(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else None


def differing(wanted: dict[str, Any], pinned: dict[str, Any], sections: tuple[str, ...]) -> str:
    """The `section.key` names whose values differ, the first five, for an error message ("" if none)."""
    changed = [f"{section}.{key}" for section in sections
               for key in sorted(set(wanted[section]) | set(pinned[section]))
               if wanted[section].get(key) != pinned[section].get(key)]
    return ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
