"""The registry store: model versions, aliases and the decision log in one DuckDB file.

Semantics follow MLflow's model registry:

- A *version* is one trained artifact of a named model ("teacher", "student", ...), numbered
  1, 2, ... per name and immutable once registered. It records the block and method that made
  it, its metrics, parameter count, the path of the registry's own copy of the artifact
  (`registry/<name>/<sha256>` under the home, which a re-run of the block never overwrites) and
  its sha256, its lineage (teacher version, data blocks) and the full config.
- An *alias* (`production`, `candidate`) points at one version per name. Every move of
  `production` is a *decision*, logged with its reason and the production it replaced; that log
  is what `rollback` walks back.

The file `<home>/registry.duckdb` is separate from the lake catalog, so a training run that
registers at its end never blocks ingest. Each call opens a short-lived connection under the
`registry` file lock (shared for reads, exclusive for writes: DuckDB lets no other process open a
file being written) and every write is one transaction, so a crash leaves the old state or the
new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from ccd.atomic import copy_whole, remove_staging, sha256_file
from ccd.config import RunConfig
from ccd.errors import BadInputError, CcdError
from ccd.home import Home, safe_name
from ccd.locking import file_lock

# Writers hold the lock for milliseconds, plus one artifact checksum in `propose`; two minutes
# only runs out when something is stuck.
LOCK_TIMEOUT = 120.0
# The registry's copies of registered artifacts, `<ARTIFACTS>/<name>/<sha256>` under the home.
ARTIFACTS = "registry"
PRODUCTION, CANDIDATE = "production", "candidate"
# A version's status: registered (not yet proposed), production (now), archived (was
# production), candidate (kept back by the gate), rejected (failed the gate's sanity checks).
STATUSES = ("registered", PRODUCTION, "archived", CANDIDATE, "rejected")

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    block INTEGER NOT NULL,
    method VARCHAR NOT NULL,
    metrics VARCHAR NOT NULL,         -- JSON text (may hold NaN, which the gate must see)
    n_params BIGINT NOT NULL,
    artifact VARCHAR NOT NULL,        -- relative to the home folder
    sha256 VARCHAR NOT NULL,
    lineage VARCHAR NOT NULL,         -- JSON text
    config VARCHAR NOT NULL,          -- JSON text: RunConfig.to_dict()
    created_at TIMESTAMP NOT NULL,    -- UTC
    status VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    name VARCHAR NOT NULL,
    alias VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (name, alias)
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    decided_at TIMESTAMP NOT NULL,
    name VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    kind VARCHAR NOT NULL,            -- gate | manual | rollback
    promoted BOOLEAN NOT NULL,
    reason VARCHAR NOT NULL,
    previous_production INTEGER,
    metric VARCHAR,
    value DOUBLE,
    baseline DOUBLE
);
-- Versions whose registry copy `prune` removed. Its own table, not a column of `versions`:
-- code that predates it still writes the versions table as it did.
CREATE TABLE IF NOT EXISTS pruned (
    name VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    pruned_at TIMESTAMP NOT NULL,     -- UTC
    PRIMARY KEY (name, version)
);
"""


class RegistryError(CcdError):
    """A model, version or alias does not exist, or a registry action is not possible."""


