"""DE-RRD on Gowalla block 0 (full ranking): students at 1/4 and 1/8 of the teacher ensemble's dim.

Everything goes through the library as the pipeline runs it: block 0 is ingested into the
bench's home (`ccd.lake.ingest`), the teacher ensemble is trained or reused
(`ccd.teacher.train_teacher`, config `teacher.members`), and every student is distilled by
`ccd.distill.run.distill_stored` (the `ccd distill` command: `ccd.train`'s loop with early
stopping on valid Recall@20, the ensemble's top-K lists for RRD / IR-RRD, DE on the first
member's representations). Each (dim, method) writes `<dim>-<method>.json`; the tables give test
Recall@20 / NDCG@20 with seconds per epoch, then student vs teacher latency and size.

    .venv/bin/python bench/bench_derrd_gowalla.py --threads 2
    .venv/bin/python bench/bench_derrd_gowalla.py --report
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ccd.atomic import write_text
from ccd.config import LakeConfig, RunConfig
from ccd.distill.run import distill_stored
from ccd.home import Home
from ccd.lake.catalog import list_blocks
from ccd.lake.ingest import ingest_block
from ccd.teacher import train_teacher

GOWALLA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gowalla" / "block_0.parquet"
METHODS = ["none", "rd", "de", "rrd", "de-rrd", "de-rrd-ir"]


def prepare(home: Home, data: Path, config: RunConfig, teacher: Path | None) -> dict:
    """Ingest block 0 (`data`) once; train (or reuse) the teacher ensemble unless one is given.

    A given teacher folder must come from the same block file ingested the same way (the lake's
    ids are assigned in order of first appearance, so the ids then agree)."""
    if not any(b.block == 0 for b in list_blocks(home)):
        ingest_block(home, data, 0, LakeConfig())
    if teacher is not None:
        return json.loads((teacher / "teacher.json").read_text())
    return train_teacher(home, 0, config)


def tables(out: Path) -> str:
    """Accuracy table and student-vs-teacher inference table from every JSON in `out`."""
    reports = sorted((json.loads(p.read_text()) for p in out.glob("*-*.json")), key=lambda r: (-r["student"]["dim"], METHODS.index(r["method"])))
    if not reports:
        return "(no results yet)"
    teacher = reports[0]["teacher"]
    lines = ["| student dim | method | test Recall@20 | test NDCG@20 | valid Recall@20 | epochs (best) | s/epoch |", "|---|---|---|---|---|---|---|"]
    lines.append(f"| teacher ({teacher['dim']}, ensemble) | - | {teacher['test_recall@20']:.4f} | {teacher['test_ndcg@20']:.4f} | {teacher['valid_recall@20']:.4f} | - | - |")
    for r in reports:
        s, t = r["student"], r["train"]
        lines.append(f"| {s['dim']} | {r['method']} | {s['test_recall@20']:.4f} | {s['test_ndcg@20']:.4f} | {s['valid_recall@20']:.4f} | {t['epochs']} ({t['best_epoch']}) | {t['s_per_epoch']:.1f} |")
    lines += ["", "| model | params | param ratio | all-user top-20 latency (ms) | latency ratio |", "|---|---|---|---|---|"]
    lines.append(f"| teacher ensemble | {teacher['params']:,} | 1.000 | {teacher['latency_ms']:.0f} | 1.000 |")
    by_dim: dict[int, dict] = {}  # one student per dim: size and latency do not depend on the method
    for r in reports:
        if r["student"]["dim"] not in by_dim or r["method"] == "de-rrd":
            by_dim[r["student"]["dim"]] = r
    for r in by_dim.values():
        s = r["student"]
        lines.append(f"| student d={s['dim']} ({r['method']}) | {s['params']:,} | {r['ratio']['params']:.3f} | {s['latency_ms']:.0f} | {r['ratio']['latency']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="bench/out/home-gowalla", help="state folder of the bench")
    parser.add_argument("--data", default=str(GOWALLA), help="block 0 file (default Gowalla's; data/sample/block_0.parquet for a smoke run)")
    parser.add_argument("--teacher", default=None, metavar="PATH",
                        help="an ensemble folder trained elsewhere on the same block 0 (skips train-teacher here)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--fractions", default="4,8", help="student dim = teacher dim / each")
    parser.add_argument("--max-epochs", type=int, default=None, help="cap on train.max_epochs (teacher and students)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--report", action="store_true", help="only print the tables of the saved results")
    args = parser.parse_args()
    home = Home.resolve(args.home)
    out = home.root / "bench" / "derrd-gowalla"
    if args.report:
        print(tables(out))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [*args.overrides, *([f"train.max_epochs={args.max_epochs}"] if args.max_epochs else [])]
    config = RunConfig.load(None, overrides)
    teacher_path = Path(args.teacher) if args.teacher else None
    teacher = prepare(home, Path(args.data), config, teacher_path)
    print(json.dumps({"teacher": teacher["ensemble"]}), flush=True)
    teacher_dim = max(member["dim"] for member in teacher["members"])
    teacher_row = None  # evaluated and timed once, by the first run
    for fraction in (int(f) for f in args.fractions.split(",")):
        dim = max(1, teacher_dim // fraction)
        for method in args.methods.split(","):
            run = RunConfig.load(None, [*overrides, f"distill.method={method}", f"distill.student_dim={dim}"])
            report = distill_stored(home, 0, run, teacher_path, teacher_row=teacher_row)
            teacher_row = report["teacher"]
            report["command"] = " ".join(sys.argv)
            write_text(out / f"{dim}-{method}.json", json.dumps(report, indent=2) + "\n")
            print(json.dumps({"dim": dim, "method": method, "student": report["student"], "train": report["train"]}), flush=True)
    print(tables(out))


if __name__ == "__main__":
    main()
