"""`process-block`: one interaction block through the pipeline, stage by stage, resumable.

    python -m flows.process_block data/sample/block_0.parquet --block 0 --home .ccd

Every stage is recorded in the stage ledger (`ccd stages`), so running the flow again after a
failure or a kill redoes nothing that finished and continues at the first unfinished stage.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow

from ccd.config import RunConfig
from ccd.errors import BadInputError, ValidationFailedError
from ccd.home import Home
from ccd.models import parse_members
from ccd.stages import DEFAULT_RUN_KEY
from flows.options import add_config_options, config_parameter
from flows.tasks import (
    distill_student, ingest, publish_student, publish_teacher, publish_validation, train_member, train_teacher,
)

# The stages in order; `until` stops after one of them.
PIPELINE = ("ingest", "teacher", "distill")


def check_until(until: str) -> None:
    if until not in PIPELINE:
        raise BadInputError(f"unknown stage {until!r}: the pipeline is {' → '.join(PIPELINE)}")


@flow(name="process-block", flow_run_name="block {block}", log_prints=True)
def process_block(
    block_file: str,
    block: int,
    home: str | None = None,
    config: dict[str, Any] | None = None,
    until: str = PIPELINE[-1],
) -> dict[str, Any]:
    """Run block `block`, read from `block_file`, through the pipeline up to stage `until`.

    1. ingest and validate: map ids, split, write to the lake; a rejected block is quarantined
       and the flow fails with the report's path. The verdict is published either way.
    2. teacher: every member is its own task (run side by side by the flow's task runner, e.g.
       on a Dask cluster of GPU machines), then the ensemble and its top-K lists; the metrics
       are published as a table.
    3. distill: a compact student from the teacher's lists with `distill.method` (DE-RRD by
       default), compared with the teacher (accuracy, parameters, latency) in a table.

    `config` holds `RunConfig` sections that differ from the defaults, e.g.
    `{"teacher": {"members": ["bpr:64x2"]}}`. Returns each stage's outputs.
    """
    check_until(until)
    where, cfg = Home.resolve(home), RunConfig.from_dict(config or {})
    outputs: dict[str, Any] = {}

    # 1. ingest and validate
    try:
        outputs["ingest"] = ingest(where, Path(block_file), block, cfg.lake)
    except ValidationFailedError:
        publish_validation(where, block)
        raise
    publish_validation(where, block)
    if until == "ingest":
        return outputs

    # 2. teacher: members side by side, then the ensemble
    outputs["teacher"] = update_teacher(where, block, cfg)
    if until == "teacher":
        return outputs

    # 3. distill the compact student from the teacher
    outputs["distill"] = distill_student(where, block, cfg)
    publish_student(block, outputs["distill"])
    return outputs


def update_teacher(home: Home, block: int, config: RunConfig, run_key: str = DEFAULT_RUN_KEY, retrain: bool = False) -> dict[str, Any]:
    """Train the members as parallel tasks, then the ensemble; publish its table; return its report."""
    names = [name for name, _ in parse_members(config.teacher.members, config.teacher.lightgcn_layers, config.teacher.base_seed)]
    members = [train_member.submit(home, block, name, config, run_key, retrain) for name in names]
    for member in members:
        member.result()  # raises the first member's error, if any
    report = train_teacher(home, block, config, run_key)
    publish_teacher(block, report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=process_block.__doc__.splitlines()[0])
    parser.add_argument("block_file")
    parser.add_argument("--block", type=int, required=True)
    parser.add_argument("--until", default=PIPELINE[-1], choices=PIPELINE)
    add_config_options(parser)
    args = parser.parse_args()
    process_block(args.block_file, args.block, args.home, config_parameter(args), args.until)


if __name__ == "__main__":
    main()
