"""`stream-ingest`: process the new block files of a landing folder, in block order.

    python -m flows.stream_ingest data/landing --home .ccd

Deployed with an interval schedule (`prefect.yaml`): every run looks at the landing folder, and
each block whose pipeline has not finished gets one `process-block` run, oldest first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ccd import atomic, stages
from ccd.continual.pinned_config import run_settings
from ccd.continual.state import METHODS, Layout
from ccd.errors import ValidationFailedError
from ccd.home import Home
from ccd.lake import catalog
from ccd.lake.ingest import block_files
from ccd.stages import DEFAULT_RUN_KEY
from flows.options import add_config_options, config_parameter, one_line_errors
from flows.process_block import UNTIL, check_options, final_stage, process_block
from flows.runners import task_runner
from flows.tasks import IO_RETRIES, IO_RETRY_DELAYS, transient, write_dashboard, write_stream_report


@task(name="find-new-blocks", cache_policy=NO_CACHE, retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, retry_condition_fn=transient)
def find_new_blocks(home: Home, landing_folder: Path, until: str, method: str = "ccd") -> list[tuple[int, Path]]:
    """Block files of the landing folder whose last stage up to `until` is not done yet, in block order."""
    return [(block, path) for block, path in block_files(landing_folder)
            if not stages.is_done(home, block, final_stage(block, method, until))]


@task(name="earlier-rejection", task_run_name="earlier rejection of block {block}", cache_policy=NO_CACHE,
      retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, retry_condition_fn=transient)
def earlier_rejection(home: Home, block: int, path: Path) -> str | None:
    """The quarantine report of this very file if block `block`'s latest verdict rejected it, else None.

    A scheduled stream would otherwise validate (and quarantine) the same bad file on every run.
    """
    verdicts = catalog.list_validations(home, block)
    if verdicts and verdicts[-1]["status"] == "rejected" and verdicts[-1]["content_hash"] == atomic.sha256_file(path):
        return str(home.root / verdicts[-1]["report_path"])
    return None


@task(name="stale-report", cache_policy=NO_CACHE, retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, retry_condition_fn=transient)
def stale_report(home: Home, method: str, until: str, processed: list[int]) -> int | None:
    """The last block of the unbroken run of finished blocks 0, 1, ... if the stream report is
    out of date, else None. It is when it stops before that block (checked on every run, so a
    run that finished some blocks and then failed gets its report on the next one) or when this
    run processed one of its blocks again (a replaced block)."""
    finished = -1
    while stages.is_done(home, finished + 1, final_stage(finished + 1, method, until)):
        finished += 1
    path = Layout(home, method).report_dir / "metrics.json"
    reported = json.loads(path.read_text())["blocks"][-1] if path.exists() else -1
    redone = any(block <= finished for block in processed)
    return finished if finished >= 0 and (finished > reported or redone) else None


@flow(name="stream-ingest", log_prints=True)
def stream_ingest(
    landing_folder: str,
    home: str | None = None,
    config: dict[str, Any] | None = None,
    method: str = "ccd",
    until: str = UNTIL[-1],
    runner: str = "threads",
) -> list[int]:
    """Run every new block of `landing_folder` through `process-block`, oldest first.

    A block is new until its last stage up to `until` is done. A rejected block stops the
    stream: the run fails naming the quarantine report, and later blocks wait. The same rejected
    file is not validated again by later runs; replace it (or fix the lake policy and run
    `process-block` by hand) to go on. Whenever finished blocks are missing from the stream
    report (new ones, or those of an earlier run that failed later on), the report and the ops
    dashboard are rewritten. Returns the blocks processed.
    """
    check_options(until, method)
    where = Home.resolve(home)
    run_block = process_block.with_options(task_runner=task_runner(runner, where))
    new = find_new_blocks(where, Path(landing_folder), until, method)
    print(f"{len(new)} new block(s) in {landing_folder}: {[block for block, _ in new]}")
    for block, path in new:
        report = earlier_rejection(where, block, path)
        if report is not None:
            raise ValidationFailedError(
                f"block {block} ({path}) was rejected before and has not changed; later blocks wait. "
                f"Report: {report}. Replace the file to go on."
            )
        run_block(str(path), block, str(where.root), config, method, until)
    last = stale_report(where, method, until, [block for block, _ in new]) if until != "ingest" else None
    if last is not None:
        write_stream_report(where, run_settings(where, DEFAULT_RUN_KEY, config or {}), method, last)
        print(f"dashboard: {write_dashboard(where)}")
    return [block for block, _ in new]


def main() -> None:
    parser = argparse.ArgumentParser(description=stream_ingest.__doc__.splitlines()[0])
    parser.add_argument("landing_folder")
    parser.add_argument("--method", default="ccd", choices=METHODS)
    parser.add_argument("--until", default=UNTIL[-1], choices=UNTIL)
    parser.add_argument("--runner", default="threads", help="threads, dask, or a Dask scheduler address")
    add_config_options(parser)
    args = parser.parse_args()
    with one_line_errors("stream-ingest"):
        stream_ingest(args.landing_folder, args.home, config_parameter(args), args.method, args.until, args.runner)


if __name__ == "__main__":
    main()
