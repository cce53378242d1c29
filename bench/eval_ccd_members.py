"""Which teacher members carry a gap between two runs' ensembles: every member ranked on every test.

    .venv/bin/python bench/eval_ccd_members.py --home bench/out/home-ccd-gowalla-paper --block 5 \\
        --runs ccd:paper-e20,kd:paper-e20

Reads a home where `bench_ccd_gowalla.py` ran the given methods (under the given run keys)
through `--block`, loads each run's teacher members after that block, and ranks each alone on
the test splits of blocks 0..k (Recall@20, every training pair so far excluded). H is the
harmonic mean of block k's recall and the mean over the earlier blocks, the one-block analogue
of the paper's H. Nothing is written to the home.
"""

from __future__ import annotations

import argparse

import torch

from bench_ccd_seed_spread import spec_run
from bench_ccd_teacher_ablation import score
from ccd.evaluate import harmonic
from ccd.home import Home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--runs", required=True, help="comma list of method:run-key (methods that keep a teacher: ccd, kd)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    home, block = Home.resolve(args.home), args.block
    runs = [spec_run(home, spec) for spec in args.runs.split(",")]
    tests = {j: runs[0].data(j).test for j in range(block + 1)}
    print("| run | member | " + " | ".join(f"test {j}" for j in tests) + " | H |")
    print("|---|---|" + "---|" * (len(tests) + 1))
    for spec, run in zip(args.runs.split(","), runs):
        for name in run.members:
            recalls = score(run.load(run.member_path(block, name)), run, block, tests)
            h = harmonic(recalls[-1], sum(recalls[:-1]) / len(recalls[:-1]))
            print(f"| {spec} | {name} | " + " | ".join(f"{r:.4f}" for r in recalls) + f" | {h:.4f} |", flush=True)


if __name__ == "__main__":
    main()
