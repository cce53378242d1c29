"""The dashboard's HTML: one self-contained page (inline CSS, no scripts, no web fonts).

It opens offline from disk; the only other files it uses are the PNG plots beside it and the
validation reports it links to, all inside the home folder. Every value taken from the records
is HTML-escaped, since ids, file names and reasons come from user input.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ccd.report.collect import LATENCY_BATCH, LATENCY_K, LATENCY_REPEATS, METRIC, DashboardData, Series

# Validation status -> badge colour; the blocks plot colours its bars the same. Here, not in
# `plots`, so that the page can be imported without loading matplotlib.
STATUS_COLOURS = {"passed": "#2e7d32", "warning": "#ef8f00", "rejected": "#c62828"}

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0; color: #1f2328; background: #f6f8fa; }
header { background: #24292f; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c9d1d9; font-size: 13px; }
main { padding: 8px 32px 40px; max-width: 1240px; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 4px 20px 16px; margin-top: 20px; }
h2 { font-size: 18px; margin: 14px 0 10px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 20px; }
.card { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 10px 16px; min-width: 170px; flex: 1; }
.card .label { color: #57606a; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 22px; font-weight: 600; margin-top: 2px; }
.card .note { color: #57606a; font-size: 12px; }
table { border-collapse: collapse; min-width: 50%; font-size: 13px; margin: 6px 0 4px; }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid #eaeef2; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td { white-space: nowrap; }
td:last-child { white-space: normal; }  /* summaries and reasons wrap */
tr.current td { background: #f0f7ff; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; color: #fff; font-size: 12px; font-weight: 600; }
.muted { color: #57606a; }
.empty { color: #57606a; font-style: italic; margin: 8px 0; }
.problems { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 8px; padding: 8px 16px; margin-top: 20px; }
.scroll { overflow-x: auto; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
"""
BADGE_COLOURS = {**STATUS_COLOURS, "production": "#0969da", "candidate": "#8250df", "archived": "#6e7781",
                 "registered": "#6e7781", "promoted": "#2e7d32", "kept": "#ef8f00"}


def render(data: DashboardData, out_dir: Path, plots: dict[str, Path | None]) -> str:
    """The page for `data`; `plots` maps "blocks"/"quality"/"models" to PNGs in `out_dir` (or None)."""
    body = [
        _cards(data),
        _problems(data.problems),
        _blocks_section(data, out_dir, plots.get("blocks")),
        _quality_section(data, plots.get("quality")),
        _models_section(data, plots.get("models")),
        _history_section(data),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>ccd ops dashboard</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>ccd ops dashboard</h1><p>home {_e(data.home)} &middot; generated {_e(data.generated_at)}</p></header>\n"
        f"<main>\n{''.join(body)}</main>\n</body>\n</html>\n"
    )


def _cards(data: DashboardData) -> str:
    statuses = [b["validation_status"] for b in data.blocks]
    rejected = sum(v["status"] == "rejected" for v in data.validations)
    production = data.production()
    last = data.decisions[-1] if data.decisions else None
    cards = [
        ("blocks ingested", str(len(data.blocks)),
         f"latest block {data.blocks[-1]['block']}" if data.blocks else "none yet: ccd ingest FILE --block 0"),
        ("validation", f"{statuses.count('passed')} passed",
         f"{statuses.count('warning')} with warnings, {rejected} rejected input(s)"),
        ("production student", f"v{production['version']}" if production else "none",
         f"block {production['block']}, {production['method']}, H {_num(production['metrics'].get('h_' + METRIC))}"
         if production else "nothing promoted yet"),
        ("registry", f"{len(data.versions)} versions",
         f"last: {last['name']} v{last['version']} {'promoted' if last['promoted'] else 'kept back'}" if last else "no decisions yet"),
    ]
    items = "".join(
        f"<div class=\"card\"><div class=\"label\">{_e(label)}</div><div class=\"value\">{_e(value)}</div>"
        f"<div class=\"note\">{_e(note)}</div></div>" for label, value, note in cards
    )
    return f"<div class=\"cards\">{items}</div>\n"


