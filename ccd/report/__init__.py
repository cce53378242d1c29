"""`ccd report`: the static ops dashboard of a home folder.

    path = build_dashboard(Home.resolve())["path"]   # <home>/reports/dashboard/index.html

One self-contained HTML page plus PNG plots beside it: blocks ingested and their validation,
H-mean and Recall@20 over blocks for teacher and student, model sizes and scoring latencies,
and the registry's decision history. `collect` reads the records, `plots` draws, `page` writes
the HTML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ccd.atomic import write_text
from ccd.home import Home, keep_matplotlib_cache_in
from ccd.report import collect as _collect
from ccd.report import page

PAGE = "index.html"


def build_dashboard(home: Home, out_dir: str | Path | None = None, latency: bool = True) -> dict[str, Any]:
    """Write the dashboard of `home` into `out_dir` (default `<home>/reports/dashboard`).

    Parameters
    ----------
    latency : bool
        Time each registered student's scoring (loads every version once); False skips it.

    Returns
    -------
    dict
        `path` of the page, `plots` written, and counts of what it shows.
    """
    out = Path(out_dir) if out_dir is not None else home.reports / "dashboard"
    out = out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = _collect.collect(home, latency=latency)
    keep_matplotlib_cache_in(home)
    from ccd.report import plots  # matplotlib loads here, its cache in the home

    drawn = {
        "blocks": plots.plot_blocks(data, out / "blocks.png"),
        "quality": plots.plot_quality(data, out / "quality.png"),
        "models": plots.plot_models(data, out / "models.png"),
    }
    for name, path in drawn.items():
        if path is None:
            (out / f"{name}.png").unlink(missing_ok=True)  # a stale plot of an earlier run must not linger
    write_text(out / PAGE, page.render(data, out, drawn))
    return {
        "path": str(out / PAGE),
        "plots": {name: str(path) for name, path in drawn.items() if path is not None},
        "blocks": len(data.blocks),
        "series": [s.label for s in data.series],
        "versions": len(data.versions),
        "decisions": len(data.decisions),
        "problems": data.problems,
    }
