"""Recommender models behind one interface (`ccd.models.base.Recommender`).

`build_model(config, n_users, n_items)` makes any kind from its config dataclass;
`parse_members` turns the compact teacher spec ("lightgcn:64x3") into named member configs.
"""

from __future__ import annotations

import re
from typing import Any

from ccd.config import TeacherConfig
from ccd.errors import BadInputError
from ccd.models.base import Batch, Recommender
from ccd.models.bpr import BPRConfig, BPRMF
from ccd.models.lightgcn import LightGCN, LightGCNConfig
from ccd.models.vae import MultVAE, VAEConfig

MODELS: dict[str, type[Recommender]] = {cls.kind: cls for cls in (BPRMF, LightGCN, MultVAE)}
_MEMBER = re.compile(r"^(?P<kind>[a-z]+):(?P<dim>[0-9]+)(?:x(?P<count>[0-9]+))?$")

__all__ = [
    "MODELS", "Batch", "Recommender", "BPRConfig", "BPRMF", "LightGCN", "LightGCNConfig",
    "MultVAE", "VAEConfig", "build_model", "kind_of", "model_config", "parse_members",
]


def model_config(kind: str, values: dict[str, Any]) -> Any:
    """The config dataclass of `kind` built from `values` (e.g. read back from JSON)."""
    if kind not in MODELS:
        raise BadInputError(f"unknown model kind {kind!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[kind].Config(**values)


def kind_of(config: Any) -> str:
    """The model kind whose config class `config` is an instance of."""
    for kind, cls in MODELS.items():
        if type(config) is cls.Config:
            return kind
    raise BadInputError(f"no model kind has config type {type(config).__name__}")


def build_model(config: Any, n_users: int, n_items: int) -> Recommender:
    """A freshly initialised model of the kind that `config`'s class belongs to."""
    return MODELS[kind_of(config)](config, n_users, n_items)


def parse_members(teacher: TeacherConfig) -> list[tuple[str, Any]]:
    """Named member configs from the compact specs `kind:dim[xcount]` of `teacher.members`.

    Member j of a kind (counted over all specs) is named `<kind>-<j>`; the n-th member overall
    is seeded `teacher.base_seed + n`, so no two members share a seed (a BPR-MF and a LightGCN
    with the same seed would start from identical tables and see identical batches). The
    section's per-kind settings (`lightgcn_layers`, `vae_*`) go to every member of that kind.

    Example
    -------
    >>> [name for name, _ in parse_members(TeacherConfig(members=("lightgcn:64x2", "bpr:32")))]
    ['lightgcn-0', 'lightgcn-1', 'bpr-0']
    """
    per_kind = {
        "lightgcn": {"layers": teacher.lightgcn_layers},
        "vae": {"hidden": teacher.vae_hidden, "dropout": teacher.vae_dropout, "kl_cap": teacher.vae_kl_cap,
                "kl_anneal_steps": teacher.vae_kl_anneal_steps},
    }
    members: list[tuple[str, Any]] = []
    counts: dict[str, int] = {}
    for spec in teacher.members:
        match = _MEMBER.match(spec.strip())
        if not match or match["kind"] not in MODELS or int(match["dim"]) < 1 or match["count"] == "0":
            raise BadInputError(
                f"bad member spec {spec!r}: use kind:dim[xcount] with kind in {', '.join(sorted(MODELS))}, e.g. lightgcn:64x3"
            )
        kind, dim = match["kind"], int(match["dim"])
        for _ in range(int(match["count"] or 1)):
            j = counts.get(kind, 0)
            counts[kind] = j + 1
            values = {"dim": dim, "seed": teacher.base_seed + len(members), **per_kind.get(kind, {})}
            members.append((f"{kind}-{j}", MODELS[kind].Config(**values)))
    return members
