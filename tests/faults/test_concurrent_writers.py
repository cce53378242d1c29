"""Writers in separate processes at the same time: ingests, a retrain during an ingest, promotions.

Each writer is a forkserver child (see `workers`); a barrier releases them together so their
writes overlap. Concurrent manual promotions are in tests/test_registry.py, one stage run by two
threads in tests/test_stages.py; here are the gate and the lake.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ccd import registry, stages
from ccd.home import Home
from ccd.lake import catalog
from tests.conftest import make_block
from tests.faults import workers
from tests.faults.workers import MODEL, METRIC, RETRAIN

TIMEOUT = 120


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    folder = tmp_path / "landing"
    folder.mkdir()
    make_block().to_csv(folder / "block_0.csv", index=False)
    make_block(n_users=36, n_items=44, block=1, seed=1).to_csv(folder / "block_1.csv", index=False)
    return folder


def start(target, *args):
    process = workers.context().Process(target=target, args=args, daemon=True)  # killed if the test fails
    process.start()
    return process


def finish(*processes) -> None:
    for process in processes:
        process.join(TIMEOUT)
        if process.exitcode is None:
            process.kill()
        assert process.exitcode == 0


def test_two_ingests_of_one_block_write_it_once(tmp_path, landing):
    home = Home.resolve(tmp_path / "home")
    ctx = workers.context()
    barrier, results = ctx.Barrier(2), ctx.Queue()
    both = [start(workers.ingest_together, home.root, landing / "block_0.csv", 0, barrier, results) for _ in range(2)]
    finish(*both)

    assert sorted(results.get(timeout=5) for _ in both) == ["ingested", "unchanged"]
    [record] = catalog.list_blocks(home)
    assert list(home.block_dir(0).glob("*")) == [home.root / record.file]
    assert pq.ParquetFile(home.root / record.file).metadata.num_rows == record.rows
    assert len(catalog.id_map(home, "user")) == record.n_users
    assert len(catalog.list_validations(home, 0)) == 1


def test_ingest_of_the_next_block_during_a_retrain(tmp_path, landing):
    home = Home.resolve(tmp_path / "home")
    assert workers.run_child(workers.pipeline, home.root, landing, [0]) == 0
    ctx = workers.context()
    started, ingested, results = ctx.Event(), ctx.Event(), ctx.Queue()
    retrain = start(workers.retrain_while_ingesting, home.root, 0, started, ingested, results)
    assert started.wait(TIMEOUT)
    ingest = start(workers.ingest_together, home.root, landing / "block_1.csv", 1, None, results)
    finish(ingest)
    assert results.get(timeout=5) == "ingested"
    ingested.set()
    finish(retrain)

    outputs = results.get(timeout=5)
    assert outputs["reads"] > 1  # the retrain read block 0 before, during and after the ingest
    record = stages.get(home, 0, "train", RETRAIN)
    block_1 = catalog.get_block(home, 1)
    assert record.status == "done" and record.started_at < block_1.ingested_at < record.finished_at
    assert stages.get(home, 0, "train").finished_at < record.started_at  # the default run was left alone
    assert (home.root / outputs["path"] / "model.json").exists()


def test_two_promotions_at_once_leave_one_production(tmp_path):
    home = Home.resolve(tmp_path / "home")
    for block, score in enumerate((0.3, 0.4, 0.5)):
        folder = home.models / f"v{block + 1}"
        folder.mkdir(parents=True)
        (folder / "weights.safetensors").write_bytes(f"model {block}".encode())
        registry.register(home, MODEL, folder, block, "ccd", {METRIC: score}, n_params=4)
    registry.propose(home, MODEL, 1)
    ctx = workers.context()
    barrier, results = ctx.Barrier(2), ctx.Queue()
    finish(*[start(workers.propose_together, home.root, version, barrier, results) for version in (2, 3)])

    outcomes = dict(results.get(timeout=5) for _ in range(2))
    decisions = registry.list_decisions(home, MODEL)
    assert [(d.version, d.kind) for d in decisions[1:]] in ([(2, "gate"), (3, "gate")], [(3, "gate"), (2, "gate")])
    assert {d.version: d.promoted for d in decisions[1:]} == outcomes
    promoted = [d for d in decisions if d.promoted]
    for before, after in zip(promoted, promoted[1:]):  # each promotion replaced the one before it
        assert after.previous_production == before.version
    production = registry.aliases(home, MODEL)["production"]
    assert production == promoted[-1].version == 3  # v3 wins whichever order the gate saw them in
    assert [v.version for v in registry.list_versions(home, MODEL) if v.status == "production"] == [production]