def _problems(problems: list[str]) -> str:
    if not problems:
        return ""
    return "<div class=\"problems\"><strong>Not shown:</strong><ul>" + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul></div>\n"


def _blocks_section(data: DashboardData, out_dir: Path, plot: Path | None) -> str:
    root = Path(data.home)
    blocks = _table(data.blocks, [
        ("block", "block", None), ("source", "source", lambda v: _e(Path(v).name)), ("rows", "rows", None),
        ("train", "train_rows", None), ("valid", "valid_rows", None), ("test", "test_rows", None),
        ("users", "users", None), ("items", "items", None), ("new users", "new_users", None),
        ("new items", "new_items", None), ("duplicates dropped", "duplicates_dropped", None),
        ("validation", "validation_status", _badge), ("ingested", "ingested_at", _when),
    ], "No blocks ingested yet: <code>ccd ingest FILE --block 0</code>.")
    report_link = lambda v: f"<a href=\"{_e(_relative(root / Path(v).with_suffix('.html'), out_dir))}\">report</a>"
    verdicts = _table(data.validations, [
        ("block", "block", None), ("status", "status", _badge), ("checked", "checked_at", _when),
        ("report", "report_path", report_link), ("summary", "summary", None),
    ], "No validation results yet.")
    return _section("Blocks and validation", _image(plot, "interactions per block") + blocks
                    + "<h3>Validation verdicts (every attempt, rejected blocks included)</h3>" + verdicts)


def _quality_section(data: DashboardData, plot: Path | None) -> str:
    if not data.series:
        return _section("Quality over blocks", "<p class=\"empty\">No evaluated models yet: run <code>ccd stream</code> "
                                               "or the backfill flow.</p>")
    source = "the CCD loop's reports (reports/stream/*/metrics.json)" if data.series[0].source == "stream" \
        else "the registry's metrics of each version (no stream report yet)"
    parts = [f"<p class=\"muted\">From {_e(source)}. LA: mean {METRIC} on each block's own test right after "
             f"training on it (plasticity); RA: mean over earlier blocks' tests with the current model "
             f"(stability); H: their harmonic mean.</p>", _image(plot, "H-mean and Recall@20 over blocks")]
    rows = [_latest(series) for series in data.series]
    parts.append("<h3>Latest block of each series</h3>" + _table(rows, [
        ("series", "label", None), ("source", "source", None), ("parameters", "params", lambda v: f"{v:,}"),
        ("block", "block", None), (METRIC, METRIC, _num), ("LA", "la", _num), ("RA", "ra", _num), ("H", "h", _num),
    ], ""))
    timings = [(m, t) for m, t in data.stream_stages.items() if t]
    if timings:
        rows = [{"method": m, **{f"block {t['block']}": t["seconds"] for t in ts}} for m, ts in timings]
        columns = sorted({k for r in rows for k in r if k != "method"}, key=lambda c: int(c.split()[1]))
        parts.append("<h3>Stage seconds per block (training, distillation and evaluation)</h3>"
                     + _table(rows, [("method", "method", None), *((c, c, lambda v: _num(v, 1)) for c in columns)], ""))
    return _section("Quality over blocks", "".join(parts))


def _latest(series: Series) -> dict[str, Any]:
    """The series' newest block with its values (what the plot ends on)."""
    last = max(series.points, key=lambda p: p["block"], default={})
    return {**last, "label": series.label, "source": series.source, "params": series.params}


