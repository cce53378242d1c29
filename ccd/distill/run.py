"""Distil a stored student from a block's stored teacher (`ccd distill`).

    report = distill_stored(Home.resolve(), block=0, config=RunConfig())

The teacher is what `ccd train-teacher` wrote for the block: the ensemble's top-K lists in
`models/block=K/teacher/` (with `teacher.json` naming the member folders) and the members in
`models/block=K/teacher-<name>/`. RRD and IR-RRD read the lists; DE reconstructs the
representations of one member (`distill.de_member`, default the first), since a rank ensemble
has none of its own. A single saved model (any folder with `model.json`) can be the teacher
instead; its lists are then computed from its scores.

The student is saved under `models/block=K/student-<method>/` with the report and run config.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccd.config import RunConfig, TeacherConfig
from ccd.data import BlockData
from ccd.distill.compare import describe, ratios
from ccd.distill.trainer import METHODS, TeacherSignal, distill
from ccd.ensemble import ITEM_TOPK, USER_TOPK, Ensemble, read_topk
from ccd.errors import BadInputError
from ccd.home import Home
from ccd.lake.store import load_block_data
from ccd.models import Recommender, io
from ccd.teacher import TEACHER, member_dir_name
from ccd.train import pick_device

log = logging.getLogger(__name__)


@dataclass
class StoredTeacher:
    """A teacher loaded from disk.

    Attributes
    ----------
    path : Path
    kind : str
        "ensemble" or the single model's kind.
    scorer : Recommender or Ensemble
        For evaluation and latency.
    dim : int
        The largest member dimension (the student's default size is a tenth of it).
    params : int
        All members' parameters together.
    representations : Recommender
        The model whose "final" representations DE reconstructs.
    """

    path: Path
    kind: str
    scorer: Any
    dim: int
    params: int
    representations: Recommender

    def signal(self, data: BlockData, config: RunConfig, device: Any) -> TeacherSignal:
        """The lists and representations that `config.distill.method` needs."""
        terms = METHODS[config.distill.method]
        reps = self.representations.user_item_representations()["final"] if "de" in terms else None
        if self.kind != "ensemble":
            return TeacherSignal.from_model(self.scorer, data, config.distill, self.dim, reps, device, config.train.eval_batch_users)
        users, _ = read_topk(self.path / USER_TOPK)
        items = read_topk(self.path / ITEM_TOPK)[0] if "ir" in terms else None
        return TeacherSignal.from_lists(users, items, data, self.dim, reps, device)


def load_teacher(path: Path, config: RunConfig, device: Any) -> StoredTeacher:
    """Load an ensemble folder of `ccd train-teacher` or a single saved model from `path`."""
    path = Path(path)
    if (path / io.META).exists():
        model = io.load(path, device)
        return StoredTeacher(path, model.kind, model, model.dim, model.parameter_count(), model)
    if not (path / USER_TOPK).exists() or not (path / "teacher.json").exists():
        raise BadInputError(f"no teacher in {path}: train one first (ccd train-teacher --block K) or pass --teacher MODEL_DIR")
    built = json.loads((path / "teacher.json").read_text())
    member_dirs = built["member_dirs"]
    # The exponent the lists were written with (folders from before it was recorded: the default).
    exponent = built.get("rank_exponent", TeacherConfig.rank_exponent)
    members = {name: io.load(path.parent / name, device) for name in member_dirs}
    wanted = config.distill.de_member
    key = member_dir_name(wanted) if wanted else member_dirs[0]
    if key not in members:
        known = ", ".join(name.removeprefix(member_dir_name("")) for name in member_dirs)
        raise BadInputError(f"distill.de_member {wanted!r} is not a teacher member (members: {known})")
    models = list(members.values())
    params = sum(m.parameter_count() for m in models)
    return StoredTeacher(path, "ensemble", Ensemble(models, exponent), max(m.dim for m in models), params, members[key])


def distill_stored(
    home: Home,
    block: int,
    config: RunConfig,
    teacher_path: Path | None = None,
    progress: bool = True,
    teacher_row: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Distil `config.distill.method`'s student for block `block`, save it, compare it with the teacher.

    Parameters
    ----------
    home : Home
    block : int
        An ingested block: BPR on its train split, early stopping on valid, report on test.
    config : RunConfig
        Sections `distill` and `train`.
    teacher_path : Path, optional
        Default `models/block=K/teacher` (the ensemble of `ccd train-teacher`).
    teacher_row : dict, optional
        `report["teacher"]` of an earlier call with the same teacher and block: reused instead
        of evaluating and timing the teacher again (scoring a large ensemble is slow).

    Returns
    -------
    dict
        `{"block", "method", "student": row, "teacher": row, "ratio": {...}, "train": {...},
        "saved": path}`; rows hold valid/test Recall@20 and NDCG@20, params and latency_ms.
    """
    data = load_block_data(home, block)
    device = pick_device(config.train.device)
    teacher = load_teacher(teacher_path or home.model_dir(block, TEACHER), config, device)
    result = distill(teacher.signal(data, config, device), data, config, progress=progress)
    student = result.student
    batch = config.train.eval_batch_users
    student_row = {"kind": student.kind, "dim": student.dim, **describe(student.score, student.parameter_count(), data, batch, device)}
    if teacher_row is None:
        teacher_row = {"kind": teacher.kind, "dim": teacher.dim, **describe(teacher.scorer.score, teacher.params, data, batch, device)}
    train = result.train
    report = {
        "block": block,
        "method": result.method,
        "teacher_path": str(teacher.path),
        "student": student_row,
        "teacher": teacher_row,
        "ratio": ratios(student_row, teacher_row),
        "train": {"best_epoch": train.best_epoch, "epochs": train.epochs_run, "s_per_epoch": train.seconds_per_epoch, "device": train.device},
    }
    folder = home.model_dir(block, f"student-{result.method}")
    io.save(student, folder, {"block": block, "method": result.method, "report": report, "run_config": config.to_dict()})
    report["saved"] = str(folder)
    log.info("distilled block %d with %s: %s", block, result.method, report)
    return report
