"""Lake commands: `ingest`, `ingest-folder`, `blocks`, `validations`."""

from __future__ import annotations

import argparse

from ccd.cli.common import add_command, config_of, emit, home_of, table
from ccd.lake import catalog
from ccd.lake.ingest import IngestResult, ingest_block, ingest_folder

BLOCK_COLUMNS = [
    "block", "rows", "train_rows", "valid_rows", "test_rows", "users", "items",
    "new_users", "new_items", "duplicates_dropped", "validation_status", "ingested_at",
]


def register(commands: argparse._SubParsersAction) -> None:
    ingest = add_command(commands, "ingest", run_ingest, "validate one block file and add it to the lake")
    ingest.add_argument("file", help="CSV, Parquet or JSON-lines file with user_id, item_id[, timestamp, split]")
    ingest.add_argument("--block", type=int, required=True, help="block number: the next block, or an existing one with --replace")
    ingest.add_argument("--replace", action="store_true", help="overwrite an existing block that holds different content")

    folder = add_command(commands, "ingest-folder", run_ingest_folder, "ingest every block_<K>.<ext> file of a folder in order")
    folder.add_argument("folder")

    add_command(commands, "blocks", run_blocks, "list the blocks in the catalog", settings=False)

    validations = add_command(commands, "validations", run_validations, "list validation results, rejected blocks included", settings=False)
    validations.add_argument("--block", type=int, default=None)


def run_ingest(args: argparse.Namespace) -> int:
    result = ingest_block(home_of(args), args.file, args.block, config_of(args).lake, replace=args.replace)
    emit(args, result.to_dict(), lambda: _describe(result))
    return 0


def run_ingest_folder(args: argparse.Namespace) -> int:
    results = ingest_folder(home_of(args), args.folder, config_of(args).lake)
    emit(args, {"blocks": [r.to_dict() for r in results]}, lambda: "\n".join(_describe(r) for r in results))
    return 0


def run_blocks(args: argparse.Namespace) -> int:
    blocks = [b.to_dict() for b in catalog.list_blocks(home_of(args))]
    emit(args, {"blocks": blocks}, lambda: table(blocks, BLOCK_COLUMNS))
    return 0


def run_validations(args: argparse.Namespace) -> int:
    rows = catalog.list_validations(home_of(args), args.block)
    emit(args, {"validations": rows}, lambda: table(rows, ["block", "status", "checked_at", "summary", "report_path"]))
    return 0


def _describe(result: IngestResult) -> str:
    r = result.record
    what = {"ingested": "ingested", "replaced": "replaced", "unchanged": "unchanged (same content already ingested)"}[result.status]
    line = f"block {r.block}: {what}: {r.rows} rows ({r.train_rows}/{r.valid_rows}/{r.test_rows} train/valid/test), {r.new_users} new users, {r.new_items} new items"
    if result.validation is not None and result.validation.status == "warning":
        line += f"; validation warning: {result.validation.summary()}"
    return line
