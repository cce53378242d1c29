"""Train the teacher system of one block: its members, then their ensemble's top-K lists.

    report = train_teacher(Home.resolve(), block=0, config=RunConfig())

Each member (`teacher.members`, e.g. 3 LightGCN + 2 BPR + 1 Mult-VAE) is trained by the one
loop (`ccd.train.train`) with its own seed and saved under `models/block=K/teacher-<name>/`. A
member already saved for the same block data, model config and train config is reused instead
of retrained, so a re-run after a crash only does the missing work. The ensemble
(`ccd.ensemble.Ensemble`, mean of rank-transformed scores) is then evaluated and its top-K lists
are written to `models/block=K/teacher/` (`user_topk.parquet`, `item_topk.parquet`,
`teacher.json`) for distillation.

Block 0's folders are also the stream's shared block-0 teacher (`ccd.continual.loop`). Once a
finished stage has recorded a folder as its output, later stages and reports read it, so a
member there is never retrained (`--retrain`, or other settings) and the lists are never
rewritten from other settings: that is refused, and another home holds another teacher.
These folders are one per home, not per run key, so each is written under its own lock: two
runs training the same member take turns, and the second finds the first's model and reuses it;
lists a finished stage recorded are returned as they are (with the report saved beside them),
never written again, since a re-scoring on another device could break ties otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from ccd import stages
from ccd.atomic import write_text
from ccd.config import BEFORE_ADDED, RunConfig, TrainConfig
from ccd.data import BlockData
from ccd.ensemble import Ensemble, write_topk
from ccd.errors import BadInputError
from ccd.evaluate import CUTOFF, NDCG, RECALL, rank_metrics
from ccd.home import Home
from ccd.lake.store import load_block_data
from ccd.locking import file_lock
from ccd.models import Recommender, build_model, io, kind_of, parse_members
from ccd.train import pick_device, train, validate

log = logging.getLogger(__name__)
TEACHER = "teacher"


def member_dir_name(name: str) -> str:
    """Folder name of a member under `models/block=K/`, e.g. `teacher-lightgcn-0`."""
    return f"{TEACHER}-{name}"


def train_teacher(
    home: Home,
    block: int,
    config: RunConfig,
    retrain: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or reuse) every member of block `block`'s teacher, then build the ensemble.

    Parameters
    ----------
    home : Home
    block : int
        An ingested block; its train split is learnt, valid selects, test is reported.
    config : RunConfig
        Sections `teacher` (members, layers, seeds, top-K) and `train` are used.
    retrain : bool
        Train every member even when a matching saved one exists.
    progress : bool
        tqdm bars on stderr.

    Returns
    -------
    dict
        `{"block", "members": [per-member row], "ensemble": row, "topk": {...}}`; each row has
        valid/test Recall@20 and NDCG@20, parameters, epochs and seconds per epoch.
    """
    data = load_block_data(home, block)
    device = pick_device(config.train.device)
    members = parse_members(config.teacher)
    out_dir = home.model_dir(block, TEACHER)
    k = config.teacher.top_k
    built = {"member_dirs": [member_dir_name(n) for n, _ in members], "rank_exponent": config.teacher.rank_exponent, "top_k": k}
    _check_lists_unchanged(home, block, out_dir, built)  # before any member trains for nothing
    fitted = [_fit_or_reuse(home, block, name, model_config, data, config, retrain, progress) for name, model_config in members]
    rows = [row for row, _ in fitted]

    with folder_lock(home, out_dir):
        _check_lists_unchanged(home, block, out_dir, built)  # again: another run may have written them meanwhile
        if recorded_by(home, block, out_dir):  # what a finished stage distilled from stays as it is
            saved = json.loads((out_dir / "teacher.json").read_text(encoding="utf-8"))
            return {"block": block, "members": rows, "ensemble": saved["ensemble"], "topk": saved["topk"]}
        models = [_load_as_reported(home, block, name, sha, device) for (name, _), (_, sha) in zip(members, fitted)]
        ensemble_row, topk = _write_lists(Ensemble(models, config.teacher.rank_exponent), data, out_dir, config, device)
        report = {"block": block, "members": rows, "ensemble": ensemble_row, "topk": topk}
        write_text(out_dir / "teacher.json", json.dumps({**report, **built}, indent=2) + "\n")
    return report


