"""Plot H-mean over blocks for several finished stream runs of one home, in one PNG.

`ccd stream` plots each run on its own (`reports/stream/<method>/hmean.png`); the benchmark
compares runs under different run keys (CCD under one setting against the baselines under
another), so this reads their reports and draws them together, for docs/benchmarks.md:

    .venv/bin/python bench/plot_ccd_gowalla.py --home bench/out/home-ccd-gowalla-paper \
        --runs "CCD=ccd:paper-seen,KD=kd:paper-seen,fine-tune=finetune:paper-seen" --teachers CCD,KD \
        --title "Gowalla, paper shape" --out docs/img/ccd_gowalla_paper.png

It only reads `reports/stream/<method>[/run=<key>]/metrics.json`, written when a run finishes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ccd.continual.evaluation import hmean_points, plot_hmean
from ccd.continual.state import Layout
from ccd.home import Home
from ccd.stages import DEFAULT_RUN_KEY

Series = list[tuple[int, float]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--runs", required=True, help="comma-separated LABEL=METHOD:RUN_KEY")
    parser.add_argument("--teachers", default="", help="comma-separated labels whose teacher is drawn too (dashed)")
    parser.add_argument("--title", default="H-mean of Recall@20 over blocks")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    teachers = {label.strip() for label in args.teachers.split(",") if label.strip()}
    series: dict[str, Series] = {}
    for entry in args.runs.split(","):
        label, _, run = (part.strip() for part in entry.partition("="))
        method, _, run_key = run.partition(":")
        path = Layout(Home(args.home), method, run_key or DEFAULT_RUN_KEY).report_dir / "metrics.json"
        if not path.exists():
            parser.error(f"no finished report for {entry.strip()!r}: {path}")
        report = json.loads(path.read_text())
        series[f"{label} student"] = hmean_points(report["student"]["blocks"])
        if label in teachers:
            if not report.get("teacher"):
                parser.error(f"{label!r} ({method}) keeps no teacher: leave it out of --teachers")
            series[f"{label} teacher"] = hmean_points(report["teacher"]["blocks"])
            teachers.discard(label)
    if teachers:
        parser.error(f"--teachers names labels not in --runs: {', '.join(sorted(teachers))}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(plot_hmean(series, args.out, args.title))


if __name__ == "__main__":
    main()
