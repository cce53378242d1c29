"""SIGKILL the pipeline at a stage boundary or inside a write, re-run it, check nothing broke.

Every case starts from a copy of one home where block 0 went through the pipeline
(`workers.pipeline`: ingest, train, register). A child process runs block 1 with one injection
armed and SIGKILLs itself at that point. The test then checks:

1. right after the kill, what a reader sees is consistent: catalog rows match their Parquet
   parts, the id maps hold no id of an uncommitted block, every registered artifact and every
   model a finished stage recorded verifies against its sha256, at most one production;
2. the same pipeline, run again, resumes: stages done before the kill are skipped (same finish
   time, one attempt), the interrupted stage runs once more;
3. the end state equals a run that was never killed (same blocks, parts, id maps, model
   checksums, registry versions and decisions: nothing lost, nothing duplicated), and no
   temporary or orphan file is left anywhere in the home.

The default cases cover each write once; `-m slow` sweeps every point listed in SLOW too, and
kills block 0 on an empty home (FIRST_BLOCK), where the killed run creates the catalog and
the registry.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ccd import registry, stages
from ccd.atomic import TMP_PREFIX, sha256_file
from ccd.home import Home
from ccd.lake import catalog
from tests.conftest import make_block
from tests.faults import workers
from tests.faults.workers import COMMIT, MODEL, STAGES, Injection

# Calls made by block 1's pipeline, in order: ledger _start(ingest); three atomic report
# writes, the Parquet part (pq.write_table to a temp file, os.replace #4), one catalog
# transaction (insert ids, upsert_block, record_validation, COMMIT #1); _finish; _start(train);
# io.save (save_file, os.replace #5, write_text #1 checksum, #2 model.json); _finish;
# _start(register); register (COMMIT #2); propose (_set_status, _set_alias, _log, COMMIT #3);
# _finish.
DEFAULT = [
    Injection("ccd.stages._finish", 1, "after"),              # boundary: ingest done, train not started
    Injection("os.replace", 1, "before"),                     # a validation report in a temp file
    Injection("pyarrow.parquet.write_table", 1, "torn"),      # half a Parquet part in a temp file
    Injection("ccd.lake.catalog.upsert_block", 1, "after"),   # inside the catalog transaction
    Injection("ccd.models.io.save_file", 1, "torn"),          # half a safetensors file
    Injection("ccd.registry.store._set_alias", 1, "after"),   # inside the promotion transaction
    Injection(COMMIT, 3, "after"),                            # promoted, stage not recorded
]
SLOW = [
    Injection("ccd.stages._start", 1, "after"),               # boundary: ingest running, nothing written
    Injection("ccd.stages._finish", 1, "before"),             # block ingested, stage not recorded
    Injection("ccd.stages._start", 2, "after"),
    Injection("ccd.stages._finish", 2, "before"),             # model saved, stage not recorded
    Injection("ccd.stages._finish", 2, "after"),              # boundary: train done, register not started
    Injection("ccd.stages._start", 3, "after"),
    Injection("ccd.stages._finish", 3, "before"),             # promoted, stage not recorded
    Injection("os.replace", 3, "after"),                      # validation reports written, no part
    Injection("os.replace", 4, "before"),                     # complete Parquet temp file, not renamed
    Injection("ccd.atomic.write_with", 1, "after"),           # part in place, catalog not committed
    Injection("ccd.lake.catalog.insert_ids", 1, "after"),
    Injection("ccd.lake.catalog.record_validation", 1, "after"),
    Injection(COMMIT, 1, "before"),
    Injection(COMMIT, 1, "after"),                            # catalog committed, stage not recorded
    Injection("os.replace", 5, "before"),                     # complete safetensors temp file, not renamed
    Injection("ccd.models.io.write_with", 1, "after"),        # weights only
    Injection("ccd.models.io.write_text", 1, "after"),        # weights + sha256, no model.json
    Injection("ccd.models.io.write_text", 2, "after"),        # model.json written, stage not recorded
    Injection(COMMIT, 2, "before"),
    Injection(COMMIT, 2, "after"),                            # registered, not proposed
    Injection("ccd.registry.store._set_status", 1, "after"),  # old production archived, uncommitted
    Injection("ccd.registry.store._set_alias", 1, "before"),
    Injection("ccd.registry.store._log", 1, "before"),        # alias moved, decision not logged, uncommitted
    Injection(COMMIT, 3, "before"),
]
# Block 0 on an empty home: the catalog and the registry files are created by the killed run.
FIRST_BLOCK = [
    Injection(COMMIT, 1, "before"),
    Injection(COMMIT, 1, "after"),
    Injection("ccd.models.io.save_file", 1, "torn"),
    Injection(COMMIT, 2, "after"),
    Injection("ccd.registry.store._set_alias", 1, "after"),
]
CASES = [pytest.param(p, id=p.label) for p in DEFAULT] + [
    pytest.param(p, id=p.label, marks=pytest.mark.slow) for p in SLOW
]


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Block 0 (30 users) and block 1 (6 new users, new items, 30 old users)."""
    folder = tmp_path_factory.mktemp("landing")
    make_block().to_csv(folder / "block_0.csv", index=False)
    make_block(n_users=36, n_items=44, block=1, seed=1).to_csv(folder / "block_1.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, landing: Path) -> Path:
    """A home where block 0 went through the whole pipeline."""
    root = Home.resolve(tmp_path_factory.mktemp("base") / "home").root
    assert workers.run_child(workers.pipeline, root, landing, [0]) == 0
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, base: Path, landing: Path) -> dict[str, Any]:
    """The state after block 1 went through the pipeline without a fault."""
    root = shutil.copytree(base, tmp_path_factory.mktemp("reference") / "home")
    assert workers.run_child(workers.pipeline, root, landing, [1]) == 0
    return state(Home(root))


