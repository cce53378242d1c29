"""Child-process side of the fault and concurrency tests: a small pipeline, how to kill it, and
the writers that the concurrency tests run side by side.

The pipeline runs, per block, the three stages whose writes matter, through the stage ledger:

- `ingest`: validate, write the Parquet part, commit the catalog transaction;
- `train`: save a tiny model (safetensors + sha256 + model.json);
- `register`: register the saved model and propose it through the registry's gate.

`run_killed` arms one `Injection` and runs the pipeline: at the n-th call of the target function
the child SIGKILLs itself, before, after, or in the middle of ("torn": the file written, then cut
to half) that call. Nothing in `ccd` knows about it: the target is monkeypatched here, in the
child only.

Children come from a forkserver context: its server is a freshly spawned interpreter that has
imported the heavy modules once (Great Expectations, torch), and forks each child from that clean
state. A spawned child would pay those ~10 s of imports every time; forking the test process
itself would copy whatever threads earlier tests left running.
"""

from __future__ import annotations

import functools
import importlib
import multiprocessing
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, NoReturn

PRELOAD = ["ccd.lake.ingest", "great_expectations", "torch", "ccd.models.io", "ccd.registry", "ccd.stages"]
STAGES = ("ingest", "train", "register")
MODEL = "student"
METRIC = "h_recall@20"
RETRAIN = "retrain"


def context() -> multiprocessing.context.BaseContext:
    """The forkserver context, with the heavy imports preloaded in its server."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def run_child(target: Callable[..., Any], *args: Any, timeout: float = 120) -> int:
    """Run `target(*args)` in a forkserver child and return its exit code (-9 when SIGKILLed)."""
    child = context().Process(target=target, args=args, daemon=True)  # killed if the test dies first
    child.start()
    child.join(timeout)
    if child.exitcode is None:
        child.kill()
        child.join(10)
        raise TimeoutError(f"child {target.__name__}{args} did not finish within {timeout:g}s")
    return child.exitcode


# --- the pipeline


def pipeline(root: Path, landing: Path, blocks: list[int]) -> None:
    """Ingest, train and register each of `blocks`, resuming at the first unfinished stage."""
    from ccd import stages
    from ccd.home import Home

    home = Home(root)
    for block in blocks:
        stages.run_stage(home, block, "ingest", lambda: _ingest(home, landing, block))
        stages.run_stage(home, block, "train", lambda: _train(home, block))
        stages.run_stage(home, block, "register", lambda: _register(home, block))


def model_dir(block: int, run_key: str = "default") -> str:
    """Where block k's model of a run lives, relative to the home folder."""
    run = "" if run_key == "default" else f"run={run_key}/"
    return f"models/block={block}/{run}{MODEL}"


def _ingest(home, landing: Path, block: int):
    from ccd.config import LakeConfig
    from ccd.lake.ingest import ingest_block

    return ingest_block(home, landing / f"block_{block}.csv", block, LakeConfig())


def _train(home, block: int, run_key: str = "default") -> dict[str, Any]:
    """Save a seeded tiny BPR-MF sized to the block's id space.

    It stands in for training: what a kill can break is the artifact save, and a seeded model
    is the same on every re-run, so its checksum can be compared with a run that was not killed.
    """
    from ccd.lake import catalog
    from ccd.models import BPRConfig, BPRMF
    from ccd.models import io

    record = catalog.get_block(home, block)
    model = BPRMF(BPRConfig(dim=4, seed=block), record.n_users, record.n_items)
    io.save(model, home.root / model_dir(block, run_key), {"block": block})
    return {"path": model_dir(block, run_key), "params": model.parameter_count()}


def _register(home, block: int) -> dict[str, Any]:
    from ccd import registry

    # A stand-in score that rises per block, so block k > 0 is promoted: the gate archives the
    # old production and moves the alias, the writes a kill should interrupt.
    metrics = {METRIC: 0.1 * (block + 1)}
    version = registry.register(home, MODEL, model_dir(block), block, "ccd", metrics, n_params=4)
    decision = registry.propose(home, MODEL, version.version)
    return {"version": version.version, "promoted": decision.promoted}


def ingest_rejected(root: Path, path: Path, block: int, injection: Injection | None = None) -> None:
    """Ingest a block that fails validation (it goes to quarantine); exit 0 when it was refused."""
    from ccd.config import LakeConfig
    from ccd.errors import ValidationFailedError
    from ccd.home import Home
    from ccd.lake.ingest import ingest_block

    if injection is not None:
        arm(injection)
    try:
        ingest_block(Home(root), path, block, LakeConfig())
    except ValidationFailedError:
        return
    raise AssertionError(f"{path} was accepted")


