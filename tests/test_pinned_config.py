"""A run key keeps the settings it started with (ccd.continual.pinned_config)."""

import dataclasses
from concurrent.futures import ThreadPoolExecutor
import json
import re
import os
import time

import pytest

from ccd import atomic
from ccd.config import BEFORE_ADDED, RunConfig
from ccd.continual.loop import Run
from ccd.continual.pinned_config import pin_path, run_settings
from ccd.errors import BadInputError
from ccd.home import Home


def with_train(config: RunConfig, **changes) -> RunConfig:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


def test_first_run_pins_the_settings_that_shape_models(tmp_path):
    home = Home.resolve(tmp_path)
    Run(home, "ccd", RunConfig(), progress=False)
    pinned = json.loads(pin_path(home, "default").read_text())
    assert set(pinned) == {"train", "teacher", "distill", "continual"}
    assert pinned["teacher"]["members"] == list(RunConfig().teacher.members)
    assert "device" not in pinned["train"]


def test_same_settings_resume_under_any_method_and_device(tmp_path):
    home = Home.resolve(tmp_path)
    Run(home, "ccd", RunConfig(), progress=False)
    pinned = pin_path(home, "default").read_bytes()
    finetune = Run(home, "finetune", RunConfig(), progress=False)
    on_cpu = Run(home, "ccd", with_train(RunConfig(), device="cpu"), progress=False)
    assert pin_path(home, "default").read_bytes() == pinned
    assert finetune.config == RunConfig() and on_cpu.config.train.device == "cpu"


def test_other_settings_under_the_same_key_are_refused_with_the_keys_named(tmp_path):
    home = Home.resolve(tmp_path)
    Run(home, "ccd", RunConfig(), progress=False)
    changed = RunConfig.load(None, ["train.max_epochs=7", "teacher.members=[\"bpr:8x1\"]"])
    with pytest.raises(BadInputError, match=r"train\.max_epochs.*teacher\.members|teacher\.members.*train\.max_epochs"):
        Run(home, "ccd", changed, progress=False)
    assert json.loads(pin_path(home, "default").read_text())["train"]["max_epochs"] == RunConfig().train.max_epochs


def test_a_setting_added_after_the_pin_counts_at_its_default(tmp_path):
    home = Home.resolve(tmp_path)
    Run(home, "ccd", RunConfig(), progress=False)
    pinned = json.loads(pin_path(home, "default").read_text())
    del pinned["continual"]["teacher_replay_form"]  # as pinned by a version without the setting
    pin_path(home, "default").write_text(json.dumps(pinned))
    Run(home, "ccd", RunConfig(), progress=False)
    with pytest.raises(BadInputError, match=r"continual\.teacher_replay_form"):
        Run(home, "ccd", RunConfig.load(None, ["continual.teacher_replay_form=bpr"]), progress=False)


@pytest.mark.parametrize("section, key, before", [(section, key, before) for (section, key), before in BEFORE_ADDED.items()])
def test_a_run_pinned_before_a_setting_was_added_resumes_as_it_ran(tmp_path, section, key, before):
    """Every setting of `BEFORE_ADDED` came with a default other than what the code did before
    it; a run pinned before it resumes as it ran."""
    default = getattr(getattr(RunConfig(), section), key)
    assert default != before
    home = Home.resolve(tmp_path)
    as_set = lambda value: f"{section}.{key}={json.dumps(value) if isinstance(value, bool) else value}"
    Run(home, "ccd", RunConfig.load(None, [as_set(before)]), progress=False)
    pinned = json.loads(pin_path(home, "default").read_text())
    del pinned[section][key]  # as pinned by a version without the setting
    pin_path(home, "default").write_text(json.dumps(pinned))
    resumed = run_settings(home, "default", {})
    assert getattr(getattr(resumed, section), key) == before
    Run(home, "ccd", resumed, progress=False)
    with pytest.raises(BadInputError, match=rf"{section}\.{key}"):
        Run(home, "ccd", RunConfig(), progress=False)
    asked = RunConfig.named(None, [as_set(default)])  # the default, named: still applied
    assert getattr(getattr(run_settings(home, "r1", asked), section), key) == default


def test_a_new_run_key_takes_new_settings(tmp_path):
    home = Home.resolve(tmp_path)
    Run(home, "ccd", RunConfig(), progress=False)
    Run(home, "ccd", with_train(RunConfig(), max_epochs=7), run_key="short", progress=False)
    assert json.loads(pin_path(home, "short").read_text())["train"]["max_epochs"] == 7


