"""A method's student H per block over repeated streams, and its lead over a baseline's repeats.

One stream's student moves by up to 0.002 H at a block by chance, so a lead of that size
counts only where it holds in every repeat of the stream (`continual.stream_seed`, each repeat
under its own run key, from the same block 0): the last row, the smallest lead, says where.
Each run is paired with the baseline's run of the same stream seed (read from its pin); the
last row compares every run with every baseline run, since two methods' runs of one stream
seed share no draws after block 0:

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
from dataclasses import dataclass
from pathlib import Path

from ccd.continual.evaluation import hmean_points
from ccd.continual.pinned_config import read_pin
from ccd.continual.state import Layout
from ccd.errors import BadInputError
from ccd.home import Home
from ccd.stages import DEFAULT_RUN_KEY

Series = dict[int, float]  # block -> H of Recall@20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--runs", required=True, help="LABEL=METHOD:KEY,METHOD:KEY,... one per stream seed")
    parser.add_argument("--baseline", required=True, help="LABEL=METHOD:KEY,... in the same stream order")
    args = parser.parse_args()

    home = Home(args.home)
    try:
        label, mine = parse(home, args.runs)
        base_label, theirs = parse(home, args.baseline)
        pairs = paired(mine, theirs)
    except (ValueError, BadInputError) as bad:  # BadInputError: a method or key not a valid name
        parser.error(str(bad))
    blocks = sorted(set.intersection(*(set(run.student) for run in mine + theirs)) - {0})
    if not blocks:
        parser.error("the runs share no block after block 0")
    print(f"| H (Recall@20) | {' | '.join(f'D{b}' for b in blocks)} |")
    print(f"|---|{'---|' * len(blocks)}")
    for name, runs, side in ((label, mine, "student"), (base_label, theirs, "student"),
                             (label, mine, "teacher"), (base_label, theirs, "teacher")):
        for run in runs:
            series = getattr(run, side)
            if series:
                print(f"| {name} {side}, stream {run.stream} ({run.name}) | {cells(series[b] for b in blocks)} |")
    leads = {stream: {b: a.student[b] - b_run.student[b] for b in blocks} for stream, (a, b_run) in pairs.items()}
    for stream, lead in leads.items():
        print(f"| lead over {base_label}, stream {stream} | {cells((lead[b] for b in blocks), signed=True)} |")
    print(f"| mean lead | {cells((statistics.mean(lead[b] for lead in leads.values()) for b in blocks), signed=True)} |")
    print(f"| smallest lead | {cells((min(lead[b] for lead in leads.values()) for b in blocks), signed=True)} |")
    # Two methods' runs of one stream seed share no draws, so the pairing is bookkeeping; the
    # strict reading is every run against every baseline run.
    worst = (min(run.student[b] for run in mine) - max(run.student[b] for run in theirs) for b in blocks)
    print(f"| lowest run minus highest baseline run | {cells(worst, signed=True)} |")


@dataclass(frozen=True)
class StreamRun:
    """One finished run: its name (METHOD:KEY), stream seed and H per block of each side."""

    name: str
    stream: int
    student: Series
    teacher: Series  # empty for a method that keeps no teacher


def parse(home: Home, spec: str) -> tuple[str, list[StreamRun]]:
    label, _, runs = (part.strip() for part in spec.partition("="))
    names = [run.strip() for run in runs.split(",") if run.strip()]
    if not label or not names:
        raise ValueError(f"expected LABEL=METHOD:KEY[,METHOD:KEY...], got {spec!r}")
    return label, [read_run(home, name) for name in names]


def read_run(home: Home, name: str) -> StreamRun:
    method, _, run_key = name.partition(":")
    run_key = run_key or DEFAULT_RUN_KEY
    path = Layout(home, method, run_key).report_dir / "metrics.json"
    pin = read_pin(home, run_key)
    if not path.exists() or pin is None:
        raise ValueError(f"no finished run {name!r} (report {path})")
    report = json.loads(path.read_text())
    sides = {side: dict(hmean_points(report[side]["blocks"])) if report.get(side) else {} for side in ("student", "teacher")}
    return StreamRun(name, pin["continual"]["stream_seed"], **sides)


def paired(mine: list[StreamRun], theirs: list[StreamRun]) -> dict[int, tuple[StreamRun, StreamRun]]:
    """Stream seed -> (run, baseline run) for the streams both sides ran."""
    by_stream = {run.stream: run for run in theirs}
    if len(by_stream) < len(theirs) or len({run.stream for run in mine}) < len(mine):
        raise ValueError("two runs of one side share a stream seed: give each stream once")
    pairs = {run.stream: (run, by_stream[run.stream]) for run in mine if run.stream in by_stream}
    if not pairs:
        raise ValueError(f"no stream seed in common: runs {sorted(r.stream for r in mine)}, baseline {sorted(by_stream)}")
    return pairs


def cells(values: Iterable[float], signed: bool = False) -> str:
    return " | ".join(f"{v:+.4f}" if signed else f"{v:.4f}" for v in values)


if __name__ == "__main__":
    main()
