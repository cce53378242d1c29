"""Evaluation throughput: `rank_metrics` vs a bare matmul + topk over the same embeddings.

Gowalla-sized problem: 29,858 users x 40,988 items, random dim-64 embeddings (throughput does
not depend on their values), the real exclude set (every train pair of Gowalla blocks 0..5, the
situation after the last block) and the real truth (every test pair of blocks 0..5). The issue's
target: `rank_metrics` within 2x of the bare matmul + topk.

    .venv/bin/python bench/bench_eval.py                 # CPU, or CUDA when available
    .venv/bin/python bench/bench_eval.py --device cpu --batch-users 1024 --repeats 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ccd.evaluate import rank_metrics

GOWALLA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gowalla"


def load_pairs(split: str) -> np.ndarray:
    """(N, 2) (user, item) pairs of one split over all six Gowalla blocks (ids are dense)."""
    frames = [pd.read_parquet(GOWALLA / f"block_{b}.parquet") for b in range(6)]
    every = pd.concat(frames)
    return every.loc[every["split"] == split, ["user_id", "item_id"]].to_numpy(np.int64)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare(users_emb: torch.Tensor, items_emb: torch.Tensor, users: np.ndarray, k: int, batch: int) -> None:
    """The floor: score a chunk with one matmul and take its top-k, nothing else."""
    for start in range(0, len(users), batch):
        chunk = torch.as_tensor(users[start : start + batch], device=users_emb.device)
        torch.topk(users_emb[chunk] @ items_emb.T, k, dim=1)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process); on a shared machine the CPU time is the
    steadier measure of the work done."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-users", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n_users, n_items = 29_858, 40_988
    truth, exclude = load_pairs("test"), load_pairs("train")
    generator = torch.Generator().manual_seed(0)
    users_emb = torch.randn(n_users, args.dim, generator=generator).to(device)
    items_emb = torch.randn(n_items, args.dim, generator=generator).to(device)
    users = np.unique(truth[:, 0])
    ks = (10, 20, 50)

    def evaluate() -> dict:
        return rank_metrics(lambda u: users_emb[u] @ items_emb.T, truth, exclude, n_items, ks, args.batch_users, device)

    evaluate()  # warm-up (allocator, kernels)
    # Interleaved repeats, best of each: a shared machine's load hits both paths alike.
    runs = [
        (timed(lambda: bare(users_emb, items_emb, users, max(ks), args.batch_users), device), timed(evaluate, device))
        for _ in range(args.repeats)
    ]
    (bare_wall, bare_cpu), (eval_wall, eval_cpu) = (
        (min(t[0] for t in col), min(t[1] for t in col)) for col in zip(*runs)
    )
    result = evaluate()
    print(f"device={device} threads={torch.get_num_threads()} users={len(users):,} items={n_items:,} dim={args.dim} "
          f"batch_users={args.batch_users} exclude={len(exclude):,} truth={len(truth):,} evaluated={result['users']:,}")
    print(f"{'path':<28}{'wall s':>9}{'users/s':>10}{'ratio':>7}{'CPU s':>9}{'ratio':>7}")
    for name, wall, cpu in (
        ("bare matmul + topk(50)", bare_wall, bare_cpu),
        ("rank_metrics (K=10,20,50)", eval_wall, eval_cpu),
    ):
        print(f"{name:<28}{wall:>9.2f}{len(users) / wall:>10,.0f}{wall / bare_wall:>7.2f}{cpu:>9.2f}{cpu / bare_cpu:>7.2f}")


if __name__ == "__main__":
    main()
