"""`process-block`: one interaction block through the pipeline, stage by stage, resumable.

    python -m flows.process_block data/sample/block_1.parquet --block 1 --home .ccd

Ingest and validate, then the CCD loop's stages of the block (`ccd.continual.loop`), each one
task through the stage ledger (`ccd stages`), so running the flow again after a failure or a
kill redoes nothing that finished and continues at the first unfinished stage.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import wait

from ccd.config import RunConfig
from ccd.continual import loop
from ccd.continual.pinned_config import run_settings
from ccd.continual.state import METHODS
from ccd.errors import BadInputError, ValidationFailedError
from ccd.home import Home
from ccd.models import parse_members
from ccd.stages import DEFAULT_RUN_KEY
from flows.options import add_config_options, config_parameter, one_line_errors
from flows.tasks import (
    block_key, ingest, loop_stage, publish_metrics, publish_registry, publish_validation,
)

# Where a run may stop: after ingest (the lake only), after evaluation, or at the end (the CCD
# student registered and proposed through the registry's gate; other methods end at evaluate).
UNTIL = ("ingest", "evaluate", "register")


def check_options(until: str, method: str = "ccd") -> None:
    if until not in UNTIL:
        raise BadInputError(f"unknown stop point {until!r}: choose from {', '.join(UNTIL)}")
    if method not in METHODS:
        raise BadInputError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")


def block_plan(block: int, method: str, config: RunConfig, until: str = UNTIL[-1]) -> list[tuple[str, ...]]:
    """The loop's stages of one block (`ccd.continual.loop.block_plan`) up to `until`; stages of
    one group (the teacher members) run side by side."""
    members = [name for name, _ in parse_members(config.teacher)]
    groups = loop.block_plan(block, method, members, loop.anchored(method, config))
    return groups if until == "register" else [group for group in groups if group != ("register",)]


def final_stage(block: int, method: str, until: str) -> str:
    """The ledger name of the block's last stage up to `until`: done means the block is done."""
    if until == "ingest":
        return "ingest"
    return loop.ledger_name(block, "register" if method == "ccd" and until == "register" else "evaluate", method)


def run_stages(home: Home, block: int, config: RunConfig, method: str, run_key: str,
               groups: list[tuple[str, ...]]) -> dict[str, Any]:
    """Run `groups` of `block` in order, each group's stages as parallel tasks; publish as they finish.

    Every stage is one `loop_stage` task (the flow's task runner places it: a thread, or a Dask
    worker). After evaluation the metrics table is published, after registration the registry's
    decision. Returns each stage's outputs by stage name.
    """
    progress = create_progress_artifact(0.0, key=block_key("progress", block, method, run_key),
                                        description=f"{method} stages of block {block} (run {run_key})")
    outputs: dict[str, Any] = {}
    for done, group in enumerate(groups, start=1):
        futures = {stage: loop_stage.submit(home, block, stage, config, method, run_key) for stage in group}
        wait(list(futures.values()))  # let every member finish (or fail) before the first error stops the flow
        outputs.update({stage: future.result() for stage, future in futures.items()})
        update_progress_artifact(progress, 100.0 * done / len(groups))
        if "evaluate" in group:
            publish_metrics(home, block, config, method, run_key)
        if "register" in group:
            publish_registry(home, block, outputs["register"], run_key)
    return outputs


@flow(name="process-block", flow_run_name="block {block}", log_prints=True)
def process_block(
    block_file: str,
    block: int,
    home: str | None = None,
    config: dict[str, Any] | None = None,
    method: str = "ccd",
    until: str = UNTIL[-1],
) -> dict[str, Any]:
    """Run block `block`, read from `block_file`, through the pipeline up to stage `until`.

    1. ingest and validate: map ids, split, write to the lake; a rejected block is quarantined
       and the flow fails with the report's path. The verdict is published either way.
    2. the CCD loop's stages of the block (`block_plan`); teacher members run side by side (on
       a Dask cluster of GPU machines with `runner`), each stage one task through the ledger.
    3. the metrics table (student and teacher, this block and earlier ones: LA, RA, H) and, for
       CCD, the registry's decision on the block's student, as artifacts.

    Earlier blocks must be done (the loop builds on them). `method` is CCD or a baseline of
    `ccd stream`; `config` holds changes to the stream's settings (those it started with, else
    the defaults; `ccd.continual.pinned_config`), e.g. `{"teacher": {"members": ["bpr:64x2"]}}`.
    Returns each stage's outputs.
    """
    check_options(until, method)
    where = Home.resolve(home)
    cfg = run_settings(where, DEFAULT_RUN_KEY, config or {})
    outputs: dict[str, Any] = {}
    try:
        outputs["ingest"] = ingest(where, Path(block_file), block, cfg.lake)
    except ValidationFailedError:
        publish_validation(where, block)
        raise
    publish_validation(where, block)
    if until == "ingest":
        return outputs
    outputs.update(run_stages(where, block, cfg, method, DEFAULT_RUN_KEY, block_plan(block, method, cfg, until)))
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=process_block.__doc__.splitlines()[0])
    parser.add_argument("block_file")
    parser.add_argument("--block", type=int, required=True)
    parser.add_argument("--method", default="ccd", choices=METHODS)
    parser.add_argument("--until", default=UNTIL[-1], choices=UNTIL)
    add_config_options(parser)
    args = parser.parse_args()
    with one_line_errors("process-block"):
        process_block(args.block_file, args.block, args.home, config_parameter(args), args.method, args.until)


if __name__ == "__main__":
    main()