@pytest.mark.parametrize("injection", CASES)
def test_killed_pipeline_stays_consistent_and_resumes(injection, base, landing, reference, tmp_path):
    home = Home(shutil.copytree(base, tmp_path / "home"))
    kill_and_resume(home, landing, [1], injection)
    assert state(home) == reference


@pytest.mark.slow
@pytest.mark.parametrize("injection", FIRST_BLOCK, ids=lambda p: p.label)
def test_killed_first_block_on_an_empty_home(injection, base, landing, tmp_path):
    home = Home.resolve(tmp_path / "home")
    kill_and_resume(home, landing, [0], injection)
    assert state(home) == state(Home(base))


@pytest.mark.slow
def test_killed_quarantine_copy_leaves_no_torn_input(tmp_path):
    bad = make_block().astype({"user_id": object})
    bad.loc[3, "user_id"] = None
    path = tmp_path / "block_0.csv"
    bad.to_csv(path, index=False)
    home = Home.resolve(tmp_path / "home")
    copy = Injection("shutil.copyfile", 1, "torn")
    assert workers.run_child(workers.ingest_rejected, home.root, path, 0, copy) == -signal.SIGKILL
    assert all(p.read_bytes() == path.read_bytes() for p in home.quarantine.rglob("input.csv"))

    assert workers.run_child(workers.ingest_rejected, home.root, path, 0) == 0
    assert_clean(home)
    inputs = list(home.quarantine.rglob("input.csv"))
    assert inputs and all(p.read_bytes() == path.read_bytes() for p in inputs)


def kill_and_resume(home: Home, landing: Path, blocks: list[int], injection: Injection) -> None:
    """Kill the pipeline of `blocks` at `injection`, check the crashed state, re-run, check again."""
    code = workers.run_child(workers.run_killed, home.root, landing, blocks, injection)
    assert code == -signal.SIGKILL, f"{injection.label} was never reached (exit code {code})"
    assert_consistent(home)
    before = ledger(home)

    assert workers.run_child(workers.pipeline, home.root, landing, blocks) == 0
    assert_consistent(home)
    assert_clean(home)
    assert_resumed(before, ledger(home), blocks)


