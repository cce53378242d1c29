"""Answer recommendation requests from the registry's production student.

A `Snapshot` is everything one production version needs to answer: the loaded model, the
external ids of the users and items it covers, every user's seen items and the popularity order
for users it does not know. It is built once per version and never changed, so requests read it
without locks. `RecommendService.refresh` checks the registry's `production` alias and swaps in a
new snapshot when the alias has moved (a promotion or a rollback): that is how a running server
picks up a newly promoted model without a restart.

>>> service = RecommendService(Home.resolve(), RunConfig().serving)
>>> service.refresh()                       # True: production loaded
>>> service.require().recommend("u002758", k=20).items
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from ccd import registry
from ccd.config import ServingConfig
from ccd.errors import BadInputError, CcdError
from ccd.evaluate import UserItemCSR
from ccd.home import Home
from ccd.lake import catalog
from ccd.lake.store import read_block
from ccd.models import Recommender, io
from ccd.registry import ModelVersion
from ccd.train import pick_device

log = logging.getLogger(__name__)
MODEL_NAME = "student"  # what the CCD loop and the flows register and gate for serving
POPULAR = "popular"
# Longest accepted user id: ids are short keys, and this bounds what one request can send.
MAX_USER_ID = 256


class NoModelError(CcdError):
    """There is nothing to serve: no production student yet, or it cannot be loaded."""


@dataclass(frozen=True)
class Recommendation:
    """The answer to one request.

    `scores` are the model's scores, or, for a fallback, each item's count of training
    interactions. `fallback` is None for a personal list and "popular" for a user the model
    does not know.
    """

    user: str
    items: list[str]
    scores: list[float]
    fallback: str | None
    version: int
    block: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "user": self.user, "k": len(self.items), "items": self.items, "scores": self.scores,
            "fallback": self.fallback, "model": {"name": MODEL_NAME, "version": self.version, "block": self.block},
        }


@dataclass(frozen=True)
class Snapshot:
    """One production version, ready to answer.

    Attributes
    ----------
    version : ModelVersion
        The registry entry it was loaded from.
    model : Recommender
        In eval mode, on the serving device.
    users : dict of str to int
        External user id -> internal id, for the `model.n_users` users the model covers.
    items : np.ndarray of object, shape (n_items,)
        External id of every internal item id.
    seen_indptr : np.ndarray, shape (n_users + 1,), int64
    seen_items : torch.Tensor, shape (N,), int64, on the model's device
        Every (user, item) interaction in the lake's blocks 0..version.block, grouped by user
        (user u's items are `seen_items[seen_indptr[u]:seen_indptr[u + 1]]`), all splits: the
        split is an evaluation device, to the user they are all items they already have.
    popular : np.ndarray, shape (P,), int64
        Internal item ids by descending count of training interactions (ties: lower id first),
        P = min(max_k, n_items); `popular_counts` holds the counts.
    loaded_at : str
        UTC time the snapshot was built.
    """

    version: ModelVersion
    model: Recommender
    users: dict[str, int]
    items: np.ndarray
    seen_indptr: np.ndarray
    seen_items: torch.Tensor
    popular: np.ndarray
    popular_counts: np.ndarray
    loaded_at: str = field(default_factory=lambda: _now())

    @classmethod
    def load(cls, home: Home, config: ServingConfig, version: ModelVersion | None = None) -> "Snapshot":
        """Build the snapshot of `version` (default: the current production student).

        The artifact is loaded through the registry, which verifies its sha256, then through
        `ccd.models.io.load`, which verifies the weights' own checksum: nothing unverified is
        ever served, and nothing is unpickled.
        """
        version = version or production(home)
        path = registry.load_artifact_path(home, version.name, version.version)
        model = io.load(path, pick_device(config.device))
        users, items = _id_maps(home, model)
        seen, train = _interactions(home, version.block, model)
        popular, counts = _popularity(train, model.n_items, config.max_k)
        csr = UserItemCSR.from_pairs(seen, model.n_users)
        return cls(version, model, users, items, csr.indptr.numpy(), csr.items.to(model.device), popular, counts)

    def recommend(self, user: str, k: int) -> Recommendation:
        """The top-`k` unseen items for `user` (external id); popular items if it is unknown.

        At most `k` items come back: fewer when the model has fewer items, or when the user has
        seen all but a few (seen items are never recommended).
        """
        internal = self.users.get(user)
        if internal is None:
            top = self.popular[:k]
            return self._answer(user, top, self.popular_counts[:k].astype(float), POPULAR)
        # One user's row, masked by a slice of the seen index: a handful of small ops. At this
        # size each op's fixed cost dominates; the batched `Recommender.recommend` path (CSR
        # gather) takes about twice the CPU per request (measured).
        with torch.inference_mode():
            scores = self.model.score(torch.tensor([internal], device=self.model.device))[0].clone()  # (n_items,)
            scores[self.seen_items[self.seen_indptr[internal] : self.seen_indptr[internal + 1]]] = float("-inf")
            top = torch.topk(scores, min(k, self.model.n_items))
        ids, values = top.indices.cpu().numpy(), top.values.cpu().numpy()
        unseen = np.isfinite(values)  # seen items score -inf and sink to the end
        return self._answer(user, ids[unseen], values[unseen], None)

    def describe(self) -> dict[str, Any]:
        """What `GET /model` reports: the registry entry (without its full config) and the load."""
        entry = self.version.to_dict()
        entry.pop("config")
        return {
            **entry, "kind": self.model.kind, "dim": self.model.dim, "n_users": self.model.n_users,
            "n_items": self.model.n_items, "device": str(self.model.device), "loaded_at": self.loaded_at,
        }

    def _answer(self, user: str, ids: np.ndarray, scores: np.ndarray, fallback: str | None) -> Recommendation:
        return Recommendation(
            user, self.items[ids].tolist(), [float(s) for s in scores], fallback, self.version.version, self.version.block,
        )


class RecommendService:
    """Holds the current snapshot and replaces it when the registry's production moves.

    Requests call `require()` and use the snapshot they get, so a swap in the middle of a
    request never mixes two versions. `refresh()` is cheap when nothing changed (one registry
    read, about 0.1 s); `start()` runs it every `config.refresh_seconds` in a daemon thread.
    A failed reload (e.g. an artifact that fails its checksum) keeps the old snapshot serving and
    is reported in `problem`.
    """

    def __init__(self, home: Home, config: ServingConfig) -> None:
        check_config(config)
        self.home = home
        self.config = config
        self.problem: str | None = None
        self.last_check: str | None = None
        self._snapshot: Snapshot | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def require(self) -> Snapshot:
        """The current snapshot; `NoModelError` (HTTP 503) when there is none."""
        snapshot = self._snapshot
        if snapshot is None:
            raise NoModelError(self.problem or f"no production {MODEL_NAME} loaded yet")
        return snapshot

    def refresh(self) -> bool:
        """Load the production version if it differs from the one served; True if it swapped."""
        with self._refresh_lock:
            self.last_check = _now()
            try:
                current = production(self.home)
                loaded = self._snapshot
                if loaded is not None and (loaded.version.version, loaded.version.sha256) == (current.version, current.sha256):
                    self.problem = None
                    return False
                snapshot = Snapshot.load(self.home, self.config, current)
            except CcdError as exc:
                self.problem = str(exc)
                log.warning("serving: %s", exc)
                return False
            self._snapshot, self.problem = snapshot, None
            log.info("serving %s v%d (block %d)", MODEL_NAME, current.version, current.block)
            return True

    def start(self) -> None:
        """Refresh every `refresh_seconds` in a background thread until `stop()`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="ccd-serve-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def health(self) -> dict[str, Any]:
        snapshot = self._snapshot
        return {
            "status": "ok" if snapshot is not None else "no_model",
            "model": None if snapshot is None else {"name": MODEL_NAME, "version": snapshot.version.version, "block": snapshot.version.block},
            "last_check": self.last_check,
            "problem": self.problem,
        }

    def _poll(self) -> None:
        while not self._stop.wait(self.config.refresh_seconds):
            try:
                self.refresh()
            except Exception:  # keep refreshing after an unexpected failure, but show its traceback
                log.exception("serving: refresh failed")


def production(home: Home) -> ModelVersion:
    """The registry's production student; `NoModelError` if none has been promoted."""
    if not registry.aliases(home, MODEL_NAME).get(registry.PRODUCTION):
        raise NoModelError(
            f"no production {MODEL_NAME} in the registry of {home.root} yet: "
            f"run the pipeline, or promote one with `ccd registry promote {MODEL_NAME} VERSION`"
        )
    return registry.get(home, MODEL_NAME, registry.PRODUCTION)


def check_config(config: ServingConfig) -> None:
    """Refuse settings that cannot serve (caught at start, not at the first request)."""
    if config.max_k < 1:
        raise BadInputError(f"serving.max_k must be >= 1, got {config.max_k}")
    if not 1 <= config.default_k <= config.max_k:
        raise BadInputError(f"serving.default_k must be in [1, serving.max_k={config.max_k}], got {config.default_k}")
    if config.refresh_seconds <= 0:
        raise BadInputError(f"serving.refresh_seconds must be > 0, got {config.refresh_seconds}")
    if not 0 <= config.port <= 65535:
        raise BadInputError(f"serving.port must be in [0, 65535], got {config.port}")


def _id_maps(home: Home, model: Recommender) -> tuple[dict[str, int], np.ndarray]:
    """External->internal users and internal->external items, cut to the model's id space."""
    users, items = catalog.id_map(home, "user"), catalog.id_map(home, "item")
    if len(users) < model.n_users or len(items) < model.n_items:
        raise NoModelError(
            f"the production {MODEL_NAME} covers {model.n_users} users x {model.n_items} items but the lake of "
            f"{home.root} maps only {len(users)} x {len(items)}: it was trained on another lake"
        )
    users = users[users["internal_id"] < model.n_users]
    return dict(zip(users["external_id"], users["internal_id"].astype(int))), items["external_id"].to_numpy(object)[: model.n_items]


def _interactions(home: Home, block: int, model: Recommender) -> tuple[np.ndarray, np.ndarray]:
    """All (user, item) pairs and the training pairs of blocks 0..block, each shape (N, 2)."""
    frames = [read_block(home, k) for k in range(block + 1)]
    every = np.concatenate([f[["user", "item"]].to_numpy(np.int64) for f in frames])
    train = np.concatenate([f.loc[f["split"] == "train", ["user", "item"]].to_numpy(np.int64) for f in frames])
    inside = (every[:, 0] < model.n_users) & (every[:, 1] < model.n_items)
    return every[inside], train[(train[:, 0] < model.n_users) & (train[:, 1] < model.n_items)]


def _popularity(train: np.ndarray, n_items: int, max_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `max_k` items with most training interactions (ids, counts), best first."""
    counts = np.bincount(train[:, 1], minlength=n_items)
    order = np.lexsort((np.arange(n_items), -counts))[:max_k]
    return order.astype(np.int64), counts[order]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
