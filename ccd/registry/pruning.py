"""Pruning the registry's copies: old versions lose their artifact, never their record.

Every version keeps its own copy of its artifact (`registry/<name>/<sha256>`), so a stream that
registers a student every block grows by one student a block, for ever. `prune` removes the
copies that nothing is likely to load again, and keeps:

- the newest `keep` versions,
- every version with an alias (`production`, `candidate`) or not yet proposed (status
  `registered`: a flow that crashed between registering and proposing proposes it on its re-run),
- the versions that `keep` rollbacks from production would reach, so rolling back still works.

A pruned version keeps its row (metrics, lineage, config, decisions) and is listed in the
`pruned` table; promoting or rolling back to it is a clear error, and registering the same model
again restores its copy. The versions are marked and their copies removed in one registry
transaction, under the registry's lock. Removed files cannot be rolled back, though: if a prune
fails half way, the copies it removed before the failure are gone while their versions are left
unmarked (they report a missing artifact), and running it again marks them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from ccd.errors import BadInputError
from ccd.home import Home
from ccd.registry.store import ARTIFACTS, PRODUCTION, ModelVersion, RegistryError, connect, fetch, now, replaced_by


@dataclass(frozen=True)
class PruneResult:
    """What `prune` removed (or, on a dry run, would remove)."""

    pruned: list[ModelVersion]  # the versions whose copy goes
    kept: list[int]  # the version numbers that keep theirs
    freed_bytes: int  # disk space the removed copies took
    doomed: list[str]  # the copies removed, relative to the home (a copy may serve several versions)

    def to_dict(self) -> dict[str, Any]:
        return {"pruned": [v.to_dict() for v in self.pruned], "kept": self.kept, "freed_bytes": self.freed_bytes}


def prune(home: Home, name: str, keep: int, dry_run: bool = False) -> PruneResult:
    """Remove the registry's copies of `name`'s old versions, keeping those described above.

    Raises
    ------
    BadInputError
        `keep` is below 1: at least one rollback from production must stay possible.
    RegistryError
        `name` has no versions.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise BadInputError(f"--keep must be an integer >= 1, got {keep!r}")
    with connect(home, write=not dry_run) as con:  # a dry run only reads, beside serving
        plan = _plan(home, con, name, keep)
        if dry_run:
            return plan
        moment = now()
        for version in plan.pruned:
            con.execute("INSERT INTO pruned VALUES (?, ?, ?)", [name, version.version, moment])
        for artifact in plan.doomed:
            remove(home.root / artifact)
        return PruneResult([fetch(con, name, v.version) for v in plan.pruned], plan.kept, plan.freed_bytes, plan.doomed)


def _plan(home: Home, con: duckdb.DuckDBPyConnection, name: str, keep: int) -> PruneResult:
    """Which versions lose their copy, and which copies go: a copy stays while a kept version
    points at it (the same bytes registered for another block). Only the registry's own copies
    go: a version registered before it kept copies points at its model folder, the stream's."""
    numbers = [v for (v,) in con.execute("SELECT version FROM versions WHERE name = ? ORDER BY version", [name]).fetchall()]
    if not numbers:
        raise RegistryError(f"model {name!r} has no versions (see `ccd registry list`)")
    versions = [fetch(con, name, v) for v in numbers]
    kept = kept_versions(con, name, versions, keep)
    pruned = [v for v in versions if v.version not in kept and v.pruned_at is None and v.artifact.startswith(f"{ARTIFACTS}/")]
    doomed = sorted({v.artifact for v in pruned} - {v.artifact for v in versions if v.version in kept})
    freed = sum(disk_size(home.root / artifact) for artifact in doomed)
    return PruneResult(pruned, sorted(kept), freed, doomed)


def kept_versions(con: duckdb.DuckDBPyConnection, name: str, versions: list[ModelVersion], keep: int) -> set[int]:
    """The version numbers whose copies stay (see the module's docstring)."""
    kept = {v.version for v in versions[-keep:]}
    kept |= {v.version for v in versions if v.aliases or v.status == "registered"}
    production = next((v.version for v in versions if PRODUCTION in v.aliases), None)
    rollback_targets: list[int] = []
    step = None if production is None else replaced_by(con, name, production)
    while step is not None and len(rollback_targets) < keep:
        rollback_targets.append(step)
        step = replaced_by(con, name, step)
    return kept | set(rollback_targets)


def disk_size(path: Path) -> int:
    """Bytes of a file, or of every file in a folder; 0 when it is already gone."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def remove(path: Path) -> None:
    """Remove a copy, file or folder; one already gone (a prune that failed half way) is fine."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
