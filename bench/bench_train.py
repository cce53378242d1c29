"""Training benchmark: BPR-MF and LightGCN on Gowalla block 0 with the one training loop.

Train on block 0's train split, select the epoch on its valid split (Recall@20, patience),
report the test split: epochs to converge, seconds per epoch, peak memory, valid and test
Recall@20 / NDCG@20 (full ranking, train pairs excluded). Each model runs in its own process,
so the peak memory of one does not hide in the other's.

    .venv/bin/python bench/bench_train.py                                   # CUDA when available
    .venv/bin/python bench/bench_train.py --device cpu --threads 1 --models bpr:64 lightgcn:64 --max-epochs 60
    .venv/bin/python bench/bench_train.py --set lr=0.01 --set batch_size=4096 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ccd.atomic import write_text
from ccd.config import RunConfig, TeacherConfig, TrainConfig
from ccd.data import BlockData
from ccd.models import build_model, parse_members
from ccd.train import train, validate

GOWALLA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gowalla"


def load_block0() -> BlockData:
    """Gowalla block 0 with ids mapped densely in order of first appearance (as the lake does)."""
    frame = pd.read_parquet(GOWALLA / "block_0.parquet")
    frame["user"] = pd.factorize(frame["user_id"])[0]
    frame["item"] = pd.factorize(frame["item_id"])[0]
    frame["split"] = frame["split"].astype(str)
    return BlockData.from_frame(frame, block=0)


def run_one(spec: str, config: TrainConfig, layers: int, threads: int | None) -> dict[str, Any]:
    """Train one model (in a child process) and measure it."""
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    data = load_block0()
    (name, model_config), = parse_members(TeacherConfig(members=(spec,), lightgcn_layers=layers))
    model = build_model(model_config, data.n_users, data.n_items)
    cuda = config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = train(model, data, config)
    test = validate(model, data, config.eval_batch_users, split="test")
    peak_mib = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": f"{spec} ({name.split('-')[0]}{', L=' + str(layers) if 'lightgcn' in spec else ''})",
        "device": result.device,
        "params": model.parameter_count(),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "s_per_epoch": round(result.seconds_per_epoch, 2),
        "cpu_s_per_epoch": round(result.cpu_seconds_per_epoch, 2),
        "eval_s_total": round(result.eval_seconds, 1),
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_mem_mib": round(peak_mib),
        "valid_recall@20": result.best_metrics.get("recall@20"),
        "valid_ndcg@20": result.best_metrics.get("ndcg@20"),
        "test_recall@20": test["recall@20"],
        "test_ndcg@20": test["ndcg@20"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bpr:64", "lightgcn:64"], help="kind:dim specs")
    parser.add_argument("--layers", type=int, default=2, help="LightGCN layers")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a train config value, e.g. lr=0.01")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    overrides = [f"train.{o}" for o in args.overrides]
    overrides += [f"train.device={args.device}", f"train.max_epochs={args.max_epochs}", f"train.patience={args.patience}"]
    config = RunConfig.load(None, overrides).train
    print(f"train config: {dataclasses.asdict(config)}", file=sys.stderr)

    rows = []
    context = multiprocessing.get_context("spawn")
    for spec in args.models:
        with context.Pool(1) as pool:
            rows.append(pool.apply(run_one, (spec, config, args.layers, args.threads)))
        print(json.dumps(rows[-1]), file=sys.stderr)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    if args.json:
        write_text(Path(args.json), json.dumps({"config": dataclasses.asdict(config), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
