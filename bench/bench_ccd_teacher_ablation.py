"""Which part of CCD's collaborative teacher update helps or hurts: one member, one block.

    .venv/bin/python bench/bench_ccd_teacher_ablation.py --home bench/out/home-ccd-gowalla --block 2 --member bpr-0

Reads a home where `bench_ccd_gowalla.py --methods ccd` has run through `--block` under
`--run-key` (it needs the member's CCD state after block k-1 and block k's student-update
outputs), with that run's pinned settings (`--set` changes them for every variant), then updates that
member on block k several ways, all from the same start and seed, and ranks each result on the
valid (default; choose settings there) or test splits of blocks 0..k (Recall@20, every training
pair so far excluded). H is the harmonic mean of block k's recall and the mean over blocks
0..k-1: the one-block analogue of the paper's H of LA and RA (which needs every earlier block's
model). Nothing is written to the home.

Variants: `plain` (BPR only: the KD baseline's update), `lwckd` (BPR + LWC-KD), `exclusion`
(BPR with the exclusion lists), `replay` (BPR + replay + exclusion lists), `full` (CCD's update),
`full-bpr` (replay in the BPR form, `continual.teacher_replay_form`), `full-proxies` (replay
from S and P only, not the updated student), `full-idle` (replay only for old users without
pairs in the block, `continual.teacher_replay_users`), and `full-replay-<w>` for each `--replay-weights`.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from ccd.config import RunConfig
from ccd.continual import evaluation
from ccd.continual.loop import Run
from ccd.continual.pinned_config import pin_path, run_settings
from ccd.continual.teacher_update import MemberSources, update_member
from ccd.continual.updates import grown
from ccd.home import Home
from ccd.stages import DEFAULT_RUN_KEY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--run-key", default=DEFAULT_RUN_KEY, help="the CCD run whose states and settings are read")
    parser.add_argument("--block", type=int, default=2)
    parser.add_argument("--member", default="bpr-0")
    parser.add_argument("--variants", default="plain,lwckd,exclusion,replay,full")
    parser.add_argument("--replay-weights", default="", help="comma list: extra full updates with these replay weights")
    parser.add_argument("--split", choices=("valid", "test"), default="valid")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a setting changed in every variant (on top of the CCD run's own)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    home = Home.resolve(args.home)
    run = stored_run(home, "ccd", args.run_key)
    config = run_settings(home, args.run_key, RunConfig.named(None, args.overrides))  # --set changes every variant
    block, c = args.block, config.continual
    data, previous = run.data(block), run.load(run.member_path(block - 1, args.member))
    update = run.outputs(run.layout, block, "student-update")
    proxies = [(run.load(update["proxy_s"]), c.teacher_stability_samples),
               (run.load(update["proxy_p"]), c.teacher_plasticity_samples)]
    sources = MemberSources(proxies, (run.load(update["updated_student"]), c.teacher_student_samples))
    splits = {j: getattr(run.data(j), args.split) for j in range(block + 1)}
    # variant -> (replay sources, exclusion lists on, changes to the continual settings)
    variants = {
        "plain": None,
        "lwckd": (None, False, {}),
        "exclusion": (sources, True, {"lwckd_weight": 0.0, "teacher_replay_weight": 0.0}),
        "replay": (sources, True, {"lwckd_weight": 0.0}),
        "full": (sources, True, {}),
        "full-bpr": (sources, True, {"teacher_replay_form": "bpr"}),
        "full-proxies": (MemberSources(proxies, None), True, {}),
        "full-idle": (sources, True, {"teacher_replay_users": "idle"}),
    }
    chosen = {name: variants[name] for name in args.variants.split(",") if name}
    for weight in filter(None, args.replay_weights.split(",")):
        chosen[f"full-replay-{weight}"] = (sources, True, {"teacher_replay_weight": float(weight)})

    print(f"| {args.member} at block {block} | " + " | ".join(f"R@20 {args.split} {j}" for j in splits) + " | H | epochs | s |")
    print("|" + "---|" * (len(splits) + 4))
    print(row("before (k-1 state, grown)", score(grown(previous, data, config), run, block, splits), "-", 0.0), flush=True)
    for name, setting in chosen.items():
        start = time.perf_counter()
        seed = previous.config.seed * 1000 + block
        if setting is None:
            model, result = update_member(previous, data, run.data(block - 1).train, config, None, False, None, seed, progress=False)
        else:
            replay_sources, exclusion, changes = setting
            changed = dataclasses.replace(config, continual=dataclasses.replace(c, **changes))
            model, result = update_member(previous, data, run.data(block - 1).train, changed, replay_sources, True,
                                          run.protected(block) if exclusion else None, seed, progress=False)
        print(row(name, score(model, run, block, splits), f"{result.best_epoch}/{result.epochs_run}", time.perf_counter() - start), flush=True)


def chosen_variants(parser: argparse.ArgumentParser, names: str, known: dict) -> list[str]:
    """The comma list `names`, each a key of `known`; anything else is a usage error."""
    chosen = [name for name in names.split(",") if name]
    unknown = set(chosen) - set(known)
    if unknown:
        parser.error(f"unknown variants {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    return chosen


def stored_run(home: Home, method: str, run_key: str) -> Run:
    """`method`'s run under `run_key` with the settings it was pinned with; an unknown key is an
    error, not a new run (a new key would pin itself into the home)."""
    if not pin_path(home, run_key).exists():
        raise SystemExit(f"no run key {run_key!r} in {home.root} (see its runs/ folder)")
    return Run(home, method, run_settings(home, run_key, {}), run_key, progress=False)


def score(model, run: Run, block: int, splits: dict[int, np.ndarray]) -> list[float]:
    data = run.data(block)
    rows = evaluation.evaluate_block(model.score, block, splits, data.seen_train, data.n_items)
    return [r["recall@20"] for r in rows]


def row(name: str, recalls: list[float], epochs: str, seconds: float) -> str:
    """Table row of the blocks' recalls and their `one_block_h`."""
    return f"| {name} | " + " | ".join(f"{r:.4f}" for r in recalls) + f" | {one_block_h(recalls):.4f} | {epochs} | {seconds:.0f} |"


def one_block_h(recalls: list[float]) -> float:
    """The harmonic mean of the new block's recall (the last) and the old blocks' mean: the
    one-block analogue of the paper's H of LA and RA."""
    new, old = recalls[-1], float(np.mean(recalls[:-1]))
    return 2 * new * old / (new + old)


if __name__ == "__main__":
    main()
