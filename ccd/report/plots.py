"""The dashboard's PNG plots, drawn with matplotlib's object API (no pyplot, no display).

Each function draws one figure from `DashboardData` and writes it atomically; it returns the
path, or None when there is nothing to draw (the page then says so instead of showing an empty
frame).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from ccd.atomic import write_with
from ccd.report.collect import METRIC, DashboardData
from ccd.report.page import STATUS_COLOURS

SPLIT_COLOURS = {"train": "#4e79a7", "valid": "#a0cbe8", "test": "#f28e2b"}
NAME_COLOURS = {"student": "#4e79a7", "teacher": "#e15759"}
# One colour per method in the quality plots (the tableau palette, as matplotlib's default).
CYCLE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
DPI = 100


def plot_blocks(data: DashboardData, path: Path) -> Path | None:
    """Rows per block, stacked by split, with the validation status above each bar."""
    if not data.blocks:
        return None
    figure = Figure(figsize=(11, 3.6))
    axes = figure.subplots()
    blocks = [b["block"] for b in data.blocks]
    bottom = [0] * len(blocks)
    for split, colour in SPLIT_COLOURS.items():
        heights = [b[f"{split}_rows"] for b in data.blocks]
        axes.bar(blocks, heights, bottom=bottom, color=colour, label=split)
        bottom = [lo + h for lo, h in zip(bottom, heights)]
    for block, top, record in zip(blocks, bottom, data.blocks):
        status = record["validation_status"]
        axes.annotate(status, (block, top), ha="center", va="bottom", fontsize=8, color=STATUS_COLOURS.get(status, "black"))
    axes.set_xticks(blocks)
    axes.set_xlabel("block")
    axes.set_ylabel("interactions")
    axes.set_title("Blocks ingested (validation status above)")
    axes.margins(y=0.15)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(figure, path)


def plot_quality(data: DashboardData, path: Path) -> Path | None:
    """H-mean of LA and RA, and Recall@20 on each block's own test, over blocks.

    One colour per method; the student solid, the teacher dashed; one legend for both panels.
    """
    if not any(s.points for s in data.series):
        return None
    figure = Figure(figsize=(12, 3.8), layout="constrained")
    h_axes, r_axes = figure.subplots(1, 2)
    blocks = sorted({p["block"] for s in data.series for p in s.points})
    methods = list(dict.fromkeys(s.method for s in data.series))
    for series in data.series:
        colour = CYCLE[methods.index(series.method) % len(CYCLE)]
        style = {"marker": "o", "color": colour, "linestyle": "--" if series.side == "teacher" else "-", "label": series.label}
        for axes, key in ((h_axes, "h"), (r_axes, METRIC)):
            points = [(p["block"], p[key]) for p in series.points if p[key] is not None]
            if points:
                axes.plot(*zip(*points), **style)
    for axes, title in ((h_axes, f"H-mean of LA and RA ({METRIC})"), (r_axes, f"{METRIC} on the block's own test")):
        axes.set_title(title)
        axes.set_xlabel("block")
        axes.set_xticks(blocks)
        axes.grid(alpha=0.3)
    handles = {h.get_label(): h for axes in (h_axes, r_axes) for h in axes.lines}
    figure.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize="small")
    return _save(figure, path)


def plot_models(data: DashboardData, path: Path) -> Path | None:
    """Parameter count of every registered version and, when timed, its one-user latency."""
    if not data.versions:
        return None
    timed = any(v["latency"] for v in data.versions)
    figure = Figure(figsize=(11, 3.6) if timed else (6, 3.6))
    panels = figure.subplots(1, 2 if timed else 1, squeeze=False)[0]
    labels = [f"{v['name'][0]}{v['version']}" for v in data.versions]
    colours = [NAME_COLOURS.get(v["name"], "#76b7b2") for v in data.versions]
    positions = range(len(labels))
    sizes = [max(v["n_params"], 1) for v in data.versions]
    bars = panels[0].bar(positions, sizes, color=colours)
    panels[0].bar_label(bars, [f"{n:,}" for n in sizes], fontsize=7)
    if max(sizes) > 50 * min(sizes):  # teachers next to students: a linear axis would flatten the students
        panels[0].set_yscale("log")
    panels[0].margins(y=0.12)
    panels[0].set_title("parameters per registered version")
    if timed:
        latency = [(v["latency"] or {}).get("p50_ms_1_user", 0.0) for v in data.versions]
        panels[1].bar(positions, latency, color=colours)
        panels[1].set_title("scoring latency, one user (median ms)")
    for axes in panels:
        axes.set_xticks(list(positions), labels, rotation=90 if len(labels) > 20 else 0, fontsize=8)
        axes.set_xlabel("version (s = student, t = teacher)")
        axes.grid(alpha=0.3, axis="y")
    return _save(figure, path)


def _save(figure: Figure, path: Path) -> Path:
    if figure.get_layout_engine() is None:
        figure.tight_layout()
    write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))
    return path
