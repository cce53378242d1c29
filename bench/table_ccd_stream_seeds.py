"""A method's student H per block over repeated streams, and its lead over a baseline's repeats.

One stream's student moves by up to 0.002 H at a block by chance, so a lead of that size is
shown only when it holds in every repeat of the stream (`continual.stream_seed`, each repeat
under its own run key, from the same block 0). The i-th run of `--runs` is paired with the i-th
of `--baseline`, which should share its stream seed:

    .venv/bin/python bench/table_ccd_stream_seeds.py --home bench/out/home-excl \\
        --runs "CCD=ccd:anchored-nolwc,ccd:anchored-nolwc-stream-1" --baseline "KD=kd:default,kd:stream-1"

Like plot_ccd_gowalla.py it only reads `reports/stream/<method>[/run=<key>]/metrics.json`,
written when a run finishes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable
from pathlib import Path

from ccd.continual.evaluation import hmean_points
from ccd.continual.state import Layout
from ccd.home import Home
from ccd.stages import DEFAULT_RUN_KEY

Series = dict[int, float]  # block -> H of Recall@20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--runs", required=True, help="LABEL=METHOD:KEY,METHOD:KEY,... one per stream seed")
    parser.add_argument("--baseline", required=True, help="LABEL=METHOD:KEY,... in the same stream order")
    args = parser.parse_args()

    label, streams = parse(args.runs)
    base_label, base_streams = parse(args.baseline)
    if len(streams) != len(base_streams):
        parser.error(f"{len(streams)} runs against {len(base_streams)} baseline runs: pair them stream by stream")
    home = Home(args.home)
    try:
        students = [read_series(home, run, "student") for run in streams]
        baselines = [read_series(home, run, "student") for run in base_streams]
        teachers = [read_series(home, run, "teacher") for run in streams]
        base_teachers = [read_series(home, run, "teacher") for run in base_streams]
    except FileNotFoundError as missing:
        parser.error(str(missing))
    blocks = sorted(set.intersection(*(set(s) for s in students + baselines)) - {0})
    print(f"| H (Recall@20) | {' | '.join(f'D{b}' for b in blocks)} |")
    print(f"|---|{'---|' * len(blocks)}")
    for name, runs, rows in ((f"{label} student", streams, students), (f"{base_label} student", base_streams, baselines),
                             (f"{label} teacher", streams, teachers), (f"{base_label} teacher", base_streams, base_teachers)):
        for run, series in zip(runs, rows):
            if series:
                print(f"| {name}, {run} | {cells(series[b] for b in blocks)} |")
    leads = [{b: mine[b] - theirs[b] for b in blocks} for mine, theirs in zip(students, baselines)]
    for i, lead in enumerate(leads):
        print(f"| lead over {base_label}, stream {i} | {cells((lead[b] for b in blocks), signed=True)} |")
    print(f"| mean lead | {cells((statistics.mean(l[b] for l in leads) for b in blocks), signed=True)} |")
    print(f"| smallest lead | {cells((min(l[b] for l in leads) for b in blocks), signed=True)} |")


def parse(spec: str) -> tuple[str, list[str]]:
    label, _, runs = (part.strip() for part in spec.partition("="))
    return label, [run.strip() for run in runs.split(",") if run.strip()]


def read_series(home: Home, run: str, side: str) -> Series:
    """H per block of `run`'s `side` ("student" or "teacher"; empty for a run with no teacher)."""
    method, _, run_key = run.partition(":")
    path = Layout(home, method, run_key or DEFAULT_RUN_KEY).report_dir / "metrics.json"
    if not path.exists():
        raise FileNotFoundError(f"no finished report for {run!r}: {path}")
    report = json.loads(path.read_text())
    return dict(hmean_points(report[side]["blocks"])) if report.get(side) else {}


def cells(values: Iterable[float], signed: bool = False) -> str:
    return " | ".join(f"{v:+.4f}" if signed else f"{v:.4f}" for v in values)


if __name__ == "__main__":
    main()
