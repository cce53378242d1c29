"""The one home folder that holds all state: lake, catalog, models, registry, reports.

Resolution order: an explicit `--home DIR`, else the `CCD_HOME` environment variable, else
`./.ccd`. Nothing in the project writes outside it, so a home folder can be copied, backed up or
deleted as a unit.
"""

from __future__ import annotations

import numbers
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ccd.errors import BadInputError

DEFAULT_HOME = ".ccd"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_name(name: str, what: str = "name") -> str:
    """Return `name` if it is safe as a single path component, else raise.

    Model names, method names and the like become folder names; this keeps a user-given value
    from escaping the home folder (`..`, `/`, control characters).
    """
    if not _SAFE_NAME.match(name) or name in {".", ".."}:
        raise BadInputError(f"invalid {what} {name!r}: use letters, digits, '.', '_' or '-' only")
    return name


def block_number(block: object) -> int:
    """Return `block` as an int if it is a whole number >= 0, else raise.

    Block numbers become folder names (`block=K`); accepting only integers keeps a value such as
    "../x" from reaching a path, and a bool or float from passing as a number.
    """
    if isinstance(block, bool) or not isinstance(block, numbers.Integral) or block < 0:
        raise BadInputError(f"block number must be an integer >= 0, got {block!r}")
    return int(block)


@dataclass(frozen=True)
class Home:
    """Paths of everything under one home folder."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None) -> "Home":
        """Pick the home folder: argument, then `CCD_HOME`, then `./.ccd`; create it.
        """
        if home is not None and not str(home).strip():
            raise BadInputError("home is empty: give a folder (or leave --home out for $CCD_HOME, else ./.ccd)")
        chosen = home if home is not None else os.environ.get("CCD_HOME") or DEFAULT_HOME
        try:
            root = Path(chosen).expanduser().resolve()
            if root.exists() and not root.is_dir():
                raise BadInputError(f"home {root} exists and is not a folder")
            root.mkdir(parents=True, exist_ok=True)
        except (OSError, ValueError) as exc:  # a NUL in the name, a name too long, no permission
            raise BadInputError(f"home {str(chosen)[:200]!r} cannot be used: {getattr(exc, 'strerror', None) or exc}") from None
        return cls(root)

    @property
    def lake(self) -> Path:
        """Parquet interaction partitions: `lake/interactions/block=K/part-<hash>.parquet`."""
        return self.root / "lake"

    @property
    def interactions(self) -> Path:
        return self.lake / "interactions"

    @property
    def catalog_path(self) -> Path:
        """The DuckDB catalog: blocks, id maps, validation results, stage records."""
        return self.root / "catalog.duckdb"

    @property
    def quarantine(self) -> Path:
        """Rejected input blocks with their validation reports."""
        return self.root / "quarantine"

    @property
    def reports(self) -> Path:
        """Human-readable reports: validation summaries, dashboards, plots."""
        return self.root / "reports"

    @property
    def models(self) -> Path:
        """Model artifacts, one folder per block and model name."""
        return self.root / "models"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    def block_dir(self, block: int) -> Path:
        return self.interactions / f"block={block_number(block)}"

    def relative(self, path: Path) -> str:
        """`path` relative to the home folder, as stage outputs and the registry record it."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    def model_dir(self, block: int, name: str) -> Path:
        return self.models / f"block={block_number(block)}" / safe_name(name, "model name")


def keep_matplotlib_cache_in(home: Home) -> None:
    """Point matplotlib's cache (its font list, built when matplotlib is first imported) into the
    home: by default it goes to `~/.cache`, outside it. Call it before plotting; a no-op once
    matplotlib is loaded (the process has its cache by then) or when `MPLCONFIGDIR` is set."""
    if "matplotlib" not in sys.modules:
        os.environ.setdefault("MPLCONFIGDIR", str(home.root / "cache" / "matplotlib"))
