"""How much of a gap between two methods' students is the distillation's seed: one block re-distilled.

    .venv/bin/python bench/bench_ccd_seed_spread.py --home bench/out/home-ccd-gowalla --block 5 \\
        --runs kd:default,ccd:teacher-replay-0 --seeds 0,1,2 [--set continual.select_on=stream]

Reads a home where `bench_ccd_gowalla.py` ran the given methods (under the given run keys)
through `--block`; for each run and seed it distils block k's student again from that run's
teacher lists and its own start, D_{k-1} or CL_k (what the stream's distill stage does,
`distill.seed` changed), and ranks it on the test splits of blocks 0..k. H is the harmonic mean of block k's Recall@20 and
the mean over the earlier blocks (the one-block analogue of the paper's H). Seed 0 is the
stream's own setting (combined with the block as the stream does, `loop.seeded_for_block`);
`--set` changes a setting of the distillation (e.g. how its epoch is selected) on top of each
run's own. `method:key@method:key` distils from the first run's D_{k-1}
with the second run's teacher lists, which splits a gap between two runs into what their
students carry and what their teachers list. Nothing is written to the home; a run key it has
not pinned is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from bench_ccd_teacher_ablation import row, score, stored_run
from ccd.config import RunConfig
from ccd.continual.distill_stage import distill_block
from ccd.continual.loop import Run, seeded_for_block
from ccd.continual.pinned_config import run_settings
from ccd.continual.selection import stream_validator
from ccd.home import Home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--runs", default="kd:default,ccd:teacher-replay-0",
                        help="comma list of method:run-key, each optionally @method:run-key of another run whose teacher lists to use")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    home, block = Home.resolve(args.home), args.block
    if block < 1:
        raise SystemExit(f"--block must be >= 1 (block k re-distils from D_(k-1)), got {block}")
    print("| run | seed | " + " | ".join(f"R@20 test {j}" for j in range(block + 1)) + " | H | epochs | s |")
    print("|" + "---|" * (block + 6))
    for spec in args.runs.split(","):
        own, _, other = spec.partition("@")
        run = spec_run(home, own)
        lists = spec_run(home, other) if other else run
        config = run_settings(home, run.run_key, RunConfig.named(None, args.overrides))
        data, previous = run.data(block), run.load(run.distill_start(block))
        tests = {j: run.data(j).test for j in range(block + 1)}
        # as the stream's stage 4 drew them, unless --set says otherwise
        negatives = run.kd_negatives(block, home.root / lists.topk_dir(block), config.continual)
        for seed in (int(s) for s in args.seeds.split(",")):
            start = time.perf_counter()
            seeded = seeded_for_block(config.replace(distill=dataclasses.replace(config.distill, seed=seed)), block)
            validator = stream_validator(seeded.continual, {j: run.data(j).valid for j in range(block)}, data)
            result = distill_block(home.root / lists.topk_dir(block), data, seeded, run.teacher_dim, previous, progress=False,
                                   validator=validator, exclude_negatives=negatives)
            recalls = score(result.student, run, block, tests)
            print(row(f"{spec} | {seed}", recalls, f"{result.train.best_epoch}/{result.train.epochs_run}",
                      time.perf_counter() - start), flush=True)


def spec_run(home: Home, spec: str) -> Run:
    """The run `method:run-key` as it was pinned."""
    method, run_key = spec.split(":")
    return stored_run(home, method, run_key)


if __name__ == "__main__":
    main()
