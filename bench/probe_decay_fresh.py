"""A fresh BPR-MF trained on one stored block under each `train.decay_on` regime: whether the
authors' weight decay (Adam's, on every row, against summed losses) still lets a model learn.

    .venv/bin/python bench/probe_decay_fresh.py --home bench/out/home-ccd-gowalla --block 0 --regimes all,batch

Prints valid Recall@20 at every evaluated epoch and the seconds each regime took.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from ccd.config import TrainConfig
from ccd.home import Home
from ccd.lake.store import load_block_data
from ccd.models import BPRConfig, build_model
from ccd.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--block", type=int, default=0)
    parser.add_argument("--regimes", default="all,batch", help="train.decay_on values, comma-separated")
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_block_data(Home(args.home), args.block)
    for decay_on in args.regimes.split(","):
        model = build_model(BPRConfig(dim=args.dim), data.n_users, data.n_items)
        config = dataclasses.replace(TrainConfig(), decay_on=decay_on, max_epochs=args.epochs, min_epochs=0,
                                     patience=args.epochs, device="cpu")
        start = time.perf_counter()
        result = train(model, data, config, progress=False)
        curve = [(r["epoch"], round(r["valid"]["recall@20"], 4)) for r in result.history if "valid" in r]
        print(f"decay_on={decay_on}: valid Recall@20 by epoch {curve}, {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
