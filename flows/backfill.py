"""`backfill`: run a whole folder of blocks through the pipeline, in block order, then write the
ops dashboard.

    python -m flows.backfill data/sample --home .ccd --config configs/sample.toml

Finished stages are skipped (the stage ledger), so a killed or failed backfill continues where
it stopped when started again, and a finished one runs again as a quick no-op.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from ccd.continual.pinned_config import run_settings
from ccd.continual.state import METHODS
from ccd.home import Home
from ccd.lake.ingest import block_files
from ccd.stages import DEFAULT_RUN_KEY
from flows.options import add_config_options, config_parameter, one_line_errors
from flows.process_block import UNTIL, check_options, process_block
from flows.runners import task_runner
from flows.tasks import IO_RETRIES, IO_RETRY_DELAYS, transient, write_dashboard, write_stream_report


@task(name="list-blocks", cache_policy=NO_CACHE, retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, retry_condition_fn=transient)
def list_block_files(folder: Path) -> list[tuple[int, Path]]:
    """The folder's `block_<K>.<ext>` files, sorted by K."""
    return block_files(folder)


@flow(name="backfill", log_prints=True)
def backfill(
    folder: str,
    home: str | None = None,
    config: dict[str, Any] | None = None,
    method: str = "ccd",
    until: str = UNTIL[-1],
    runner: str = "threads",
) -> dict[str, Any]:
    """Run every block file of `folder` through `process-block` up to stage `until`, in order.

    One child flow run per block; the first failure stops the backfill. Progress over blocks is
    a progress artifact (`backfill-progress`). Unless it stops at ingest, it then writes the
    method's stream report (`ccd stream`'s metrics.json and H-mean plot) and the ops dashboard
    (`ccd report`), and prints where the dashboard is. Returns the blocks run and those paths.
    """
    check_options(until, method)
    where = Home.resolve(home)
    run_block = process_block.with_options(task_runner=task_runner(runner, where))
    files = list_block_files(Path(folder))
    progress = create_progress_artifact(0.0, key="backfill-progress", description=f"blocks of {folder} through {until}")
    for done, (block, path) in enumerate(files, start=1):
        run_block(str(path), block, str(where.root), config, method, until)
        update_progress_artifact(progress, 100.0 * done / len(files))
    result: dict[str, Any] = {"blocks": [block for block, _ in files]}
    print(f"backfill of {folder}: blocks {result['blocks']} done; home {where.root}")
    if until != "ingest" and files:
        result["report"] = write_stream_report(where, run_settings(where, DEFAULT_RUN_KEY, config or {}), method, files[-1][0])
        result["dashboard"] = write_dashboard(where)
        create_link_artifact(Path(result["dashboard"]).as_uri(), link_text="ops dashboard", key="dashboard")
        print(f"dashboard: {result['dashboard']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=backfill.__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--method", default="ccd", choices=METHODS)
    parser.add_argument("--until", default=UNTIL[-1], choices=UNTIL)
    parser.add_argument("--runner", default="threads", help="threads, dask, or a Dask scheduler address")
    add_config_options(parser)
    args = parser.parse_args()
    with one_line_errors("backfill"):
        result = backfill(args.folder, args.home, config_parameter(args), args.method, args.until, args.runner)
    if "dashboard" in result:
        print(f"\nDashboard: {result['dashboard']}")


if __name__ == "__main__":
    main()
