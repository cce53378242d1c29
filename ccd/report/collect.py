"""Gather what the ops dashboard shows, from the records the pipeline already keeps.

Sources, all under the home folder:

- the lake catalog: blocks ingested and every validation verdict (rejected blocks included);
- the CCD loop's reports `reports/stream/<method>/metrics.json` (`ccd.continual.loop`): for the
  student and the teacher, per block, Recall@20 on the block's own test and LA / RA / H-mean of
  Recall@20 so far, plus parameter counts and stage timings;
- the model registry: every version (block, method, metrics, parameter count, aliases) and the
  decision log. Each student version is also timed here, since nothing records how fast it scores.

When no stream report exists yet (e.g. only the flows ran), the quality series come from the
registry's metrics of each version instead, so the dashboard always shows what is known.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from ccd import registry
from ccd.config import ServingConfig
from ccd.errors import CcdError
from ccd.evaluate import RECALL
from ccd.home import Home
from ccd.lake import catalog
from ccd.models import Recommender, io
from ccd.registry import ModelVersion

METRIC = RECALL
# Timing: repeats of a one-user request (the serving path), the users of one batch call, and
# the list length asked for (serving's default k).
LATENCY_REPEATS = 50
LATENCY_BATCH = 256
LATENCY_K = ServingConfig.default_k


@dataclass(frozen=True)
class Series:
    """One line of the quality plots: a method's student or teacher over blocks.

    `points` rows: {"block", "recall@20" (own-block test), "la", "ra", "h"} (LA/RA/H of
    Recall@20 so far; None before there is an earlier block to retain).
    """

    method: str
    side: str
    source: str
    params: int | None
    points: list[dict[str, Any]]

    @property
    def label(self) -> str:
        return f"{self.method} {self.side}"


@dataclass
class DashboardData:
    """Everything the page and the plots are drawn from (JSON-ready dicts and `Series`)."""

    home: str
    generated_at: str
    blocks: list[dict[str, Any]]
    validations: list[dict[str, Any]]
    series: list[Series]
    stream_stages: dict[str, list[dict[str, Any]]]
    versions: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)

    def production(self, name: str = "student") -> dict[str, Any] | None:
        return next((v for v in self.versions if v["name"] == name and "production" in v["aliases"]), None)


def collect(home: Home, latency: bool = True) -> DashboardData:
    """Read the catalog, the stream reports and the registry of `home` (read-only)."""
    problems: list[str] = []
    blocks = [b.to_dict() for b in catalog.list_blocks(home)]
    validations = [{**v, "checked_at": str(v["checked_at"])} for v in catalog.list_validations(home)]
    reports = _stream_reports(home, problems)
    versions = registry.list_versions(home)
    rows = [_version_row(home, v, latency, problems) for v in versions]
    series = [s for r in reports for s in _stream_series(r)] or _registry_series(versions)
    return DashboardData(
        home=str(home.root),
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        blocks=blocks,
        validations=validations,
        series=series,
        stream_stages={r["method"]: _stage_seconds(r) for r in reports},
        versions=rows,
        decisions=[d.to_dict() for d in registry.list_decisions(home)],
        problems=problems,
    )


def measure_latency(model: Recommender) -> dict[str, float]:
    """Scoring latency of a loaded model: median ms of a one-user top-`LATENCY_K`, ms of a batch call.

    Seen-item exclusion is left out: it is a lookup, the same for every model, while scoring
    all items is what grows with the model.
    """
    k = min(LATENCY_K, model.n_items)
    generator = np.random.default_rng(0)
    users = torch.as_tensor(generator.integers(0, model.n_users, LATENCY_REPEATS))
    model.recommend(users[:1], k)  # warm-up: first-call allocations
    one = []
    for user in users:
        start = time.perf_counter()
        model.recommend(user.reshape(1), k)
        one.append(time.perf_counter() - start)
    batch = torch.as_tensor(generator.integers(0, model.n_users, LATENCY_BATCH))
    model.recommend(batch, k)  # warm-up at the batch's size
    start = time.perf_counter()
    model.recommend(batch, k)
    return {"p50_ms_1_user": 1000 * float(np.median(one)), f"ms_{LATENCY_BATCH}_users": 1000 * (time.perf_counter() - start)}


def _version_row(home: Home, version: ModelVersion, latency: bool, problems: list[str]) -> dict[str, Any]:
    row = version.to_dict()
    row.pop("config")
    row["latency"] = None
    if latency and (version.path(home) / io.META).exists():
        try:
            model = io.load(registry.load_artifact_path(home, version.name, version.version))
            row["latency"] = measure_latency(model)
        except CcdError as exc:
            problems.append(f"{version.name} v{version.version} not timed: {exc}")
    return row


def _stream_reports(home: Home, problems: list[str]) -> list[dict[str, Any]]:
    """The default-run `metrics.json` of every method (retrain runs live one folder deeper)."""
    reports = []
    for path in sorted((home.reports / "stream").glob("*/metrics.json")):
        try:
            report = json.loads(path.read_text())
            report["method"] = str(report.get("method") or path.parent.name)
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(f"{path} skipped: {exc}")
            continue
        reports.append(report)
    return reports


def _stream_series(report: dict[str, Any]) -> list[Series]:
    out = []
    for side in ("student", "teacher"):
        part = report.get(side)
        if not part:
            continue
        points = []
        for row in part.get("blocks", []):
            summary = (row.get("summary") or {}).get(METRIC) or {}
            points.append({"block": row["block"], METRIC: row.get(METRIC), "la": summary.get("LA"), "ra": summary.get("RA"), "h": summary.get("H")})
        out.append(Series(report["method"], side, "stream", part.get("params"), points))
    return out


def _registry_series(versions: list[ModelVersion]) -> list[Series]:
    """Per (name, method): the newest version of each block, its registered Recall@20 and H."""
    newest: dict[tuple[str, str], dict[int, ModelVersion]] = {}
    for version in versions:
        newest.setdefault((version.method, version.name), {})[version.block] = version
    out = []
    for (method, name), by_block in sorted(newest.items()):
        points = [
            {"block": b, METRIC: v.metrics.get(METRIC), "la": v.metrics.get(f"la_{METRIC}"),
             "ra": v.metrics.get(f"ra_{METRIC}"), "h": v.metrics.get(f"h_{METRIC}")}
            for b, v in sorted(by_block.items())
        ]
        out.append(Series(method, name, "registry", by_block[max(by_block)].n_params, points))
    return out


def _stage_seconds(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Total seconds of the finished stages of each block of one method's run."""
    totals: dict[int, float] = {}
    for stage in report.get("stages") or []:
        if stage.get("seconds") is not None:
            totals[stage["block"]] = totals.get(stage["block"], 0.0) + float(stage["seconds"])
    return [{"block": b, "seconds": s} for b, s in sorted(totals.items())]
