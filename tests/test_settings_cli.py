"""`ccd settings`: every setting with its value, default, allowed values and note."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ccd.cli import main
from ccd.config import RunConfig
from ccd.continual.pinned_config import pin_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _json(capsys, *argv: str) -> dict:
    assert main(["settings", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_setting_is_listed_with_its_default_and_a_note(capsys):
    rows = _json(capsys)["settings"]
    defaults = RunConfig()
    names = [f"{section.name}.{f.name}" for section in dataclasses.fields(RunConfig)
             for f in dataclasses.fields(getattr(defaults, section.name))]
    assert [row["setting"] for row in rows] == names
    assert all(row["value"] == row["default"] and row["note"] for row in rows)
    by_name = {row["setting"]: row for row in rows}
    assert by_name["continual.kd_init"]["allowed"] == "previous | fresh | updated"
    assert by_name["teacher.members"]["default"] == ["lightgcn:64x3", "bpr:64x2", "vae:64x1"]
    # Each field's own comment; a field under another field's comment shares it (the comment
    # describes the group); a blank line or the docstring ends a group.
    assert by_name["lake.duplicate_policy"]["note"] == (
        "Duplicate (user, item) pairs inside a block: drop them and report, or reject the block.")
    assert by_name["serving.port"]["note"] == "TCP port of the API."
    assert by_name["serving.host"]["note"].startswith("Loopback: the API has no authentication")
    assert by_name["continual.update_lr"]["note"] == by_name["continual.update_epochs"]["note"]
    assert "Adam lr 1e-3" in by_name["continual.update_lr"]["note"]
    assert by_name["continual.kd_lambda_ir"]["note"].startswith("Stage 4 KD (spec 2.2): batches of 1024")
    assert by_name["distill.tau_period"]["note"].startswith("DE (spec 2): M experts; Gumbel temperature")
    assert by_name["lake.split_seed"]["note"] == "Seed of the per-user random train/valid/test split."
    assert by_name["teacher.members"]["allowed"] == "list of str"


def test_changes_and_a_section_filter(capsys, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[train]\nlr = 0.01\n")
    rows = _json(capsys, "--config", str(config), "--set", "continual.kd_init=fresh", "--changed")["settings"]
    assert [(r["setting"], r["value"]) for r in rows] == [("train.lr", 0.01), ("continual.kd_init", "fresh")]
    section = _json(capsys, "serving")["settings"]
    assert {r["setting"] for r in section} == {f"serving.{f.name}" for f in dataclasses.fields(RunConfig().serving)}
    assert main(["settings", "--set", "train.lr=0.01", "--changed"]) == 0  # one row, but not one setting asked for
    assert capsys.readouterr().out.splitlines()[0].split() == ["setting", "value", "default", "allowed"]


def test_one_setting_prints_its_note_in_full(capsys):
    assert main(["settings", "continual.kd_init"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:4] == ["setting: continual.kd_init", "value: updated", "default: updated",
                                   "allowed: previous | fresh | updated"]
    assert out.splitlines()[4].startswith("note: Where the student distilled at block k >= 1 starts.")


def test_a_run_keys_settings_are_its_pin_with_the_changes_on_top(capsys, home):
    pin_config(home, "retrain-a", RunConfig.load(None, ["continual.update_epochs=10", "distill.student_dim=8"]))
    got = _json(capsys, "--home", str(home.root), "--run-key", "retrain-a", "--set", "train.lr=0.01", "--changed")
    assert [(r["setting"], r["value"]) for r in got["settings"]] == [
        ("train.lr", 0.01), ("distill.student_dim", 8), ("continual.update_epochs", 10)]
    assert got["pinned"] is True and got["run_key"] == "retrain-a"
    assert got["refused"] == ["train.lr"]  # a pinned key keeps its settings: `ccd stream` refuses the change
    assert main(["settings", "--home", str(home.root), "--run-key", "retrain-a", "--set", "train.lr=0.01"]) == 0
    assert "ccd stream would refuse these under the run key's pin" in capsys.readouterr().out
    # A new key starts from the default run's settings; with no default run, the defaults.
    assert _json(capsys, "--home", str(home.root), "--run-key", "new", "--changed") == {
        "settings": [], "run_key": "new", "pinned": False, "refused": []}


def test_unknown_names_are_one_line_errors(capsys):
    assert main(["settings", "continual.nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no setting or section 'continual.nope'" in err
    assert main(["settings", "nosuch", "--changed"]) == 2  # a misspelt name is not "nothing changed"
    assert "no setting or section 'nosuch'" in capsys.readouterr().err
    assert main(["settings", "--set", "continual.nope=1"]) == 2
    assert "unknown config key(s) continual.nope" in capsys.readouterr().err
    assert main(["settings", "--home", "somewhere"]) == 2  # it would be ignored: refused
    assert "--home is read only with --run-key" in capsys.readouterr().err


def test_the_shipped_configs_change_only_what_their_comments_say(capsys):
    """`configs/anchored-members.toml` is the measured dim-8 setting: three changes, no more."""
    rows = _json(capsys, "--config", str(CONFIGS / "anchored-members.toml"), "--changed")["settings"]
    assert {row["setting"]: row["value"] for row in rows} == {
        "continual.teacher_update": "anchored", "continual.teacher_replay_weight": 0.0, "continual.lwckd_weight": 0.0}
    sample = _json(capsys, "--config", str(CONFIGS / "sample.toml"), "--changed")["settings"]
    assert {row["setting"].split(".")[0] for row in sample} == {"train", "teacher", "distill", "continual"}