def _write_lists(ensemble: Ensemble, data: BlockData, out_dir: Path, config: RunConfig, device: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ensemble's report row (valid/test Recall@20, NDCG@20) and its top-K lists, written to `out_dir`."""
    batch, k = config.train.eval_batch_users, config.teacher.top_k
    evaluate = lambda truth: rank_metrics(ensemble.score, truth, data.seen_train, data.n_items, ks=(CUTOFF,), batch_users=batch, device=device)
    row = {
        "member": TEACHER,
        "kind": "ensemble",
        "params": sum(m.parameter_count() for m in ensemble.members),
        **_metrics(evaluate(data.valid), evaluate(data.test)),
    }
    topk = write_topk(ensemble.score, data.n_users, data.n_items, data.seen_train, out_dir, k, k, batch, device)
    return row, {key: value if isinstance(value, int) else str(value) for key, value in topk.items()}


def train_member(
    home: Home,
    block: int,
    name: str,
    config: RunConfig,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or reuse) the one member `name` (e.g. "lightgcn-1") of block `block`'s teacher.

    Members are independent, so the stream trains each as its own stage (the flows, as their
    own tasks); `train_teacher` afterwards finds them all saved and only builds the ensemble.
    Same parameters as `train_teacher`; returns the member's report row.
    """
    members = dict(parse_members(config.teacher))
    if name not in members:
        raise BadInputError(f"no teacher member {name!r} in teacher.members (members: {', '.join(members)})")
    row, _ = _fit_or_reuse(home, block, name, members[name], load_block_data(home, block), config, False, progress)
    return row


def _fit_or_reuse(
    home: Home, block: int, name: str, model_config: Any, data: BlockData, config: RunConfig, retrain: bool, progress: bool,
) -> tuple[dict[str, Any], str]:
    """The report row and weights' SHA-256 of the member saved for the same data and configs,
    else of a freshly trained and saved one. Only the metadata of a saved member is read: its
    weights are loaded where they are used (the ensemble), not for a row."""
    folder = home.model_dir(block, member_dir_name(name))
    fingerprint = _fingerprint(data, config)
    with folder_lock(home, folder):  # another run may be training the same member into it
        saved = _matching(folder, model_config, fingerprint, data, config) if not retrain else None
        if saved is not None:
            row, sha = {**saved["metadata"]["report"], "status": "reused"}, saved["weights_sha256"]
        else:
            users = recorded_by(home, block, folder) if (folder / io.META).exists() else []
            if users:
                why = "--retrain" if retrain else "other settings than it was trained with"
                raise BadInputError(
                    f"teacher member {name} of block {block} is recorded by the stream's run key(s) {', '.join(users)}; "
                    f"retraining it ({why}) would change their results: use another --home for another teacher"
                )
            model, row = _train_member(name, model_config, data, config, progress)
            io.save(model, folder, {"block": block, "fingerprint": fingerprint, "report": row, "run_config": config.to_dict()})
            sha = io.read_metadata(folder)["weights_sha256"]
    log.info("teacher member %s: %s", name, row)
    return row, sha


def _load_as_reported(home: Home, block: int, name: str, sha: str, device: Any) -> Recommender:
    """The member's weights, the ones its report row describes: a run with other settings or
    `--retrain` may have trained it again since (before any stage recorded it)."""
    folder = home.model_dir(block, member_dir_name(name))
    with folder_lock(home, folder):
        if io.read_metadata(folder)["weights_sha256"] != sha:
            raise BadInputError(f"teacher member {name} of block {block} was trained again by another run meanwhile; run this again")
        return io.load(folder, device)


def folder_lock(home: Home, folder: Path) -> AbstractContextManager[Path]:
    """The lock of one teacher folder of `home` (a member's, or the lists'), whichever run key
    writes it. Re-entrant: the stream holds it around a whole block-0 teacher stage, record
    included, so a second run key checks its settings against the first's finished record."""
    name = hashlib.sha256(home.relative(folder).encode()).hexdigest()[:20]
    return file_lock(home, f"teacher-{name}", timeout=None, remove=True)


def recorded_by(home: Home, block: int, folder: Path) -> list[str]:
    """Run keys with a finished stage of `block` that recorded `folder` as an output."""
    relative = home.relative(folder)
    return sorted({r.run_key for r in stages.list_stages(home, block=block)
                   if r.status == "done" and relative in (r.outputs or {}).values()})


def _check_lists_unchanged(home: Home, block: int, out_dir: Path, built: dict[str, Any]) -> None:
    """Refuse to rewrite lists a finished stage recorded from other members, exponent or K."""
    path = out_dir / "teacher.json"
    users = recorded_by(home, block, out_dir) if path.exists() else []
    if not users:
        return
    before = json.loads(path.read_text(encoding="utf-8"))
    settings = {"member_dirs": "teacher.members", "rank_exponent": "teacher.rank_exponent", "top_k": "teacher.top_k"}
    changed = [settings[key] for key in built if key in before and before[key] != built[key]]
    if changed:
        raise BadInputError(
            f"the teacher lists of block {block} are recorded by the stream's run key(s) {', '.join(users)}; "
            f"rewriting them with another {', '.join(changed)} would change their results: use another --home"
        )


def _train_member(name: str, model_config: Any, data: BlockData, config: RunConfig, progress: bool) -> tuple[Recommender, dict[str, Any]]:
    model = build_model(model_config, data.n_users, data.n_items)
    result = train(model, data, config.train, progress=progress)
    test = validate(model, data, config.train.eval_batch_users, split="test")
    row = {
        "member": name,
        "kind": model.kind,
        "dim": model.dim,
        "params": model.parameter_count(),
        "status": "trained",
        "best_epoch": result.best_epoch,
        "epochs": result.epochs_run,
        "s_per_epoch": round(result.seconds_per_epoch, 3),
        **_metrics(result.best_metrics, test),
    }
    return model, row


def _metrics(valid: dict[str, float], test: dict[str, float]) -> dict[str, float | None]:
    return {f"{split}_{m}": scores.get(m) for split, scores in (("valid", valid), ("test", test)) for m in (RECALL, NDCG)}


def _fingerprint(data: BlockData, config: RunConfig) -> str:
    """Hash of everything a member's training depends on besides its own config.

    Where it trains is left out: a member trained on a GPU ranks as well on a CPU, and a stream
    may resume on either (the pinned settings leave the device free for the same reason).
    """
    return _digest(data, _train_settings(config.train))


def _train_settings(train: TrainConfig) -> dict[str, Any]:
    """The hashed `train` settings: all but the device. `decay_on="all"` steps on summed losses
    since 2026-11-24 (on means before), so those members are told apart from earlier ones."""
    settings = dataclasses.asdict(train)
    settings.pop("device")
    if train.decay_on == "all":
        settings["decay_against"] = "summed loss"
    return settings


def _digest(data: BlockData, train: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for part in (data.train, data.valid, data.history):
        digest.update(np.ascontiguousarray(part).tobytes())
    digest.update(json.dumps([data.n_users, data.n_items, train], sort_keys=True).encode())
    return digest.hexdigest()


def _matching(folder: Path, model_config: Any, fingerprint: str, data: BlockData, config: RunConfig) -> dict[str, Any] | None:
    """The saved member's metadata when it was trained on the same data and configs (`fingerprint`
    of them, or as earlier code hashed them), else None."""
    try:
        meta = io.read_metadata(folder)
    except io.ModelFileError:
        return None
    if meta["kind"] != kind_of(model_config) or meta["config"] != dataclasses.asdict(model_config):
        return None
    saved = meta["metadata"].get("fingerprint")
    saved_train = meta["metadata"].get("run_config", {}).get("train")
    if saved == fingerprint or _matches_as_saved_before(saved, saved_train, data, config):
        return meta
    return None


def _matches_as_saved_before(saved: str | None, saved_train: dict[str, Any] | None, data: BlockData, config: RunConfig) -> bool:
    """Whether a member saved by earlier code was trained on this data with today's settings.

    Its fingerprint hashed the train settings it saved, device included and `decay_on` left out
    at "batch": recomputing that checks the data; its settings, completed as a pinned run's are
    (`BEFORE_ADDED`, else the default), are then compared with today's, the device aside. Its
    `decay_on="all"` acted against mean losses, which nothing trains with any more.
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if saved_train is None or saved_train.get("decay_on") == "all" or not set(saved_train) <= known:
        return False
    hashed = {k: v for k, v in saved_train.items() if not (k == "decay_on" and v == "batch")}
    added = {key: value for (section, key), value in BEFORE_ADDED.items() if section == "train"}
    then = dataclasses.replace(TrainConfig(), **{**added, **saved_train})
    return _digest(data, hashed) == saved and _train_settings(then) == _train_settings(config.train)
