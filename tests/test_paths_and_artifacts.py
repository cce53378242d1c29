"""User-given names, numbers and paths never escape the home folder; artifacts load safely.

- Names (models, methods, run keys, locks) pass `safe_name`; block numbers pass `block_number`;
  registry artifacts must lie inside the home folder, symlinks resolved.
- No pickle on any load path: a scan of `ccd/` and `flows/` for the calls that unpickle.
- Artifacts carry checksums checked on load: one flipped byte of a registered model fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ccd import registry
from ccd.cli import main
from ccd.config import LakeConfig
from ccd.continual.state import Layout
from ccd.errors import BadInputError
from ccd.lake.ingest import ingest_block
from ccd.locking import file_lock
from ccd.models import BPRConfig, build_model, io
from ccd.registry import ArtifactIntegrityError
from tests.conftest import REPO, make_block

BAD_NAMES = ["../../etc", "/etc/passwd", "a/b", "a\\b", "a\x00b", "x" * 200, ".", "..", "", "line\nbreak", "~root", "-rf"]
BAD_BLOCKS = ["../../etc", "1", -1, True, 1.5, None]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_names_from_users_never_become_paths(home, tmp_path, name):
    outside = _files(tmp_path)
    attempts = [
        lambda: home.model_dir(0, name),
        lambda: Layout(home, name),
        lambda: Layout(home, "ccd", run_key=name),
        lambda: registry.register(home, name, home.root, 0, "ccd", {}, 1),
        lambda: registry.register(home, "student", home.root, 0, name, {}, 1),
        lambda: file_lock(home, name).__enter__(),
    ]
    for attempt in attempts:
        with pytest.raises(BadInputError, match="invalid"):
            attempt()
    assert _files(tmp_path) - outside <= _files(home.root)


@pytest.mark.parametrize("block", BAD_BLOCKS, ids=repr)
def test_block_numbers_must_be_whole_numbers(home, tmp_path, block):
    path = tmp_path / "b.csv"
    make_block().to_csv(path, index=False)
    before = _files(tmp_path)
    for attempt in (lambda: home.block_dir(block), lambda: home.model_dir(block, "student"),
                    lambda: ingest_block(home, path, block, LakeConfig())):
        with pytest.raises(BadInputError, match="block number must be an integer >= 0"):
            attempt()
    assert _files(tmp_path) == before


@pytest.mark.parametrize("argv, message", [
    (["ingest", "FILE", "--block", "0"], "no such file"),
    (["ingest", "x" * 300 + ".csv", "--block", "0"], "cannot open"),
    (["ingest", "we\nird.csv", "--block", "0"], "no such file"),
    (["registry", "show", "../../etc"], "has no alias"),
    (["blocks", "--home", "bad\x00home"], "cannot be used"),
    (["blocks", "--home", "h" * 300], "cannot be used"),
])
def test_cli_refuses_odd_paths_in_one_line(home, tmp_path, capsys, argv, message):
    argv = [str(tmp_path / "missing.csv") if a == "FILE" else a for a in argv]
    if "--home" not in argv:
        argv += ["--home", str(home.root)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_registry_artifacts_must_resolve_inside_home(home, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "weights.bin").write_bytes(b"x")
    (home.root / "models").mkdir()
    (home.root / "models" / "link").symlink_to(outside)
    for artifact in (outside, home.root / "models" / "link", "models/../../outside", Path("/etc")):
        with pytest.raises(BadInputError, match="outside the home folder"):
            registry.register(home, "student", artifact, 0, "ccd", {"recall@20": 0.1}, 1)
    assert registry.list_versions(home) == []


# --- no pickle ------------------------------------------------------------------------------

UNSAFE = {
    "pickle": re.compile(r"\b(import|from)\s+(c?pickle|dill|cloudpickle|shelve|marshal)\b|\b(c?pickle|dill|cloudpickle|shelve|marshal)\.\w+\("),
    "joblib": re.compile(r"\bjoblib\b"),
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"),
    "np.load with allow_pickle": re.compile(r"\b(np|numpy)\.load\([^)]*allow_pickle\s*=\s*True"),
    "pandas read_pickle": re.compile(r"read_pickle\("),
}


def test_no_pickle_on_any_load_path():
    sources = sorted((REPO / "ccd").rglob("*.py")) + sorted((REPO / "flows").rglob("*.py"))
    assert len(sources) > 20
    found = [f"{path.relative_to(REPO)}:{n}: {what}" for path in sources
             for n, line in enumerate(path.read_text().splitlines(), 1)
             for what, pattern in UNSAFE.items() if pattern.search(line)]
    assert found == []


def test_the_scan_finds_what_it_looks_for():
    lines = ["import pickle", "from dill import loads", "pickle.loads(blob)", "torch.load(path)", "np.load(f, allow_pickle=True)", "from joblib import load",
             "pd.read_pickle(p)"]
    assert all(any(p.search(line) for p in UNSAFE.values()) for line in lines)
    safe = ["torch.load(path, weights_only=True)", "Save and load models without pickle.", "nothing is unpickled"]
    assert not any(p.search(line) for p in UNSAFE.values() for line in safe)


# --- checksums ------------------------------------------------------------------------------

@pytest.mark.parametrize("file", [io.WEIGHTS, io.META])
def test_one_flipped_byte_in_a_registered_model_fails_its_load(home, file):
    folder = io.save(build_model(BPRConfig(dim=4, seed=0), 12, 15), home.model_dir(0, "student"))
    version = registry.register(home, "student", folder, 0, "ccd", {"recall@20": 0.1}, 108)
    registry.promote(home, "student", version.version, "test")
    assert torch.equal(io.load(registry.load_artifact_path(home, "student")).user_emb,
                       io.load(folder).user_emb)
    kept = version.path(home)  # the registry's copy: what serving loads
    target = kept / file
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="does not match its registered sha256"):
        registry.load_artifact_path(home, "student")
    if file == io.WEIGHTS:
        with pytest.raises(io.ModelFileError, match="SHA-256"):
            io.load(kept)


@pytest.mark.parametrize("argv", [
    ["blocks", "--home", "HOME", "--set", "train.lr=0.1"],  # lists the lake: reads no settings
    ["stages", "--home", "HOME", "--config", "settings.toml"],
    ["make-blocks", "log.csv", "--out", "OUT", "--home", "HOME"],  # writes only its --out folder
    ["make-sample", "--out", "OUT", "--home", "HOME"],
])
def test_options_a_command_would_ignore_are_refused(tmp_path, capsys, argv):
    argv = [{"HOME": str(tmp_path / "home"), "OUT": str(tmp_path / "out")}.get(a, a) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unrecognized arguments" in err
    assert len(err.splitlines()) == 1 and err.endswith(f"(see ccd {argv[0]} --help)\n")  # one line, no usage block
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_an_unknown_option_of_a_registry_action_points_to_that_actions_help(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["registry", "list", "--home", str(tmp_path / "home"), "--bogus"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "ccd registry list: error: unrecognized arguments: --bogus (see ccd registry list --help)\n"


@pytest.mark.parametrize("argv, blamed", [
    (["--bogus", "stages"], "ccd"),
    (["registry", "--bogus", "list"], "ccd registry"),
    (["--bogus", "stages", "--also-bogus"], "ccd"),  # the command's own unknown option is not ccd's
    (["registry", "--bogus", "list", "--also-bogus"], "ccd registry"),
])
def test_an_unknown_option_before_a_subcommand_is_blamed_on_the_command_it_follows(capsys, argv, blamed):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"{blamed}: error: unrecognized arguments: --bogus (see {blamed} --help)\n"


def test_a_plotting_command_writes_nothing_outside_the_home(tmp_path):
    """matplotlib builds a font cache on first use, by default under the user's ~/.cache."""
    user = tmp_path / "user"
    user.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MPLCONFIGDIR" and not k.startswith("XDG_")}
    env["HOME"] = str(user)
    home = tmp_path / "home"
    subprocess.run([sys.executable, "-m", "ccd", "report", "--home", str(home), "--no-latency", "--json"],
                   cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    assert not any(user.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "user"]
    assert (home / "cache" / "matplotlib").is_dir()


def test_an_empty_home_is_refused_rather_than_taken_as_the_working_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["blocks", "--home", "", "--json"]) == 2
    assert "home is empty" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