class ArtifactIntegrityError(RegistryError):
    """A registered artifact is missing or its checksum no longer matches."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version (a row of `versions` plus its aliases)."""

    name: str
    version: int
    block: int
    method: str
    metrics: dict[str, float]
    n_params: int
    artifact: str
    sha256: str
    lineage: dict[str, Any]
    config: dict[str, Any]
    created_at: str
    status: str
    reason: str
    aliases: tuple[str, ...] = ()
    pruned_at: str | None = None  # when `ccd registry prune` removed its copy; None while it has one

    def path(self, home: Home) -> Path:
        """The artifact's absolute path (not verified; see `load_artifact_path`)."""
        return home.root / self.artifact

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: non-finite metric values become None."""
        return json_safe(asdict(self))


@dataclass(frozen=True)
class Decision:
    """One gate, manual or rollback decision about a version (a row of `decisions`)."""

    id: int
    decided_at: str
    name: str
    version: int
    kind: str
    promoted: bool
    reason: str
    previous_production: int | None
    metric: str | None = None
    value: float | None = None
    baseline: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def registry_path(home: Home) -> Path:
    return home.root / "registry.duckdb"


@contextmanager
def connect(home: Home, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection under the registry lock; with `write`, one transaction.

    The transaction commits when the `with` block ends normally and rolls back on any exception.
    A read on a file without today's tables (new, or made before `prune`) first lets one write
    create them, since a read-only connection cannot.
    """
    path = registry_path(home)
    if write:
        with _opened(home, path, write=True) as con:
            con.execute(SCHEMA)
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        return
    if path.exists():
        with _opened(home, path, write=False) as con:
            if _has_every_table(con):
                yield con
                return
    _create_tables(home, path)
    with _opened(home, path, write=False) as con:
        yield con


def _create_tables(home: Home, path: Path) -> None:
    """What a read-only connection cannot do: create the file's missing tables (`SCHEMA` only
    creates what is not there)."""
    with _opened(home, path, write=True) as con:
        con.execute(SCHEMA)


