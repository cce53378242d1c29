"""Does CCD's member update change what a member ranks on top, beyond its Recall? One member, block 1.

    .venv/bin/python bench/bench_ccd_member_lists.py --home bench/out/home-member-lists --member bpr-0

On the real Gowalla stream, CCD's teacher and the KD baseline's (plain fine-tuning) had the same
H-mean after block 5, yet a student distilled from CCD's lists was clearly worse. This script
isolates the member update: it trains one member on block 0 (reused when saved), updates it on
block 1 several ways from the same start and seed, and for each update reports

- valid Recall@20 on blocks 0 and 1 and their harmonic mean H (the member-level ablation's view);
- the mean L2 change of the rows of old users absent from block 1, who have no new data;
- a dim-8 student distilled *fresh* on block 1 from that member's own top-K lists (CCD's stage-4
  KD: RRD + IR-RRD, selection on blocks 0-1 valid): its valid Recall@20 on blocks 0 and 1 and H,
  i.e. how much a student learns from the lists.

Variants: `plain` (BPR: the KD baseline's update), `lwckd-all` (BPR + LWC-KD moving every
candidate, our earlier CCD), `lwckd` (LWC-KD moving only entities with block-1 pairs, the default
now), `lwckd-exclusion` (that plus the block-0 member's top-40 lists of old users never drawn as
negatives: the part of CCD's exclusion lists that needs no student; teacher replay stays off, as
in the runs it explains). State goes to `--home`; nothing else is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from bench_ccd_gowalla import DEFAULTS, GOWALLA
from bench_ccd_teacher_ablation import chosen_variants
from ccd.config import RunConfig
from ccd.continual import evaluation
from ccd.continual.distill_stage import distill_block
from ccd.continual.exclusion import cap, list_pairs
from ccd.continual.selection import stream_validator
from ccd.continual.teacher_update import update_member
from ccd.data import BlockData
from ccd.ensemble import USER_TOPK, read_topk, write_topk
from ccd.home import Home
from ccd.lake.ingest import ingest_folder
from ccd.lake.store import load_block_data
from ccd.models import Recommender
from ccd.models import io as model_io
from ccd.teacher import member_dir_name, train_member

# variant -> (LWC-KD and exclusion on, continual settings changed)
VARIANTS = {
    "plain": (False, False, {}),
    "lwckd-all": (True, False, {"lwckd_moves": "all"}),
    "lwckd": (True, False, {"lwckd_moves": "block"}),
    "lwckd-exclusion": (True, True, {"lwckd_moves": "block"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="state folder (the block-0 member is kept and reused)")
    parser.add_argument("--data", default=str(GOWALLA), help="folder of block_<K>.parquet files")
    parser.add_argument("--member", default="bpr-0")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    variants = chosen_variants(parser, args.variants, VARIANTS)
    torch.set_num_threads(args.threads)
    home = Home.resolve(args.home)
    config = RunConfig.load(None, DEFAULTS + ["continual.teacher_replay_weight=0"] + args.overrides)
    ingest_folder(home, args.data, config.lake)
    train_member(home, 0, args.member, config, progress=False)
    start = model_io.load(home.model_dir(0, member_dir_name(args.member)))
    data0, data1 = load_block_data(home, 0), load_block_data(home, 1)
    protected = previous_top_lists(start, data0, home.root / "bench" / "member-lists" / "block-0", config)
    idle = idle_users(data0, data1)
    with torch.no_grad():
        norm = float(start.user_emb[torch.as_tensor(idle)].norm(dim=1).mean())
    print(f"{len(idle)} block-0 users have no block-1 pair; their rows' mean L2 norm before the update: {norm:.4f}")
    print("| update of", args.member, "at block 1 | member valid 0 | valid 1 | H | idle users' row change "
          "| student valid 0 | valid 1 | H | member / student epochs | s |")
    print("|" + "---|" * 10, flush=True)
    for name in variants:
        clock = time.perf_counter()
        collaborative, exclusion, changes = VARIANTS[name]
        changed = config.replace(continual=dataclasses.replace(config.continual, **changes))
        member, result = update_member(start, data1, data0.train, changed, None, collaborative,
                                       protected if exclusion else None, start.config.seed * 1000 + 1, progress=False)
        topk_dir = home.root / "bench" / "member-lists" / name
        write_topk(member.score, data1.n_users, data1.n_items, data1.seen_train, topk_dir, config.teacher.top_k, config.teacher.top_k)
        validator = stream_validator(dataclasses.replace(config.continual, select_on="stream"), {0: data0.valid}, data1)
        student = distill_block(topk_dir, data1, config, teacher_dim=start.dim, progress=False, validator=validator)
        epochs = f"{result.best_epoch}/{result.epochs_run} / {student.train.best_epoch}/{student.train.epochs_run}"
        cells = [*harmonic(recalls(member, data0, data1)), idle_change(start, member, idle),
                 *harmonic(recalls(student.student, data0, data1))]
        print(f"| {name} | " + " | ".join(f"{x:.4f}" for x in cells) + f" | {epochs} | {time.perf_counter() - clock:.0f} |", flush=True)


def previous_top_lists(model: Recommender, data0: BlockData, out_dir: Path, config: RunConfig) -> np.ndarray:
    """Old users' top-40 items under the block-0 member (its own seen pairs excluded): CCD's
    `Run.protected` with this one member as the previous teacher."""
    write_topk(model.score, data0.n_users, data0.n_items, data0.seen_train, out_dir, config.teacher.top_k, config.teacher.top_k)
    ids, _ = read_topk(out_dir / USER_TOPK)
    return list_pairs(ids, cap(config.continual.exclude_top, data0.n_items), np.arange(data0.n_users))


def recalls(model: Recommender, data0: BlockData, data1: BlockData) -> list[float]:
    """Valid Recall@20 on blocks 0 and 1, every training pair so far excluded."""
    rows = evaluation.evaluate_block(model.score, 1, {0: data0.valid, 1: data1.valid}, data1.seen_train, data1.n_items)
    return [r["recall@20"] for r in rows]


def harmonic(pair: list[float]) -> list[float]:
    old, new = pair
    return [old, new, 2 * old * new / (old + new)]


def idle_users(data0: BlockData, data1: BlockData) -> np.ndarray:
    """Block-0 users with no block-1 training pair: only LWC-KD can move their rows."""
    return np.setdiff1d(np.unique(data0.train[:, 0]), data1.train[:, 0])


def idle_change(before: Recommender, after: Recommender, idle: np.ndarray) -> float:
    """Mean L2 distance between the old and new rows of the `idle` users."""
    rows = torch.as_tensor(idle)
    with torch.no_grad():
        return float((after.user_emb[rows] - before.user_emb[rows]).norm(dim=1).mean())


if __name__ == "__main__":
    main()
