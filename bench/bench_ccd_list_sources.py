"""How current each source of the members' exclusion lists is, block by block.

    .venv/bin/python bench/bench_ccd_list_sources.py --home bench/out/home-excl --run-key anchored

A CCD member never draws as a BPR negative an old user's top items under the previous teacher,
the proxies S_{k-1} and P_{k-1}, and the updated student CL_k (`continual.exclude_top` each).
A list that holds what the user liked blocks ago protects items the new block no longer
supports. For every block k this prints, per source, the share of block k's test pairs of old
users that fall in the source's top-k lists (recall@k of the list, recent training items
removed as the lists remove them), and the share of S's list that is in CL_k's. Reads a home where
`bench_ccd_gowalla.py --methods ccd` has run under `--run-key`; writes nothing.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench_ccd_teacher_ablation import stored_run
from ccd.continual.exclusion import list_pairs, top_pairs
from ccd.continual.updates import recent_items
from ccd.ensemble import USER_TOPK, read_topk
from ccd import stages
from ccd.home import Home
from ccd.stages import DEFAULT_RUN_KEY


def share_in(lists: np.ndarray, pairs: np.ndarray) -> float:
    """Share of `pairs` (user, item) found among `lists` (user, item)."""
    width = int(max(lists[:, 1].max(), pairs[:, 1].max())) + 1
    return float(np.isin(pairs[:, 0] * width + pairs[:, 1], lists[:, 0] * width + lists[:, 1]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--run-key", default=DEFAULT_RUN_KEY)
    parser.add_argument("--top", type=int, default=None, help="list length (default: the run's continual.exclude_top)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    home = Home.resolve(args.home)
    run = stored_run(home, "ccd", args.run_key)
    batch, top = run.config.train.eval_batch_users, args.top or run.config.continual.exclude_top
    print("| block | old users' test pairs | previous teacher | S_k-1 | P_k-1 | CL_k | S's list in CL_k's |")
    print("|---|---|---|---|---|---|---|")
    block = 1
    while stages.done_outputs(home, block, run.layout.stage("ensemble"), run.layout.run_keys) is not None:
        data, previous = run.data(block), run.data(block - 1)
        old = np.arange(previous.n_users)
        test = data.test[data.test[:, 0] < previous.n_users]
        recent = recent_items(data, previous.train, run.device)
        update = run.outputs(run.layout, block, "student-update")
        stability, plasticity, updated = (run.load(update[n]).eval() for n in ("proxy_s", "proxy_p", "updated_student"))
        ids, _ = read_topk(home.root / run.topk_dir(block - 1) / USER_TOPK)
        lists = [list_pairs(ids, top, old)] + [top_pairs(m.score, old, top, recent, batch, run.device)
                                               for m in (stability, plasticity, updated)]
        shares = " | ".join(f"{share_in(pairs, test):.4f}" for pairs in lists)
        print(f"| {block} | {len(test):,} | {shares} | {share_in(lists[3], lists[1]):.3f} |", flush=True)
        block += 1


if __name__ == "__main__":
    main()
