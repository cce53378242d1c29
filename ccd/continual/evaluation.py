"""Continual evaluation: the (trained block, test block) matrix, LA / RA / H per block, plots.

After block k the served model is ranked on the test split of block k (plasticity) and of every
earlier block j < k (stability), always excluding every training pair seen up to k (no B14).
Rows of the matrix are `{"trained": k, "test": j, "recall@20", "ndcg@20", "users"}`;
`summaries` turns them into LA, RA and H (`ccd.evaluate.continual_summaries`) as they stood after
each block, and `plot_hmean` draws H-mean over blocks for one or several methods. `lead_over`
and `plot_lead` show CCD's margin over each baseline per block, the way the paper reports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ccd.config import TrainConfig
from ccd.atomic import write_with
from ccd.evaluate import CUTOFF, NDCG, RECALL, ScoreFn, continual_summaries, first_counted_block, rank_metrics

METRICS = (RECALL, NDCG)


def evaluate_block(
    score_fn: ScoreFn,
    block: int,
    tests: Mapping[int, np.ndarray],
    seen_train: np.ndarray,
    n_items: int,
    batch_users: int = TrainConfig.eval_batch_users,
    device: Any = None,
) -> list[dict[str, Any]]:
    """Matrix rows of the model trained up to `block` on each test split in `tests`.

    Parameters
    ----------
    score_fn : callable
        `users` (B,) -> scores (B, n_items) of the model after `block`.
    tests : mapping test block -> np.ndarray, shape (T, 2)
        Test pairs of blocks 0..block.
    seen_train : np.ndarray, shape (E, 2)
        Every training pair of blocks 0..block: never ranked, and dropped from the truth.
    """
    rows = []
    for test_block, truth in sorted(tests.items()):
        metrics = rank_metrics(score_fn, truth, seen_train, n_items, ks=(CUTOFF,), batch_users=batch_users, device=device)
        rows.append({"trained": block, "test": test_block, **{m: metrics[m] for m in METRICS}, "users": metrics["users"]})
    return rows


def summaries(rows: Sequence[Mapping[str, Any]], with_base_block: bool = True) -> list[dict[str, Any]]:
    """Per trained block: its own-block metrics and LA / RA / H so far (None before RA exists).

    Returns
    -------
    list of dict
        `{"block", "recall@20", "ndcg@20", "summary": {"recall@20": {"LA", "RA", "H"}, ...} or None}`
        in block order.
    """
    matrix = {(r["trained"], r["test"]): r for r in rows}
    first = first_counted_block(with_base_block)
    out = []
    for block in sorted({r["trained"] for r in rows}):
        own = matrix[(block, block)]
        summary = continual_summaries(matrix, METRICS, upto=block, with_base_block=with_base_block) if block > first else None
        out.append({"block": block, **{m: own[m] for m in METRICS}, "summary": summary})
    return out


def gate_metrics(block_summary: Mapping[str, Any]) -> dict[str, float]:
    """Registry metrics of the model after one block: own-block Recall/NDCG@20 and, per metric,
    `la_`, `ra_` and `h_` prefixed values. Before RA exists (block 0) H is the own-block value:
    with a single block, learning and retaining are the same number."""
    out = {m: float(block_summary[m]) for m in METRICS}
    for m in METRICS:
        summary = (block_summary["summary"] or {}).get(m)
        la, ra, h = (summary["LA"], summary["RA"], summary["H"]) if summary else (out[m], out[m], out[m])
        out.update({f"la_{m}": la, f"ra_{m}": ra, f"h_{m}": h})
    return out


def plot_hmean(series: Mapping[str, Sequence[tuple[int, float]]], path: Path, title: str) -> Path:
    """Line plot of H-mean (Recall@20) over blocks, one line per named series, as PNG.

    A series named "<method> teacher" is dashed in the colour of "<method> student", so each
    method reads as one colour and its two lines are told apart by the dash."""
    def draw(axes) -> None:
        colours: dict[str, Any] = {}
        for name, points in series.items():
            if points:
                blocks, values = zip(*points)
                method, _, side = name.rpartition(" ")
                key = method if side in ("student", "teacher") else name
                line, = axes.plot(blocks, values, marker="o", linestyle="--" if side == "teacher" else "-",
                                  color=colours.get(key), label=name)
                colours.setdefault(key, line.get_color())
        axes.grid(alpha=0.3)

    return _plot(draw, path, title, "H-mean of LA and RA (Recall@20)")


def hmean_points(block_summaries: Sequence[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """(block, H of Recall@20) for every block that has a summary: the measure the plots draw."""
    return [(s["block"], s["summary"][METRICS[0]]["H"]) for s in block_summaries if s["summary"]]


def lead_over(
    reference: Sequence[tuple[int, float]], others: Mapping[str, Sequence[tuple[int, float]]]
) -> dict[str, list[tuple[int, float]]]:
    """Per other series: the reference's H minus its H at every block both have (positive: the
    reference is ahead). A lead is what the paper's figures give, so whether it grows over the
    blocks is read here rather than from two curves that nearly overlap."""
    by_block = dict(reference)
    return {name: [(block, by_block[block] - h) for block, h in points if block in by_block]
            for name, points in others.items()}


def plot_lead(leads: Mapping[str, Sequence[tuple[int, float]]], path: Path, title: str) -> Path:
    """Grouped bars of a lead per block (one bar per compared series), zero marked, as PNG."""
    def draw(axes) -> None:
        width = 0.8 / max(len(leads), 1)
        for n, (name, points) in enumerate(leads.items()):
            if points:
                blocks, values = zip(*points)
                axes.bar([b - 0.4 + (n + 0.5) * width for b in blocks], values, width=width, label=name)
        axes.axhline(0.0, color="black", linewidth=0.8)
        axes.grid(axis="y", alpha=0.3)

    return _plot(draw, path, title, "H-mean lead (Recall@20)")


def ccd_leads(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """CCD's student H minus every other method's per block, from stream reports by method
    (`ccd.continual.loop.report`); empty unless CCD and another method have a student."""
    students = {method: hmean_points(r["student"]["blocks"]) for method, r in reports.items() if r.get("student")}
    ccd = students.pop("ccd", None)
    return lead_over(ccd, students) if ccd is not None and students else {}


def _plot(draw: Callable[[Any], None], path: Path, title: str, ylabel: str) -> Path:
    """One figure over blocks, drawn by `draw(axes)`, written atomically as PNG. Matplotlib runs on
    the Agg backend, so no display is needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axes = plt.subplots(figsize=(8.0, 4.0))
    draw(axes)
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # blocks are whole
    axes.set_xlabel("block")
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize="medium")
    if axes.get_legend_handles_labels()[0]:  # a run of block 0 alone has no H yet
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the lines, never over them
    figure.tight_layout()
    write_with(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)
    return Path(path)