def test_given_settings_are_changes_to_the_run_s_own(tmp_path):
    home = Home.resolve(tmp_path)
    assert run_settings(home, "default", {}) == RunConfig()  # nothing pinned yet: the defaults
    short = with_train(RunConfig(), max_epochs=7)
    Run(home, "ccd", short, progress=False)
    assert run_settings(home, "default", {}) == short  # a scheduled run with no config continues
    retrain = run_settings(home, "retrain-1", {"train": {"lr": 0.01}})  # a new key starts from the default run
    assert (retrain.train.max_epochs, retrain.train.lr) == (7, 0.01)
    assert run_settings(home, "default", {"lake": {"duplicate_policy": "reject"}}).lake.duplicate_policy == "reject"


def test_named_settings_are_what_the_user_wrote_even_at_their_default():
    assert RunConfig.named(None, []) == {}
    default = RunConfig().continual.select_on
    assert RunConfig.named(None, [f"continual.select_on={default}"]) == {"continual": {"select_on": default}}
    with pytest.raises(BadInputError, match="unknown config key"):
        RunConfig.named(None, ["train.no_such_key=1"])


def test_a_setting_named_at_its_default_is_not_dropped_on_resume(tmp_path):
    """Naming the default against a run pinned otherwise is a change: refused, not ignored."""
    home = Home.resolve(tmp_path)
    Run(home, "ccd", with_train(RunConfig(), max_epochs=7), progress=False)
    asked = run_settings(home, "default", RunConfig.named(None, [f"train.max_epochs={RunConfig().train.max_epochs}"]))
    with pytest.raises(BadInputError, match=r"train\.max_epochs"):
        Run(home, "ccd", asked, progress=False)


def test_runs_starting_at_once_pin_once_and_all_go_on(tmp_path, monkeypatch):
    """The teacher members of one flow run start their stages from threads of one process."""
    home = Home.resolve(tmp_path)
    link = os.link

    def slow_link(source, target):  # widen the window between writing the scratch file and linking it
        time.sleep(0.02)
        link(source, target)

    monkeypatch.setattr(atomic.os, "link", slow_link)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: Run(home, "ccd", RunConfig(), progress=False), range(32)))
    assert [p.name for p in pin_path(home, "default").parent.iterdir()] == ["config.json"]


@pytest.mark.parametrize("item, message", [
    ("train.lr=-1", "train.lr must be above 0, got -1.0"),
    ("train.eval_batch_users=0", "train.eval_batch_users must be above 0, got 0"),
    ("train.weight_decay=-5", "train.weight_decay must not be negative, got -5.0"),
    ("distill.n_interesting=0", "distill.n_interesting must be above 0, got 0"),
    ("teacher.top_k=0", "teacher.top_k must be above 0, got 0"),
    ("registry.tolerance=-1", "registry.tolerance must not be negative, got -1.0"),
    ("continual.stability_weight=1.5", "continual.stability_weight must be between 0 and 1, got 1.5"),
    ("sample.n_users=-5", "sample.n_users must be above 0, got -5"),
    ("train.patience=0", "train.patience must be above 0, got 0"),
    ("train.lr=Infinity", "train.lr must be a finite number, got inf"),
    ("train.weight_decay=NaN", "train.weight_decay must be a finite number, got nan"),
    ("lake.row_count_warn_ratio=0.5", "lake.row_count_warn_ratio must be at least 1, got 0.5"),
    ("lake.min_user_interactions_for_split=2", "lake.min_user_interactions_for_split must be at least 3, got 2"),
    ("sample.n_blocks=1", "sample.n_blocks must be at least 2, got 1"),
    ("sample.returning_share=0", "sample.returning_share must be above 0, got 0.0"),
])
def test_numeric_settings_out_of_range_are_one_clear_error(item, message):
    """A value of the right type but out of range is refused before anything runs, not met as
    a traceback deep in training (an optimiser's "Invalid learning rate")."""
    with pytest.raises(BadInputError, match=re.escape(message)):
        RunConfig.load(None, [item])


def test_every_default_is_in_range_and_the_one_signed_setting_may_be_negative():
    RunConfig.from_dict(RunConfig().to_dict())  # every default passes its own check
    assert RunConfig.load(None, ["continual.graph_min_similarity=-0.2"]).continual.graph_min_similarity == -0.2


def test_a_config_file_must_be_toml_or_json(tmp_path):
    (tmp_path / "run.yaml").write_text("train:\n  lr: 0.1\n")
    with pytest.raises(BadInputError, match=r"must be a \.toml or \.json file"):
        RunConfig.load(tmp_path / "run.yaml")
    (tmp_path / "bad.toml").write_text("[train\n")
    with pytest.raises(BadInputError, match="is not valid TOML"):
        RunConfig.load(tmp_path / "bad.toml")