@contextmanager
def _opened(home: Home, path: Path, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    """The registry file opened under its lock: exclusive to write, shared to read."""
    with file_lock(home, "registry", timeout=LOCK_TIMEOUT, shared=not write):
        con = duckdb.connect(str(path), read_only=not write)
        try:
            yield con
        finally:
            con.close()


def _has_every_table(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the file has today's tables (a registry made before `prune` lacks `pruned`)."""
    return con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'pruned'").fetchone()[0] == 1


def sha256_artifact(path: Path) -> str:
    """Checksum of a file, or of a folder as the hash of its sorted (relative path, file hash) list.

    Hashing the relative paths too means a renamed or moved file inside a folder artifact
    changes the checksum, not only edited contents.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise ArtifactIntegrityError(f"artifact {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise BadInputError(f"artifact folder {path} is empty")
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def register(
    home: Home,
    name: str,
    artifact_path: str | Path,
    block: int,
    method: str,
    metrics: Mapping[str, float],
    n_params: int,
    lineage: Mapping[str, Any] | None = None,
    config: RunConfig | Mapping[str, Any] | None = None,
) -> ModelVersion:
    """Register an artifact as the next version of `name`, with status "registered".

    Idempotent: if `name` already has a version with the same block, method and artifact
    sha256, that version is returned with its metrics, lineage and config as they were, so a
    re-run of a flow after a crash never duplicates a version; only its copy is made again if it
    was damaged or pruned (`ccd.registry.prune`). Registering does not move any alias;
    `ccd.registry.propose` does.

    Parameters
    ----------
    artifact_path : path
        A file or a folder inside the home folder; a relative path is relative to `home.root`.
        The version records the registry's copy of it (`registry/<name>/<sha256>`).
    metrics : mapping of str to float
        Evaluation results; NaN is accepted here (the gate rejects it later).
    n_params : int
        The model's parameter count (>= 0; the gate requires > 0).
    lineage : mapping
        What produced the model, e.g. {"teacher_version": 3, "blocks": [0, 1, 2]}.
    config : RunConfig or mapping
        The full config the model was trained with.
    """
    safe_name(name, "model name")
    safe_name(method, "method")
    if isinstance(block, bool) or not isinstance(block, numbers.Integral) or block < 0:
        raise BadInputError(f"block must be an integer >= 0, got {block!r}")
    if isinstance(n_params, bool) or not isinstance(n_params, numbers.Integral) or n_params < 0:
        raise BadInputError(f"n_params must be an integer >= 0, got {n_params!r}")
    clean_metrics = _check_metrics(metrics)
    config_dict = config.to_dict() if isinstance(config, RunConfig) else dict(config or {})
    lineage_json, config_json = _to_json(lineage or {}, "lineage"), _to_json(config_dict, "config")
    source = home.root / _inside_home(home, Path(artifact_path))
    sha = sha256_artifact(source)
    with connect(home, write=True) as con:  # the lock also makes this the only writer of the copies
        kept = _keep(home, source, name, sha)
        # the copy is there again, for every pruned version that points at it
        con.execute("DELETE FROM pruned WHERE name = ? AND version IN (SELECT version FROM versions WHERE name = ? AND artifact = ?)",
                    [name, name, kept])
        row = con.execute(
            "SELECT version, artifact FROM versions WHERE name = ? AND block = ? AND method = ? AND sha256 = ?",
            [name, int(block), method, sha],
        ).fetchone()
        if row is not None:
            if row[1] != kept:  # registered before the registry kept copies: point it at one now
                con.execute("UPDATE versions SET artifact = ? WHERE name = ? AND version = ?", [kept, name, row[0]])
            return fetch(con, name, row[0])
        version = con.execute("SELECT coalesce(max(version), 0) + 1 FROM versions WHERE name = ?", [name]).fetchone()[0]
        con.execute(
            f"INSERT INTO versions ({_VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'registered', '')",
            [name, version, int(block), method, json.dumps(clean_metrics), int(n_params), kept, sha,
             lineage_json, config_json, now()],
        )
        return fetch(con, name, version)


def _keep(home: Home, source: Path, name: str, sha: str) -> str:
    """The registry's own copy of an artifact, named by its checksum (relative to the home).

    A version must keep pointing at the bytes it was registered with, while the folder a model
    was trained into is written again when its block is re-run (a replaced block, a forced
    stage): serving and rollback load the copy, which nothing overwrites. A damaged copy (no
    version could load it) is replaced. Called under the registry's write lock.
    """
    kept = f"{ARTIFACTS}/{name}/{sha}{source.suffix if source.is_file() else ''}"
    target = home.root / kept
    remove_staging(target.parent)
    if target.exists() and sha256_artifact(target) == sha:
        return kept
    copy_whole(source, target)
    if sha256_artifact(target) != sha:
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        raise ArtifactIntegrityError(f"artifact {source} changed while it was registered; register it again")
    return kept


def get(home: Home, name: str, ref: int | str = PRODUCTION) -> ModelVersion:
    """The version `ref` of `name`: a version number, or an alias such as "production"."""
    with connect(home) as con:
        return require(con, name, ref)


def list_versions(home: Home, name: str | None = None) -> list[ModelVersion]:
    """All versions (of `name`, or of every model), ordered by name and version."""
    with connect(home) as con:
        rows = con.execute(
            "SELECT name, version FROM versions WHERE ? IS NULL OR name = ? ORDER BY name, version", [name, name]
        ).fetchall()
        return [fetch(con, n, v) for n, v in rows]


def list_decisions(home: Home, name: str | None = None, version: int | None = None) -> list[Decision]:
    """The decision log, oldest first, optionally for one model or one version."""
    with connect(home) as con:
        rows = con.execute(
            f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE (? IS NULL OR name = ?) AND (? IS NULL OR version = ?) "
            "ORDER BY id",
            [name, name, version, version],
        ).fetchall()
        return [_decision(r) for r in rows]


def aliases(home: Home, name: str) -> dict[str, int]:
    """Alias -> version of `name`, e.g. {"production": 3, "candidate": 4}."""
    with connect(home) as con:
        return dict(con.execute("SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias", [name]).fetchall())


def promote(home: Home, name: str, version: int, reason: str) -> Decision:
    """Make `version` production by hand, bypassing the gate's metric checks; logged as "manual".

    The artifact must still exist and match its checksum: production is what serving loads.
    """
    if not reason.strip():
        raise BadInputError("a manual promotion needs a reason")
    with connect(home, write=True) as con:
        target = require(con, name, version)
        if PRODUCTION in target.aliases:
            raise RegistryError(f"{name} v{version} is already production")
        verify_artifact(home, target)
        return set_production(con, target, "manual", reason)


def rollback(home: Home, name: str, reason: str = "rollback") -> Decision:
    """Point production back to the version it replaced, per the decision log.

    The previous production is the one recorded by the latest gate or manual decision that
    promoted the current version; rollbacks themselves are skipped, so repeated rollbacks walk
    further back (v3 -> v2 -> v1) instead of toggling.
    """
    with connect(home, write=True) as con:
        current = require(con, name, PRODUCTION)
        previous = replaced_by(con, name, current.version)
        if previous is None:
            raise RegistryError(f"nothing to roll back to: {name} v{current.version} was the first production")
        target = require(con, name, previous)
        verify_artifact(home, target)
        return set_production(con, target, "rollback", f"{reason}: v{current.version} -> v{target.version}")


def replaced_by(con: duckdb.DuckDBPyConnection, name: str, version: int) -> int | None:
    """The production that `version` replaced when it was last promoted (by the gate or by hand),
    i.e. where a rollback from it goes; None for the first production."""
    row = con.execute(
        "SELECT previous_production FROM decisions WHERE name = ? AND version = ? AND promoted "
        "AND kind <> 'rollback' ORDER BY id DESC LIMIT 1",
        [name, version],
    ).fetchone()
    return None if row is None else row[0]


def load_artifact_path(home: Home, name: str, alias: int | str = PRODUCTION) -> Path:
    """The verified artifact path of `name` at `alias` (an alias or a version number).

    Raises `ArtifactIntegrityError` when the artifact is missing or its sha256 differs from the
    registered one, so a tampered or half-copied model is never loaded.
    """
    version = get(home, name, alias)
    verify_artifact(home, version)
    return version.path(home)


def verify_artifact(home: Home, version: ModelVersion) -> None:
    if version.pruned_at is not None:
        raise ArtifactIntegrityError(
            f"{version.name} v{version.version}: its artifact was pruned on {version.pruned_at} "
            f"(`ccd registry prune`); register the same model again to restore it"
        )
    path = version.path(home)
    if not path.exists():
        raise ArtifactIntegrityError(f"{version.name} v{version.version}: artifact {path} is missing")
    if sha256_artifact(path) != version.sha256:
        raise ArtifactIntegrityError(
            f"{version.name} v{version.version}: artifact {path} does not match its registered sha256"
        )


# --- helpers for the gate: they run inside one `connect(home, write=True)` transaction ---


def fetch(con: duckdb.DuckDBPyConnection, name: str, ref: int | str) -> ModelVersion | None:
    """The version `ref` (number or alias) of `name`, or None."""
    if isinstance(ref, str) and not ref.isdigit():
        row = con.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", [name, ref]).fetchone()
        if row is None:
            return None
        ref = row[0]
    row = con.execute(f"SELECT {_VERSION_COLUMNS} FROM versions WHERE name = ? AND version = ?", [name, int(ref)]).fetchone()
    if row is None:
        return None
    names = con.execute("SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias", [name, int(ref)]).fetchall()
    pruned = con.execute("SELECT pruned_at FROM pruned WHERE name = ? AND version = ?", [name, int(ref)]).fetchone()
    return _version(row, tuple(a for (a,) in names), None if pruned is None else pruned[0])


def require(con: duckdb.DuckDBPyConnection, name: str, ref: int | str) -> ModelVersion:
    found = fetch(con, name, ref)
    if found is None:
        what = f"version {ref}" if isinstance(ref, int) or str(ref).isdigit() else f"alias {ref!r}"
        raise RegistryError(f"model {name!r} has no {what} (see `ccd registry list`)")
    return found


def last_decision(con: duckdb.DuckDBPyConnection, name: str, version: int, kind: str | None = None) -> Decision | None:
    row = con.execute(
        f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE name = ? AND version = ? AND (? IS NULL OR kind = ?) "
        "ORDER BY id DESC LIMIT 1",
        [name, version, kind, kind],
    ).fetchone()
    return None if row is None else _decision(row)


def set_production(
    con: duckdb.DuckDBPyConnection, target: ModelVersion, kind: str, reason: str, **comparison: Any
) -> Decision:
    """Move `production` to `target`, archive the old one, and log the decision."""
    old = fetch(con, target.name, PRODUCTION)
    if old is not None:
        _set_status(con, old, "archived", f"replaced by v{target.version} ({kind})")
    _set_status(con, target, PRODUCTION, reason)
    _set_alias(con, target.name, PRODUCTION, target.version)
    con.execute("DELETE FROM aliases WHERE name = ? AND alias = ? AND version = ?", [target.name, CANDIDATE, target.version])
    return _log(con, target, kind, True, reason, None if old is None else old.version, **comparison)


def keep_back(
    con: duckdb.DuckDBPyConnection, target: ModelVersion, status: str, reason: str, **comparison: Any
) -> Decision:
    """Record a gate refusal: status "candidate" also moves the `candidate` alias; "rejected" does not."""
    old = fetch(con, target.name, PRODUCTION)
    _set_status(con, target, status, reason)
    if status == CANDIDATE:
        _set_alias(con, target.name, CANDIDATE, target.version)
    return _log(con, target, "gate", False, reason, None if old is None else old.version, **comparison)


def json_safe(value: Any) -> Any:
    """Replace non-finite floats (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


_VERSION_COLUMNS = (
    "name, version, block, method, metrics, n_params, artifact, sha256, lineage, config, created_at, status, reason"
)
_DECISION_COLUMNS = (
    "id, decided_at, name, version, kind, promoted, reason, previous_production, metric, value, baseline"
)


def _version(row: tuple, alias_names: tuple[str, ...], pruned: datetime | None) -> ModelVersion:
    name, version, block, method, metrics, n_params, artifact, sha, lineage, config, created, status, reason = row
    return ModelVersion(
        name, version, block, method, json.loads(metrics), n_params, artifact, sha,
        json.loads(lineage), json.loads(config), _iso(created), status, reason, alias_names,
        None if pruned is None else _iso(pruned),
    )


def _decision(row: tuple) -> Decision:
    return Decision(row[0], _iso(row[1]), *row[2:])


def _set_status(con: duckdb.DuckDBPyConnection, version: ModelVersion, status: str, reason: str) -> None:
    assert status in STATUSES, status
    con.execute(
        "UPDATE versions SET status = ?, reason = ? WHERE name = ? AND version = ?",
        [status, reason, version.name, version.version],
    )


def _set_alias(con: duckdb.DuckDBPyConnection, name: str, alias: str, version: int) -> None:
    con.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", [name, alias])
    con.execute("INSERT INTO aliases VALUES (?, ?, ?, ?)", [name, alias, version, now()])


def _log(
    con: duckdb.DuckDBPyConnection, target: ModelVersion, kind: str, promoted: bool, reason: str,
    previous: int | None, metric: str | None = None, value: float | None = None, baseline: float | None = None,
) -> Decision:
    next_id = con.execute("SELECT coalesce(max(id), 0) + 1 FROM decisions").fetchone()[0]
    con.execute(
        "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [next_id, now(), target.name, target.version, kind, promoted, reason, previous, metric, value, baseline],
    )
    return last_decision(con, target.name, target.version)


def _check_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise BadInputError(f"metrics must be a mapping of name to number, got {type(metrics).__name__}")
    clean = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise BadInputError(f"metric {key!r} must map a name to a number, got {value!r}")
        clean[key] = float(value)
    return clean


def _to_json(value: Mapping[str, Any], what: str) -> str:
    try:
        return json.dumps(dict(value), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"{what} must be JSON-serialisable: {exc}") from None


def _inside_home(home: Home, path: Path) -> str:
    """`path` relative to the home folder; refuse anything outside it (e.g. through `..`)."""
    absolute = (path if path.is_absolute() else home.root / path).resolve()
    try:
        relative = absolute.relative_to(home.root.resolve()).as_posix()
    except ValueError:
        raise BadInputError(f"artifact {path} is outside the home folder {home.root}") from None
    if relative == ".":
        raise BadInputError("the artifact cannot be the home folder itself")
    return relative


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds") + "Z"
