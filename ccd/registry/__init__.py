"""The model registry: versioned models, `production`/`candidate` aliases and a promotion gate.

Typical use at the end of a block (what the flows and `ccd stream` do):

>>> version = register(home, "student", home.model_dir(3, "student"), block=3, method="ccd",
...                    metrics={"h_recall@20": 0.21}, n_params=52_000,
...                    lineage={"teacher_version": 4, "blocks": [0, 1, 2, 3]}, config=run_config)
>>> decision = propose(home, "student", version.version, run_config.registry)
>>> load_artifact_path(home, "student")  # what serving loads, checksum verified

`store` holds the data and the manual actions, `gate` the automatic promotion rule, `pruning`
the removal of old versions' copies.
"""

from ccd.registry.gate import propose, sanity_problems
from ccd.registry.pruning import PruneResult, prune
from ccd.registry.store import (
    CANDIDATE,
    PRODUCTION,
    ArtifactIntegrityError,
    Decision,
    ModelVersion,
    RegistryError,
    aliases,
    get,
    list_decisions,
    list_versions,
    load_artifact_path,
    promote,
    register,
    registry_path,
    rollback,
    sha256_artifact,
    verify_artifact,
)

__all__ = [
    "CANDIDATE", "PRODUCTION", "ArtifactIntegrityError", "Decision", "ModelVersion", "PruneResult", "RegistryError",
    "aliases", "get", "list_decisions", "list_versions", "load_artifact_path", "promote", "propose", "prune",
    "register", "registry_path", "rollback", "sanity_problems", "sha256_artifact", "verify_artifact",
]