def _models_section(data: DashboardData, plot: Path | None) -> str:
    rows = [{**v, "status_html": _status(v), "h": v["metrics"].get("h_" + METRIC), "r": v["metrics"].get(METRIC),
             "lat1": (v["latency"] or {}).get("p50_ms_1_user"), "latb": (v["latency"] or {}).get(f"ms_{LATENCY_BATCH}_users")}
            for v in data.versions]
    table = _table(rows, [
        ("name", "name", None), ("version", "version", None), ("block", "block", None), ("method", "method", None),
        ("created", "created_at", _when), ("parameters", "n_params", lambda v: f"{v:,}"), ("H " + METRIC, "h", _num), (METRIC, "r", _num),
        ("ms, 1 user (p50)", "lat1", lambda v: _num(v, 3)), (f"ms, {LATENCY_BATCH} users", "latb", lambda v: _num(v, 3)),
        ("status", "status_html", str),  # already HTML: badges
    ], "No registered models yet.", current=lambda r: "production" in r["aliases"])
    note = (f"<p class=\"muted\">Latency: top-{LATENCY_K} over all items on this machine's CPU, timed when the "
            f"dashboard was written (median of {LATENCY_REPEATS} one-user calls; one call for {LATENCY_BATCH} users).</p>") \
        if any(v["latency"] for v in data.versions) else ""
    return _section("Models: size and scoring latency", _image(plot, "model sizes and latencies") + note + table)


def _history_section(data: DashboardData) -> str:
    verdict = lambda v: _badge("promoted" if v else "kept")
    table = _table(list(reversed(data.decisions)), [
        ("#", "id", None), ("when", "decided_at", _when), ("name", "name", None), ("version", "version", None),
        ("kind", "kind", None), ("verdict", "promoted", verdict), ("previous production", "previous_production", None),
        ("value", "value", _num), ("baseline", "baseline", _num), ("reason", "reason", None),
    ], "No registry decisions yet.")
    return _section("Registry history (newest first)", table)


def _section(title: str, content: str) -> str:
    return f"<section><h2>{_e(title)}</h2>\n{content}\n</section>\n"


def _table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str, Callable[[Any], str] | None]],
    empty: str,
    current: Callable[[dict[str, Any]], bool] | None = None,
) -> str:
    """Rows as an HTML table; a column's formatter returns HTML, the default escapes the value."""
    if not rows:
        return f"<p class=\"empty\">{empty}</p>" if empty else ""
    numeric = [_is_numeric([row.get(key) for row in rows]) for _, key, _ in columns]
    head = "".join(f"<th class=\"num\">{_e(t)}</th>" if n else f"<th>{_e(t)}</th>" for (t, _, _), n in zip(columns, numeric))
    lines = []
    for row in rows:
        cells = []
        for (_, key, fmt), right in zip(columns, numeric):
            value = row.get(key)
            text = "-" if value is None else (fmt(value) if fmt else _e(str(value)))
            cells.append(f"<td class=\"num\">{text}</td>" if right else f"<td>{text}</td>")
        marker = " class=\"current\"" if current and current(row) else ""
        lines.append(f"<tr{marker}>{''.join(cells)}</tr>")
    return f"<div class=\"scroll\"><table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table></div>\n"


def _is_numeric(values: list[Any]) -> bool:
    """A column of numbers (None allowed) is right-aligned, header included."""
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)


def _when(value: Any) -> str:
    """A timestamp to the second, date and time apart: `2026-11-23 00:35:08`."""
    return _e(str(value)[:19].replace("T", " "))


def _image(plot: Path | None, alt: str) -> str:
    return f"<img src=\"{_e(plot.name)}\" alt=\"{_e(alt)}\">" if plot is not None else ""


def _status(version: dict[str, Any]) -> str:
    """A version's status badge, plus its aliases where they say something else (HTML)."""
    extra = [a for a in version["aliases"] if a != version["status"]]
    return " ".join(_badge(v) for v in [version["status"], *extra])


def _badge(value: Any) -> str:
    text = str(value)
    return f"<span class=\"badge\" style=\"background:{BADGE_COLOURS.get(text, '#6e7781')}\">{_e(text)}</span>"


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _relative(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target, start)).as_posix()


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