# --- concurrent writers (each waits on `barrier` so that the writes overlap)


def ingest_together(root: Path, path: Path, block: int, barrier, results) -> None:
    """Ingest `path` as `block` once every process is at the barrier (if any); report the status."""
    from ccd.config import LakeConfig
    from ccd.home import Home
    from ccd.lake.ingest import ingest_block

    if barrier is not None:
        barrier.wait(30)
    results.put(ingest_block(Home(root), path, block, LakeConfig()).status)


def propose_together(root: Path, version: int, barrier, results) -> None:
    """Propose `version` through the gate once every process is at the barrier."""
    from ccd import registry
    from ccd.home import Home

    barrier.wait(30)
    results.put((version, registry.propose(Home(root), MODEL, version).promoted))


def retrain_while_ingesting(root: Path, block: int, started, ingested, results) -> None:
    """A retrain stage of `block` that keeps reading the block until another ingest is done.

    Every read must see the same data: a later block entering the lake never changes an
    earlier one. Reports how many reads the stage made.
    """
    import numpy as np

    from ccd import stages
    from ccd.home import Home
    from ccd.lake.store import load_block_data

    home = Home(root)

    def stage() -> dict[str, Any]:
        first, reads = load_block_data(home, block), 1
        started.set()
        while not ingested.wait(0.01):
            again = load_block_data(home, block)
            assert np.array_equal(again.train, first.train) and again.n_users == first.n_users
            reads += 1
        return {**_train(home, block, RETRAIN), "reads": reads}

    results.put(stages.run_stage(home, block, "train", stage, run_key=RETRAIN))


# --- fault injection


@dataclass(frozen=True)
class Injection:
    """Kill at the `nth` call of `target` ("module.attr" or COMMIT), `when` relative to the call."""

    target: str
    nth: int
    when: Literal["before", "after", "torn"]

    @property
    def label(self) -> str:
        return f"{self.when}-{self.target}#{self.nth}"


COMMIT = "duckdb.COMMIT"  # an explicit DuckDB commit: con.commit() or execute("COMMIT")


def run_killed(root: Path, landing: Path, blocks: list[int], injection: Injection) -> None:
    """Run the pipeline with `injection` armed; returning normally means it was never reached."""
    arm(injection)
    pipeline(root, landing, blocks)


def arm(injection: Injection) -> None:
    """Monkeypatch the target in this process so that its n-th call ends in SIGKILL."""
    calls = {"n": 0}

    def due() -> bool:
        calls["n"] += 1
        return calls["n"] == injection.nth

    if injection.target == COMMIT:
        _arm_commit(injection, due)
        return
    module_name, attr = injection.target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    original = getattr(module, attr)

    @functools.wraps(original)
    def patched(*args, **kwargs):
        if not due():
            return original(*args, **kwargs)
        if injection.when == "before":
            _die()
        original(*args, **kwargs)
        if injection.when == "torn":
            _tear(Path(args[1]))  # write_table(table, where), save_file(tensors, filename), copyfile(src, dst)
        _die()

    setattr(module, attr, patched)


def _arm_commit(injection: Injection, due: Callable[[], bool]) -> None:
    """Wrap every new DuckDB connection so its explicit commits count towards the injection."""
    import duckdb

    connect = duckdb.connect

    class Connection:
        def __init__(self, con) -> None:
            self._con = con

        def __getattr__(self, name: str):
            return getattr(self._con, name)

        def commit(self):
            return self._commit(self._con.commit)

        def execute(self, query, *args, **kwargs):
            if isinstance(query, str) and query.strip().upper() == "COMMIT":
                return self._commit(lambda: self._con.execute(query, *args, **kwargs))
            return self._con.execute(query, *args, **kwargs)

        def _commit(self, commit):
            if not due():
                return commit()
            if injection.when == "before":
                _die()
            commit()
            _die()

    duckdb.connect = lambda *args, **kwargs: Connection(connect(*args, **kwargs))


def _tear(path: Path) -> None:
    """Cut a just-written file to half its size: what a crash during the write leaves."""
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def _die() -> NoReturn:
    os.kill(os.getpid(), signal.SIGKILL)
