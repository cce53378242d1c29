"""The promotion gate: a new version becomes production only if it is sane and not worse.

`propose` runs three checks and records the outcome as a decision:

1. Sanity. Metrics are present (the gate metric among them) and all finite, the parameter count
   is positive, the artifact exists and matches its registered sha256. A version that fails is
   marked "rejected"; no alias moves, so nothing broken can become the candidate either.
2. Freshness. A version trained through an older block than production's (a retrain of a past
   block) is kept back as candidate: promoting it would drop the newer blocks' users and items.
3. Quality. The gate metric (`GateConfig.metric`, higher is better) must not be more than
   `GateConfig.tolerance` (absolute) below the current production's. The first sane version of
   a name is promoted, as is any sane version when production has no finite value of the metric
   to compare with. A version that is worse gets the `candidate` alias and status "candidate",
   with the comparison as the reason; `ccd registry promote` can still force it. The caller may
   give production's metric re-measured on the new version's own tests (`rescored`, by
   production version; `ccd.continual.gate_baseline`): it is used when that version is still
   production when the gate decides, and production's registered metric otherwise.

Proposing is idempotent: a version that already has a gate decision gets that decision back
unchanged, so a re-run flow does not re-decide (or log twice) against a production that may have
moved since.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ccd.config import GateConfig
from ccd.home import Home
from ccd.registry import store
from ccd.registry.store import CANDIDATE, PRODUCTION, ArtifactIntegrityError, Decision, ModelVersion

# Comparisons exactly at the tolerance edge must promote despite float rounding (0.3 - 0.005).
_EDGE = 1e-12


def propose(home: Home, name: str, version: int, gate: GateConfig | None = None,
            rescored: Mapping[int, float] | None = None) -> Decision:
    """Run the gate on `version` of `name`: promote it to production or keep it back.

    Parameters
    ----------
    gate : GateConfig
        Metric and tolerance; defaults to `GateConfig()` (the `registry` config section).
    rescored : mapping production version -> float, optional
        The gate metric of that version measured on the same tests as `version`.

    Returns
    -------
    Decision
        `promoted` says whether it is production now; `reason` says why, with `value` and
        `baseline` the metric of this version and of the production it was compared with.
    """
    gate = gate or GateConfig()
    with store.connect(home, write=True) as con:
        target = store.require(con, name, version)
        decided = store.last_decision(con, name, target.version, kind="gate")
        if decided is not None:
            return decided
        if PRODUCTION in target.aliases:
            return store.last_decision(con, name, target.version)
        problems = sanity_problems(home, target, gate.metric)
        if problems:
            return store.keep_back(con, target, "rejected", "failed sanity checks: " + "; ".join(problems))
        production = store.fetch(con, name, PRODUCTION)
        promoted, reason, baseline = compare(target, production, gate, rescored or {})
        comparison = {"metric": gate.metric, "value": target.metrics[gate.metric], "baseline": baseline}
        if promoted:
            return store.set_production(con, target, "gate", reason, **comparison)
        return store.keep_back(con, target, CANDIDATE, reason, **comparison)


def sanity_problems(home: Home, version: ModelVersion, metric: str) -> list[str]:
    """Everything that makes `version` unfit for production regardless of its scores."""
    problems = []
    if metric not in version.metrics:
        problems.append(f"gate metric {metric!r} missing (has {sorted(version.metrics) or 'none'})")
    bad = sorted(k for k, v in version.metrics.items() if not math.isfinite(v))
    if bad:
        problems.append(f"non-finite metrics {bad}")
    if version.n_params <= 0:
        problems.append(f"parameter count {version.n_params} is not positive")
    try:
        store.verify_artifact(home, version)
    except ArtifactIntegrityError as exc:
        problems.append(str(exc))
    return problems


def compare(target: ModelVersion, production: ModelVersion | None, gate: GateConfig,
            rescored: Mapping[int, float] | None = None) -> tuple[bool, str, float | None]:
    """(promote?, reason, production's metric) for a sane `target` against `production`."""
    value = target.metrics[gate.metric]
    if production is None:
        return True, f"first sane {target.name}: no production yet ({gate.metric} {value:.4f})", None
    if target.block < production.block:
        return False, (
            f"trained through block {target.block}, older than production v{production.version}'s "
            f"block {production.block}: it would not know the newer blocks' users and items"
        ), production.metrics.get(gate.metric)
    same_tests = production.version in (rescored or {})
    baseline = rescored[production.version] if same_tests else production.metrics.get(gate.metric)
    where = " on the same tests" if same_tests else ""
    if baseline is None or not math.isfinite(baseline):
        return True, f"production v{production.version} has no finite {gate.metric} to compare with", None
    drop = baseline - value
    if drop <= gate.tolerance + _EDGE:
        return True, (
            f"{gate.metric} {value:.4f} vs production v{production.version} {baseline:.4f}{where}: "
            f"within tolerance {gate.tolerance:g}"
        ), baseline
    return False, (
        f"{gate.metric} {value:.4f} is {drop:.4f} below production v{production.version} {baseline:.4f}{where} "
        f"(tolerance {gate.tolerance:g})"
    ), baseline
