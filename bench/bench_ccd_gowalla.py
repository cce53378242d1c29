"""CCD against every baseline on the Gowalla stream (six blocks), with timings per stage.

    .venv/bin/python bench/bench_ccd_gowalla.py --home /tmp/ccd_gowalla --threads 1
    .venv/bin/python bench/bench_ccd_gowalla.py --data data/sample --home /tmp/ccd_sample \\
        --set teacher.members='["bpr:64x2","lightgcn:64"]' --set distill.student_dim=8

Ingests the blocks into the home (a no-op when they are there), runs `ccd.continual.loop.
run_stream` for each method in turn (block 0 is computed once and shared; finished stages are
skipped, so an interrupted benchmark resumes), and prints markdown tables for
docs/benchmarks.md. Another setting is compared under a new `--run-key` from `--from-block 1`,
reusing block 0 (and the default run's report is left as it is). KD's teacher does not depend on
its student, so a key that changes only student settings can take KD's finished teacher stages
(members, ensemble) from another key with `--kd-teacher-from KEY` instead of recomputing the
same models (their ledger records are copied; refused when a teacher setting differs):

- student H-mean (Recall@20) after every block, and LA / RA / H (Recall@20, NDCG@20) at the end,
  per method; the teacher's for the methods that keep one (ccd, kd);
- CCD's student lead over every other method's student per block (target: positive at D5 and
  growing over the blocks);
- parameters of the student and the teacher, their ratio, and the student's share of the
  teacher's H-mean (targets: ratio <= 1/20, share >= 90%);
- seconds per stage and block (wall and process CPU; CPU is the steady measure on a shared
  machine) and one full CCD cycle per block;
- the process's peak resident memory.

The whole result is also written to `<home>/reports/stream/bench_ccd.json` (`bench_ccd-<run key>.json`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from ccd import stages
from ccd.atomic import write_text
from ccd.config import RunConfig
from ccd.continual import evaluation
from ccd.continual.loop import run_stream
from ccd.continual.pinned_config import pin_config, pin_path, pinned_settings, run_settings
from ccd.continual.state import METHODS
from ccd.continual.updates import update_config
from ccd.home import Home
from ccd.lake.ingest import ingest_folder
from ccd.models import parse_members
from ccd.teacher import TEACHER

ROOT = Path(__file__).resolve().parents[1]
GOWALLA = ROOT.parent / "shared" / "datasets" / "gowalla"
# The CPU-sized defaults of this benchmark; every one can be overridden with --set.
DEFAULTS = [
    "teacher.members=[\"bpr:64x2\",\"lightgcn:64\"]",  # 192 teacher dims vs a dim-8 student: 1/24 of the parameters
    "distill.student_dim=8",
    "distill.student_kind=bpr",
    "train.eval_every=5",  # a full ranking of ~20k users costs more than an epoch on CPU
    "train.patience=4",
    "train.max_epochs=60",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(GOWALLA), help="folder of block_<K>.parquet files")
    parser.add_argument("--home", required=True, help="state folder (kept: re-runs resume)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, CCD first")
    parser.add_argument("--blocks", type=int, default=None, help="use blocks 0..N-1 (default all)")
    parser.add_argument("--run-key", default="default", help="a new key trains under new settings, reusing earlier blocks")
    parser.add_argument("--from-block", type=int, default=0, help="first block to run (earlier ones are read, not re-run)")
    parser.add_argument("--kd-teacher-from", default=None, metavar="RUN_KEY",
                        help="kd: reuse this key's finished teacher stages (same teacher settings)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    home = Home.resolve(args.home)
    if args.kd_teacher_from and not pin_path(home, args.kd_teacher_from).exists():
        raise SystemExit(f"--kd-teacher-from: no run key {args.kd_teacher_from!r} in {home.root} (see its runs/ folder)")
    # As `ccd stream` reads them: the run key's pinned settings with what is named here on top.
    config = run_settings(home, args.run_key, RunConfig.named(None, DEFAULTS + args.overrides))

    start = time.perf_counter()
    ingest_folder(home, args.data, config.lake)
    print(f"ingest: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    results, timings = {}, {}
    for method in args.methods.split(","):
        clock = StageClock()
        last = None if args.blocks is None else args.blocks - 1
        if method == "kd" and args.kd_teacher_from:
            share_kd_teacher(home, config, args.kd_teacher_from, args.run_key, args.from_block, last)
        results[method] = run_stream(home, method, config, last, args.run_key, args.from_block, progress=False, callback=clock)
        timings[method] = clock.rows
        print(f"{method}: done", file=sys.stderr)
    process = {"command": sys.argv, "methods": list(results), "device": str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
               "threads": torch.get_num_threads(), "peak_rss_mib": peak_rss_mib()}
    name = "bench_ccd.json" if args.run_key == "default" else f"bench_ccd-{args.run_key}.json"
    write_summary(home.reports / "stream" / name, {"config": config.to_dict(), "results": results, "timings": timings}, process)
    print(markdown(results, timings))
    print(f"\nPeak resident memory of this process: {process['peak_rss_mib']:,.0f} MiB")


# What KD's teacher update reads (`teacher_update.update_member` without the collaborative terms,
# then the ensemble): keys that agree on these train the same teacher. Its training settings are
# `update_config`'s, i.e. `train` with the continual section's epochs, lr and batch size.
KD_TEACHER_CONTINUAL = ("init", "init_k")


def share_kd_teacher(home: Home, config: RunConfig, source_key: str, run_key: str, first: int, last: int | None) -> None:
    """Copy `source_key`'s finished KD teacher stages (members, ensemble) of blocks first..last to
    `run_key`'s ledger, after checking that no setting of KD's teacher differs."""
    differ = kd_teacher_differences(config, run_settings(home, source_key, {}))
    if differ:
        raise SystemExit(f"--kd-teacher-from {source_key}: teacher settings differ: {', '.join(differ)}")
    pin_config(home, run_key, config)  # a key that refuses these settings gets no copied records
    members = [name for name, _ in parse_members(config.teacher)]
    names = [f"kd-{TEACHER}-{name}" for name in members] + ["kd-ensemble"]
    block = max(first, 1)
    while last is None or block <= last:
        records = [stages.get(home, block, stage, source_key) for stage in names]
        if not all(record is not None and record.status == "done" for record in records):
            break  # from here on the run trains its own teacher
        for stage, record in zip(names, records):
            stages.run_stage(home, block, stage, lambda outputs=record.outputs: outputs, run_key)
        block += 1
    taken = f"blocks {max(first, 1)}..{block - 1}" if block > max(first, 1) else "none"
    print(f"kd: teacher stages taken from run key {source_key!r}: {taken}", file=sys.stderr)


def kd_teacher_differences(mine: RunConfig, theirs: RunConfig) -> list[str]:
    """The settings of KD's teacher update that differ between two runs' configs."""
    ours, other = pinned_settings(mine), pinned_settings(theirs)
    keys = [("teacher", key) for key in ours["teacher"]] + [("continual", key) for key in KD_TEACHER_CONTINUAL]
    differ = [f"{section}.{key}" for section, key in keys if ours[section][key] != other[section][key]]
    update, their_update = dataclasses.asdict(update_config(mine)), dataclasses.asdict(update_config(theirs))
    return differ + [f"the update's train.{key}" for key in update if update[key] != their_update[key]]


def write_summary(path: Path, summary: dict[str, Any], process: dict[str, Any]) -> None:
    """Write `summary`, merged into an earlier one under the same key: methods are often
    benchmarked by separate processes, and a resumed process times only the stages it ran. So
    results are kept per method, timings per (method, block, stage), and each process's command,
    threads and peak memory are appended to `processes`."""
    before = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    summary["results"] = {**before.get("results", {}), **summary["results"]}
    timings = before.get("timings", {})
    for method, rows in summary["timings"].items():
        timed = {(row["block"], row["stage"]) for row in rows}
        kept = [row for row in timings.get(method, []) if (row["block"], row["stage"]) not in timed]
        timings[method] = sorted(kept + rows, key=lambda row: row["block"])
    summary["timings"] = timings
    summary["processes"] = [*before.get("processes", []), process]
    write_text(path, json.dumps(summary, indent=2, default=str) + "\n")


def peak_rss_mib() -> float:
    """The process's peak resident set (Linux reports ru_maxrss in KiB): the figure that shows
    whether memory grows with users x items or stays within chunks."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StageClock:
    """Stage callback recording wall and process-CPU seconds of every stage that ran now."""

    def __init__(self) -> None:
        self.started: dict[tuple[int, str], tuple[float, float]] = {}
        self.rows: list[dict[str, Any]] = []

    def __call__(self, stage: str, info: dict[str, Any]) -> None:
        key = (info["block"], stage)
        if info["event"] == "start":
            self.started[key] = (time.perf_counter(), time.process_time())
            print(f"block {info['block']} {stage} ...", file=sys.stderr, flush=True)
        elif info["event"] == "done":
            wall, cpu = self.started.pop(key)
            row = {"block": info["block"], "stage": stage, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
            self.rows.append(row)
            print(f"block {info['block']} {stage}: {row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} s CPU", file=sys.stderr, flush=True)


def markdown(results: dict[str, dict[str, Any]], timings: dict[str, list[dict[str, Any]]]) -> str:
    lines = []
    blocks = max(len(r["blocks"]) for r in results.values())
    columns = ["method"] + [f"H D{k}" for k in range(1, blocks)] + ["LA R@20", "RA R@20", "H R@20", "H N@20"]
    head = "| " + " | ".join(columns) + " |"
    lines += ["Student (served model) H-mean of LA and RA after each block, Recall@20:", "", head,
              "|" + "---|" * (blocks + 4)]
    for side in ("student", "teacher"):
        for method, result in results.items():
            part = result.get(side)
            if not part:
                continue
            rows = part["blocks"]
            hs = [f"{r['summary']['recall@20']['H']:.4f}" if r["summary"] else "-" for r in rows[1:]]
            name = method if side == "student" else f"{method} (teacher)"
            lines.append(f"| {name} | " + " | ".join(hs + _final_cells(rows[-1]["summary"])) + " |")
    lines += _lead_lines(results)
    if "ccd" in results and results["ccd"].get("teacher") and results["ccd"]["student"]["blocks"][-1]["summary"]:
        ccd = results["ccd"]
        s, t = ccd["student"], ccd["teacher"]
        share = s["blocks"][-1]["summary"]["recall@20"]["H"] / t["blocks"][-1]["summary"]["recall@20"]["H"]
        lines += ["", f"Parameters: student {s['params']:,}, teacher {t['params']:,} (ratio 1/{t['params'] / s['params']:.1f}); "
                      f"CCD student keeps {share:.1%} of the teacher's final H-mean (Recall@20)."]
    for method, rows in timings.items():
        if not rows:
            continue
        per_stage: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
        for row in rows:
            per_stage[row["stage"]][row["block"]] = (row["wall_s"], row["cpu_s"])
        done_blocks = sorted({row["block"] for row in rows})
        lines += ["", f"Seconds per stage, {method} (wall / CPU):", "",
                  "| stage | " + " | ".join(f"block {b}" for b in done_blocks) + " |", "|" + "---|" * (len(done_blocks) + 1)]
        for stage, cells in per_stage.items():
            lines.append(f"| {stage} | " + " | ".join(
                f"{cells[b][0]:.1f} / {cells[b][1]:.1f}" if b in cells else "" for b in done_blocks) + " |")
        total = lambda b, key: sum(r[key] for r in rows if r["block"] == b)
        lines.append("| **all stages** | " + " | ".join(f"**{total(b, 'wall_s'):.1f} / {total(b, 'cpu_s'):.1f}**" for b in done_blocks) + " |")
    return "\n".join(lines)


def _lead_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """CCD's student H minus each other method's, per block (the paper's "gain" figures)."""
    leads = evaluation.ccd_leads(results)
    if not leads:
        return []
    blocks = [b for b, _ in evaluation.hmean_points(results["ccd"]["student"]["blocks"])]
    lines = ["", "CCD student's H-mean lead over each method's student, Recall@20:", "",
             "| over | " + " | ".join(f"D{b}" for b in blocks) + " |", "|" + "---|" * (len(blocks) + 1)]
    for method, points in leads.items():
        by_block = dict(points)
        lines.append(f"| {method} | " + " | ".join(f"{by_block[b]:+.4f}" if b in by_block else "-" for b in blocks) + " |")
    return lines


def _final_cells(final: dict[str, Any] | None) -> list[str]:
    """LA, RA, H of Recall@20 and H of NDCG@20 after the last block; dashes before RA exists
    (block 0, or block 1 when block 0 does not count)."""
    if final is None:
        return ["-"] * 4
    return [f"{final['recall@20'][key]:.4f}" for key in ("LA", "RA", "H")] + [f"{final['ndcg@20']['H']:.4f}"]


if __name__ == "__main__":
    main()
