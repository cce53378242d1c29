"""`backfill`: run a whole folder of blocks through the pipeline, in block order.

    python -m flows.backfill data/sample --home .ccd

Finished stages are skipped (the stage ledger), so a killed or failed backfill continues where
it stopped when started again.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from ccd.home import Home
from ccd.lake.ingest import block_files
from flows.process_block import PIPELINE, check_until, process_block
from flows.options import add_config_options, config_parameter
from flows.runners import task_runner
from flows.tasks import IO_RETRIES, IO_RETRY_DELAYS, transient


@task(name="list-blocks", cache_policy=NO_CACHE, retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, retry_condition_fn=transient)
def list_block_files(folder: Path) -> list[tuple[int, Path]]:
    """The folder's `block_<K>.<ext>` files, sorted by K."""
    return block_files(folder)


@flow(name="backfill", log_prints=True)
def backfill(
    folder: str,
    home: str | None = None,
    config: dict[str, Any] | None = None,
    until: str = PIPELINE[-1],
    runner: str = "threads",
) -> list[int]:
    """Run every block file of `folder` through `process-block` up to stage `until`, in order.

    One child flow run per block; the first failure stops the backfill. Progress over blocks is
    a progress artifact (`backfill-progress`). Returns the blocks run.
    """
    check_until(until)
    where = Home.resolve(home)
    run_block = process_block.with_options(task_runner=task_runner(runner))
    files = list_block_files(Path(folder))
    progress = create_progress_artifact(0.0, key="backfill-progress", description=f"blocks of {folder} through {until}")
    for done, (block, path) in enumerate(files, start=1):
        run_block(str(path), block, str(where.root), config, until)
        update_progress_artifact(progress, 100.0 * done / len(files))
    print(f"backfill of {folder}: blocks {[block for block, _ in files]} done; home {where.root}")
    return [block for block, _ in files]


def main() -> None:
    parser = argparse.ArgumentParser(description=backfill.__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--until", default=PIPELINE[-1], choices=PIPELINE)
    parser.add_argument("--runner", default="threads", help="threads, dask, or a Dask scheduler address")
    add_config_options(parser)
    args = parser.parse_args()
    backfill(args.folder, args.home, config_parameter(args), args.until, args.runner)


if __name__ == "__main__":
    main()
