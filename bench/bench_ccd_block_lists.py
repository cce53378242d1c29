"""Which term of CCD's member update makes its lists teach better or worse: one whole block.

    .venv/bin/python bench/bench_ccd_block_lists.py --home bench/out/home-excl --block 5 \\
        --start ccd:plain --anchors kd:default --variants lwckd,lists --seeds 0,1,2

The anchored form of the stream (`continual.teacher_update = "anchored"`) updates every member
of block k from a BPR-only anchor, KD's member after k-1. This script does that one block
several ways, all from the same anchors (`--anchors`' members after k-1) with the same seeds:
for each variant it updates every member on block k, builds the ensemble's top-K lists, and
distils block k's student from them, starting from the same student (`--start`'s CL_k or
D_{k-1}, with that run's exclusion lists of stage 4) with each of `--seeds`. The sources of the
collaborative terms (S_{k-1}, P_{k-1}, CL_k) are `--start`'s, the previous teacher's lists
`--anchors`'. So a gap between two variants is the member update's alone, not the stream's
history, at a fraction of a stream's cost (the members, the lists and one distillation per seed).

Variants (teacher replay off in each, as in the anchored runs): `plain` (BPR alone: KD's
update), `lwckd` (BPR + LWC-KD), `lists` (BPR with the exclusion lists), `both` (BPR + LWC-KD +
the lists). `--set` changes a setting for every variant. Reported: the ensemble's one-block H
and each seed's student H (block k's Recall@20 against the mean of the earlier blocks', test
splits). The lists go to `<home>/bench/block-lists/<run>/`; nothing else is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from bench_ccd_seed_spread import spec_run
from bench_ccd_teacher_ablation import chosen_variants, one_block_h, score
from ccd.config import RunConfig
from ccd.continual.distill_stage import distill_block
from ccd.continual.loop import Run, seeded_for_block
from ccd.continual.pinned_config import run_settings
from ccd.continual.selection import stream_validator
from ccd.continual.teacher_update import MemberSources, update_member
from ccd.ensemble import Ensemble, write_topk
from ccd.home import Home
from ccd.models import Recommender

# variant -> (collaborative, changes to the continual settings)
VARIANTS = {
    "plain": (False, {}),
    "lwckd": (True, {"teacher_replay_weight": 0.0, "teacher_exclusion_lists": False}),
    "lists": (True, {"teacher_replay_weight": 0.0, "lwckd_weight": 0.0}),
    "both": (True, {"teacher_replay_weight": 0.0}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--start", default="ccd:plain", help="method:run-key whose student, proxies and CL_k are used")
    parser.add_argument("--anchors", default="kd:default", help="method:run-key whose members after k-1 are updated")
    parser.add_argument("--variants", default="lwckd,lists")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    variants = chosen_variants(parser, args.variants, VARIANTS)
    if args.block < 1:
        parser.error(f"--block must be >= 1, got {args.block}")
    torch.set_num_threads(args.threads)
    home, block = Home.resolve(args.home), args.block
    start, anchors = spec_run(home, args.start), spec_run(home, args.anchors)
    config = run_settings(home, start.run_key, RunConfig.named(None, args.overrides))
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"| variant | teacher H | student H, seeds {' / '.join(map(str, seeds))} | mean | s |")
    print("|---|---|---|---|---|", flush=True)
    for name in variants:
        clock = time.perf_counter()
        collaborative, changes = VARIANTS[name]
        changed = config.replace(continual=dataclasses.replace(config.continual, **changes))
        members = [updated_member(start, anchors, block, member, changed, collaborative) for member in start.members]
        topk_dir = home.root / "bench" / "block-lists" / f"{name}-block-{block}"
        teacher_h = write_lists(Ensemble(members, config.teacher.rank_exponent), start, block, topk_dir, config)
        students = [student_h(start, block, topk_dir, config, seed) for seed in seeds]
        print(f"| {name} | {teacher_h:.4f} | {' / '.join(f'{h:.4f}' for h in students)} | "
              f"{statistics.mean(students):.4f} | {time.perf_counter() - clock:.0f} |", flush=True)


def updated_member(start: Run, anchors: Run, block: int, name: str, config: RunConfig, collaborative: bool) -> Recommender:
    """Member `name` of block k: `anchors`' member after k-1 updated on block k as the variant says."""
    previous = anchors.load(anchors.member_path(block - 1, name))
    data, c = start.data(block), config.continual
    sources, protected = None, None
    if collaborative:
        update = start.outputs(start.layout, block, "student-update")
        sources = MemberSources(list(zip(start.proxies(block), (c.teacher_stability_samples, c.teacher_plasticity_samples))),
                                (start.load(update["updated_student"]), c.teacher_student_samples))
        protected = anchors.protected(block)
    model, _ = update_member(previous, data, start.data(block - 1).train, config, sources, collaborative, protected,
                             anchors.seed(block, previous.config.seed), progress=False)
    return model.eval()


def write_lists(ensemble: Ensemble, run: Run, block: int, topk_dir: Path, config: RunConfig) -> float:
    """Write the ensemble's top-K lists of block k and return its one-block H."""
    data, k = run.data(block), config.teacher.top_k
    write_topk(ensemble.score, data.n_users, data.n_items, data.seen_train, topk_dir, k, k, config.train.eval_batch_users, run.device)
    return one_block_h(score(ensemble, run, block, {j: run.data(j).test for j in range(block + 1)}))


def student_h(run: Run, block: int, topk_dir: Path, config: RunConfig, seed: int) -> float:
    """Block k's student distilled from `topk_dir` with `seed`, from `run`'s own start (as its stage 4)."""
    data = run.data(block)
    seeded = seeded_for_block(config.replace(distill=dataclasses.replace(config.distill, seed=seed)), block)
    validator = stream_validator(seeded.continual, {j: run.data(j).valid for j in range(block)}, data)
    result = distill_block(topk_dir, data, seeded, run.teacher_dim, run.load(run.distill_start(block)), progress=False,
                           validator=validator, exclude_negatives=run.kd_negatives(block, topk_dir, config.continual))
    return one_block_h(score(result.student, run, block, {j: run.data(j).test for j in range(block + 1)}))


if __name__ == "__main__":
    main()
