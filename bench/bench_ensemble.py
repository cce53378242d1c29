"""The ensemble's rank transform on CPU: numpy's argsort (what `rank_transform` uses) vs torch's.

Every member ranks every item for every user, so at Gowalla's size (41k items, ~30k users, three
members) the ensemble stage sorts about 90 chunks of 1,024 x 41k scores per block. Each row is
a random permutation of distinct values, so the two sorts must agree exactly.

    .venv/bin/python bench/bench_ensemble.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from ccd.config import TeacherConfig
from ccd.ensemble import rank_transform

EXPONENT = TeacherConfig().rank_exponent


def torch_rank_transform(scores: torch.Tensor) -> torch.Tensor:
    """The transform as it was, with torch's argsort (the reference for the speed-up)."""
    order = torch.argsort(scores, dim=1, descending=True)
    positions = torch.arange(1, scores.shape[1] + 1, dtype=torch.float32)
    return torch.empty(scores.shape).scatter_(1, order, positions.pow(-EXPONENT).expand_as(order))


def best_of(fn, scores: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(scores)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1024, help="rows per chunk (the ensemble's batch_users)")
    parser.add_argument("--items", type=int, default=40988, help="Gowalla's item count")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    # Distinct values (each row a permutation), so both sorts must give the same ranks exactly.
    scores = torch.stack([torch.randperm(args.items, generator=generator) for _ in range(args.users)]).float()
    assert torch.equal(rank_transform(scores, EXPONENT), torch_rank_transform(scores)), "the two sorts disagree on distinct scores"
    numpy_s = best_of(lambda s: rank_transform(s, EXPONENT), scores, args.repeats)
    torch_s = best_of(torch_rank_transform, scores, args.repeats)
    print(f"rank transform of {args.users:,} x {args.items:,} float32 scores, {args.threads} thread(s), best of {args.repeats}:\n")
    print("| sort | s per chunk | speed-up |\n|---|---|---|")
    print(f"| torch.argsort | {torch_s:.2f} | 1.0x |")
    print(f"| numpy argsort (`rank_transform`) | {numpy_s:.2f} | {torch_s / numpy_s:.1f}x |")


if __name__ == "__main__":
    main()