# --- what must hold at every moment, as a reader sees it


def assert_consistent(home: Home) -> None:
    """The lake, catalog, models and registry agree with each other (crashed or not)."""
    blocks = catalog.list_blocks(home)
    assert [b.block for b in blocks] == list(range(len(blocks)))
    for record in blocks:
        assert pq.ParquetFile(home.root / record.file).metadata.num_rows == record.rows
    for kind in ("user", "item"):
        size = getattr(blocks[-1], f"n_{kind}s") if blocks else 0
        ids = catalog.id_map(home, kind)["internal_id"].tolist()
        assert ids == list(range(size)), f"{kind} map holds ids of an uncommitted block"

    versions = registry.list_versions(home, MODEL)
    by_number = {v.version: v for v in versions}
    for record in stages.list_stages(home):
        if record.status == "done" and record.stage == "train":
            assert_model_verifies(home.root / record.outputs["path"])
        if record.status == "done" and record.stage == "register":
            assert by_number[record.outputs["version"]].block == record.block
    for version in versions:
        registry.verify_artifact(home, version)
        assert_model_verifies(version.path(home))
    production = [v.version for v in versions if v.status == "production"]
    alias = registry.aliases(home, MODEL).get("production")
    assert production == ([alias] if alias else [])


def assert_model_verifies(folder: Path) -> None:
    """model.json names the weights' sha256, and so does the sidecar: what `io.load` checks."""
    meta = json.loads((folder / "model.json").read_text())
    digest = sha256_file(folder / "weights.safetensors")
    assert digest == meta["weights_sha256"]
    assert (folder / "weights.safetensors.sha256").read_text().split()[0] == digest


def assert_clean(home: Home) -> None:
    """No temporary file anywhere, no Parquet part the catalog does not name."""
    assert [str(p) for p in home.root.rglob(f"{TMP_PREFIX}*")] == []
    named = {home.root / b.file for b in catalog.list_blocks(home)}
    assert set(home.interactions.rglob("*.parquet")) == named


def assert_resumed(
    before: dict[tuple[int, str], stages.StageRecord], after: dict[tuple[int, str], stages.StageRecord], blocks: list[int]
) -> None:
    """Done stages were skipped; the interrupted one ran once more; every stage is done now."""
    assert set(after) == {(k, s) for k in range(max(blocks) + 1) for s in STAGES}
    assert all(record.status == "done" for record in after.values())
    for key, record in after.items():
        earlier = before.get(key)
        if earlier is None:
            assert record.attempts == 1, key
        elif earlier.status == "done":
            assert (record.finished_at, record.attempts) == (earlier.finished_at, earlier.attempts), key
        else:
            assert record.attempts == earlier.attempts + 1, key


# --- the state compared with the fault-free reference


def ledger(home: Home) -> dict[tuple[int, str], stages.StageRecord]:
    return {(r.block, r.stage): r for r in stages.list_stages(home)}


def state(home: Home) -> dict[str, Any]:
    """Everything a run decides, minus times: blocks, rows, ids, model checksums, registry."""
    blocks = catalog.list_blocks(home)
    return {
        "blocks": [(b.block, b.content_hash, b.file, b.rows, b.n_users, b.n_items) for b in blocks],
        "parts": [_frame_hash(pq.read_table(home.root / b.file).to_pandas()) for b in blocks],
        "ids": [catalog.id_map(home, kind).to_dict("list") for kind in ("user", "item")],
        "validations": [(v["block"], v["status"]) for v in catalog.list_validations(home)],
        "versions": [(v.version, v.block, v.sha256, v.status, v.aliases) for v in registry.list_versions(home)],
        "decisions": [(d.version, d.kind, d.promoted, d.previous_production) for d in registry.list_decisions(home)],
    }


def _frame_hash(frame: pd.DataFrame) -> int:
    return int(pd.util.hash_pandas_object(frame.astype({"split": str}), index=False).sum())
