"""`retrain`: re-run stages of one block with other settings, started by hand.

    python -m flows.retrain 1 --stages distill --set train.lr=0.01 --home .ccd
    prefect deployment run 'retrain/retrain' -p block=1 -p 'stages=["distill"]' -p 'config={"train": {"lr": 0.01}}'

The stages run under a new run key (`retrain-<12 hex digits of the flow run id>` unless given, the same for every
retry of the run): the loop writes their
models under `.../block=K/run=<key>/` and the stage ledger records them under the key, so the
block's earlier results (and every other block's) stay as they were. The retrained CCD student
is registered as a new version and proposed through the registry's gate.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import prefect.runtime.flow_run
from prefect import flow

from ccd.config import RunConfig
from ccd.continual.pinned_config import run_settings
from ccd.continual.state import METHODS
from ccd.errors import BadInputError
from ccd.home import Home
from ccd.lake import catalog
from ccd.teacher import TEACHER
from flows.options import add_config_options, config_parameter, one_line_errors
from flows.process_block import block_plan, check_options, run_stages

# Block 0's teacher members and ensemble lists live in `models/block=0/` (`ccd.teacher`), shared
# by every run key: retraining them would overwrite the default run's.
SHARED_BASE = ("teacher", "ensemble")


def stage_label(stage: str) -> str:
    """A stage as a retrain names it: every `teacher-<member>` is "teacher"."""
    return TEACHER if stage.startswith(f"{TEACHER}-") else stage


def retrain_groups(block: int, stages: list[str] | None, method: str, config: RunConfig) -> list[tuple[str, ...]]:
    """The groups a retrain runs: from the first chosen stage to the end of the block.

    Every later stage consumes what the chosen ones produce (the teacher learns from the updated
    student, the student is distilled from the teacher, evaluation and registration judge the
    student), so it runs again too; earlier stages are read from the default run.
    """
    plan = block_plan(block, method, config)
    labels = [stage_label(group[0]) for group in plan]
    chosen = list(stages or labels)
    unknown = [s for s in chosen if s not in labels]
    if unknown:
        raise BadInputError(f"cannot retrain stage(s) {', '.join(unknown)} of block {block} ({method}): choose from {', '.join(labels)}")
    shared = [s for s in chosen if block == 0 and s in SHARED_BASE]
    if shared:
        raise BadInputError(f"block 0's {' and '.join(shared)} are shared by every run and cannot be retrained under "
                            "another run key; retrain its student, or start a new home folder")
    return plan[min(labels.index(s) for s in chosen):]


def default_run_key() -> str:
    """`retrain-<12 hex digits of the flow run id>`: the same for every retry of one flow run, so a retried retrain
    resumes its own stages instead of redoing them under a new key (and registering twice).
    The id's last 12 hex digits: Prefect's ids are UUIDv7, whose leading digits are a timestamp
    shared by runs started within a minute or so, the trailing ones random."""
    run_id = prefect.runtime.flow_run.id
    if run_id is None:  # called outside a flow run (`retrain.fn`)
        return f"retrain-{catalog.utc_now():%Y%m%dT%H%M%S}"
    return f"retrain-{uuid.UUID(str(run_id)).hex[-12:]}"


@flow(name="retrain", flow_run_name="retrain block {block}", log_prints=True)
def retrain(
    block: int,
    stages: list[str] | None = None,
    method: str = "ccd",
    config: dict[str, Any] | None = None,
    home: str | None = None,
    run_key: str | None = None,
) -> dict[str, Any]:
    """Re-run `stages` of block `block` (and the block's later stages) under a new run key.

    `stages` (default: all of the block's) are names of `process-block`'s stages: for a CCD
    block k >= 1 `student-update`, `teacher` (every member), `ensemble`, `distill`, `evaluate`,
    `register`; for block 0 `student`, `evaluate`, `register`. `method` is CCD or a baseline;
    `config` holds changes to the default run's settings, e.g. `{"train": {"lr": 0.01}}`.
    The block and the blocks before it must be done in the default run. Giving the key of an
    interrupted retrain resumes it. Returns the run key and each stage's outputs.
    """
    check_options("register", method)
    where = Home.resolve(home)
    key = run_key or default_run_key()
    values = run_settings(where, key, config or {})
    groups = retrain_groups(block, stages, method, values)
    print(f"retraining {' → '.join(stage_label(g[0]) for g in groups)} of block {block} ({method}) under run key {key}")
    return {"run_key": key, "stages": run_stages(where, block, values, method, key, groups)}


def main() -> None:
    parser = argparse.ArgumentParser(description=retrain.__doc__.splitlines()[0])
    parser.add_argument("block", type=int)
    parser.add_argument("--stages", default=None, help="comma-separated stages (default: all of the block's)")
    parser.add_argument("--method", default="ccd", choices=METHODS)
    parser.add_argument("--run-key", default=None)
    add_config_options(parser)
    args = parser.parse_args()
    stages = args.stages.split(",") if args.stages else None
    with one_line_errors("retrain"):
        retrain(args.block, stages, args.method, config_parameter(args), args.home, args.run_key)


if __name__ == "__main__":
    main()
