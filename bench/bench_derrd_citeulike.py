"""DE-RRD on CiteULike (leave-one-out, 499 sampled negatives): BPR teacher d=200, students d=20.

Reproduces the CiteULike/BPR rows of the paper's Table 2 (Teacher, Student, RD, DE, RRD,
DE-RRD; spec derrd.md §6) with `ccd.distill`'s losses and `Distiller`, under the authors'
training setup (spec §4–5) rather than `ccd.train`'s: BPR loss *summed* over batches of 1024
triples (the distillation terms are then the spec's sums, `Distiller.loss(batch) · B`), one
uniform negative per positive redrawn every epoch, Adam lr 1e-3 with coupled weight decay 1e-3 on
every trainable parameter (experts included), LOO validation every epoch, stop after
`--patience` epochs with no new best valid Hit@N for any N, and for each N the test metrics of
the epoch with the best valid Hit@N.

The teacher is trained once and saved under `<home>/bench/derrd-citeulike/teacher`; each method
writes `<method>.json` beside it, and the table is printed from every JSON there. A run saves its
whole state after every epoch (`<method>.checkpoint.pt`, removed when the JSON is written), so
the same command after a stop goes on from the last epoch with the same draws.

    .venv/bin/python bench/bench_derrd_citeulike.py --methods teacher            # ~ once
    .venv/bin/python bench/bench_derrd_citeulike.py --methods none,rd,de,rrd,de-rrd
    .venv/bin/python bench/bench_derrd_citeulike.py --report                     # table only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ccd.atomic import write_text, write_with
from ccd.config import RunConfig
from ccd.data import BlockData
from ccd.datasets.citeulike import load_citeulike
from ccd.distill.trainer import Distiller, TeacherSignal
from ccd.evaluate import loo_metrics
from ccd.home import Home
from ccd.models import Batch, BPRConfig, BPRMF
from ccd.models import io as model_io
from ccd.train import NegativeSampler, subnormals_flushed

KS = (5, 10, 20)
METRICS = [f"{m}@{k}" for k in KS for m in ("hit", "ndcg")]
ROWS = ["teacher", "none", "rd", "de", "rrd", "de-rrd", "rrd-ir", "de-rrd-ir"]
# Table 2, CiteULike/BPR, phi = 0.1 (spec derrd.md §6); RRD + IR-RRD from the IR-RRD paper's
# released log (H@5, N@5, N@20 only); nothing published combines DE with IR-RRD.
PAPER = {
    "teacher": (0.5135, 0.3970, 0.6185, 0.4310, 0.7099, 0.4541),
    "none": (0.4441, 0.3319, 0.5541, 0.3691, 0.6557, 0.3906),
    "rd": (0.4533, 0.3395, 0.5601, 0.3740, 0.6633, 0.3993),
    "de": (0.4817, 0.3625, 0.5916, 0.3977, 0.6917, 0.4229),
    "rrd": (0.4622, 0.3461, 0.5703, 0.3809, 0.6746, 0.4074),
    "de-rrd": (0.4843, 0.3632, 0.5966, 0.3989, 0.6991, 0.4251),
    "rrd-ir": (0.4947, 0.3747, None, None, None, 0.4263),
    "de-rrd-ir": (None,) * 6,
}


def fit(model: BPRMF, data, extension: Distiller | None, args: argparse.Namespace, device: torch.device,
        checkpoint: Path) -> dict:
    """The authors' loop; returns per-N best-valid test metrics, epochs and seconds per epoch.

    A run of several hundred epochs outlasts a working session on a CPU, so the whole loop state
    is saved to `checkpoint` after every epoch and a later call with the same settings goes on
    from there, drawing exactly what an uninterrupted run would.
    """
    params = [*model.parameters(), *(extension.parameters() if extension else [])]
    # fused: the same update, ~10x faster on CPU than the for-each Adam on millions of params.
    optimizer = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-3, fused=True)
    sampler = NegativeSampler(data.train, data.n_users, data.n_items, device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    pairs = torch.as_tensor(data.train, device=device)
    # One (B, n_items) matmul per chunk: cheaper than gathering (B, 500, d) candidate rows.
    score = lambda users: model.user_emb[users] @ model.item_emb.T
    loop = {"epoch": 0, "stopped": False, "stale": 0, "seconds": [],
            "best": {k: (-1.0, 0, {}) for k in KS}}  # best: N -> (valid hit@N, epoch, test metrics then)
    if checkpoint.exists():
        loop = resume(checkpoint, model, extension, optimizer, generator, args)
    best, stale, seconds = loop["best"], loop["stale"], loop["seconds"]
    epochs = range(loop["epoch"] + 1, 0 if loop["stopped"] else args.max_epochs + 1)
    bar = tqdm(epochs, desc=args.label, unit="epoch", file=sys.stderr, mininterval=10, initial=loop["epoch"], total=args.max_epochs)
    epoch = loop["epoch"]
    for epoch in bar:
        # --- one epoch: summed BPR (+ the spec's summed distillation terms) per batch of 1024
        tick = time.perf_counter()
        if extension is not None:
            extension.start_epoch(epoch)
        shuffled = pairs[torch.randperm(len(pairs), generator=generator, device=device)]
        negatives = sampler.sample(shuffled[:, 0], generator)
        with subnormals_flushed():
            for batch, neg in zip(shuffled.split(1024), negatives.split(1024)):
                users, pos = batch[:, 0], batch[:, 1]
                margin = (model.user_emb[users] * (model.item_emb[pos] - model.item_emb[neg])).sum(1)
                loss = -F.logsigmoid(margin).sum()
                if extension is not None:
                    loss = loss + extension.loss(Batch(users, pos, neg, generator)) * len(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        seconds.append(time.perf_counter() - tick)

        # --- LOO validation; keep the test metrics of the best epoch for each N
        with torch.no_grad():
            valid = loo_metrics(score, data.valid, data.valid_candidates, KS, device=device)
            better = [k for k in KS if valid[f"hit@{k}"] > best[k][0]]
            if better:  # test only when some N has a new best: it is only ever read then
                test = loo_metrics(score, data.test, data.test_candidates, KS, device=device)
        for k in better:
            best[k] = (valid[f"hit@{k}"], epoch, test)
        improved = bool(better)
        stale = 0 if improved else stale + 1
        bar.set_postfix(v_h5=f"{valid['hit@5']:.4f}", t_h5=f"{best[5][2]['hit@5']:.4f}", best=best[5][1])
        loop = {"epoch": epoch, "stopped": stale >= args.patience, "stale": stale, "seconds": seconds, "best": best}
        save_checkpoint(checkpoint, loop, model, extension, optimizer, generator, args)
        if loop["stopped"]:
            break
    bar.close()
    return {
        "test": {m: best[k][2][m] for k in KS for m in (f"hit@{k}", f"ndcg@{k}")},
        "best_epochs": {f"hit@{k}": best[k][1] for k in KS},
        "epochs": epoch,
        "stopped_early": stale >= args.patience,
        "seconds_per_epoch": float(np.mean(seconds)),
    }


def settings_of(args: argparse.Namespace, device: torch.device) -> dict:
    """What a checkpoint must agree on to be continued: the device too, since a CPU and a CUDA
    generator keep different random streams (their states do not even have the same size)."""
    keys = ("label", "seed", "split_seed", "patience", "max_epochs", "overrides", "teacher_dim", "student_dim")
    return {**{k: getattr(args, k) for k in keys}, "device": device.type}


def save_checkpoint(path: Path, loop: dict, model: BPRMF, extension: Distiller | None, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, args: argparse.Namespace) -> None:
    """Atomically save everything the next epoch depends on: weights, Adam moments, both random streams."""
    state = {"settings": settings_of(args, model.user_emb.device), "loop": loop, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "generator": generator.get_state()}
    if extension is not None:
        state.update(experts=extension.experts.state_dict(), extension_generator=extension.generator.get_state())
    write_with(path, lambda tmp: torch.save(state, tmp))


def resume(path: Path, model: BPRMF, extension: Distiller | None, optimizer: torch.optim.Optimizer,
           generator: torch.Generator, args: argparse.Namespace) -> dict:
    """Load a checkpoint written by `save_checkpoint` into the given objects; its loop state."""
    state = torch.load(path, map_location=model.user_emb.device, weights_only=False)
    if {"device": "cpu", **state["settings"]} != settings_of(args, model.user_emb.device):  # older ones: CPU
        raise SystemExit(f"{path} was written with other settings ({state['settings']}); delete it to start over")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"].cpu())  # map_location moved the ByteTensor state too
    if extension is not None:
        extension.experts.load_state_dict(state["experts"])
        extension.generator.set_state(state["extension_generator"].cpu())
    print(f"{args.label}: resumed after epoch {state['loop']['epoch']} from {path}", file=sys.stderr)
    return state["loop"]


def teacher_model(data, out: Path, args: argparse.Namespace, device: torch.device) -> BPRMF:
    """Load the saved teacher, or train and save it (with its report as `teacher.json`)."""
    folder = out / "teacher"
    if (folder / model_io.META).exists():
        return model_io.load(folder, device)
    model = BPRMF(BPRConfig(dim=args.teacher_dim, seed=args.seed), data.n_users, data.n_items).to(device)
    args.label = f"teacher d={args.teacher_dim}"
    report = fit(model, data, None, args, device, out / "teacher.checkpoint.pt")
    report.update(method="teacher", dim=args.teacher_dim, params=model.parameter_count(), command=" ".join(sys.argv))
    model_io.save(model, folder, {"bench": report})
    write_text(out / "teacher.json", json.dumps(report, indent=2) + "\n")
    (out / "teacher.checkpoint.pt").unlink()
    return model


def run_method(method: str, data, teacher: BPRMF | None, out: Path, args: argparse.Namespace, device: torch.device) -> dict:
    config = RunConfig.load(None, [f"distill.method={method}", f"distill.student_dim={args.student_dim}", *args.overrides]).distill
    block = BlockData(0, data.n_users, data.n_items, data.train, data.valid, data.test, np.zeros((0, 2), np.int64))
    student = BPRMF(BPRConfig(dim=args.student_dim, seed=args.seed), data.n_users, data.n_items).to(device)
    extension = None
    if method != "none":
        signal = TeacherSignal.from_model(teacher, block, config, device=device)
        extension = Distiller(student, signal, block.seen_train, config, device, len(block.train))
    args.label = f"{method} d={args.student_dim}"
    report = fit(student, data, extension, args, device, out / f"{method}.checkpoint.pt")
    report.update(method=method, dim=args.student_dim, params=student.parameter_count(), config=vars(config), command=" ".join(sys.argv))
    write_text(out / f"{method}.json", json.dumps(report, indent=2) + "\n")
    (out / f"{method}.checkpoint.pt").unlink()
    return report


def table(out: Path) -> str:
    """Markdown table of every `<method>.json` in `out`, ours beside the paper's."""
    lines = ["| method | dim | epochs (best H@5) | s/epoch | " + " | ".join(f"{m} ours / paper" for m in METRICS) + " |"]
    lines.append("|" + "---|" * (4 + len(METRICS)))
    for method in ROWS:
        path = out / f"{method}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        paper = PAPER[method]
        cells = [f"{r['test'][m]:.4f} / {'-' if paper[i] is None else f'{paper[i]:.4f}'}" for i, m in enumerate(METRICS)]
        epochs = f"{r['epochs']} ({r['best_epochs']['hit@5']}){'' if r['stopped_early'] else ' capped'}"
        lines.append(f"| {method} | {r['dim']} | {epochs} | {r['seconds_per_epoch']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=None, help="state folder (default: $CCD_HOME, else ./.ccd)")
    parser.add_argument("--methods", default="teacher,none,rd,de,rrd,de-rrd", help="comma list of teacher and distill methods")
    parser.add_argument("--report", action="store_true", help="only print the table of the saved results")
    parser.add_argument("--teacher-dim", type=int, default=200)
    parser.add_argument("--student-dim", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="model init and sampling seed")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the 499 LOO candidates")
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="distill.KEY=VALUE")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    out = Home.resolve(args.home).root / "bench" / "derrd-citeulike"
    if args.report:
        print(table(out))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_citeulike(seed=args.split_seed)
    methods = args.methods.split(",")
    # "none" needs no teacher, so it can run while the teacher still trains.
    teacher = teacher_model(data, out, args, device) if set(methods) - {"none"} else None
    for method in [m for m in methods if m != "teacher"]:
        report = run_method(method, data, teacher, out, args, device)
        print(json.dumps({k: report[k] for k in ("method", "test", "epochs", "seconds_per_epoch")}), flush=True)
    print(table(out))


if __name__ == "__main__":
    main()
