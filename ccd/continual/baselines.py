"""The baselines CCD is compared with, on the same blocks and the same evaluation.

All share block 0 with CCD (teacher, ensemble and the first distilled student D_0) and differ
in how the served student follows the later blocks:

- `finetune`: the previous student grown and trained on the new block only, BPR alone: fast,
  plastic, forgets.
- `retrain`: a fresh student trained from scratch on every training pair so far: the upper
  reference for accuracy and the cost reference (it grows with the stream).
- `kd`: the teacher members fine-tuned on the new block with BPR only, ensembled, and a new
  student distilled from them (CCD without its collaborative terms; `teacher_update.update_member`
  with `collaborative=False`, then the same distillation).
- `lwckd-student`: LWC-KD applied to the student itself against its previous state, no teacher.

Fine-tuning updates use CCD's update budget (`continual.update_*`), so they cost the same as
CCD's student update; the retrain uses the full `train` budget, as block 0's models do.
"""

from __future__ import annotations

import numpy as np

from ccd.config import RunConfig
from ccd.continual.lwckd import LwcKd
from ccd.continual.updates import grown, update_config
from ccd.data import BlockData
from ccd.distill.trainer import make_student
from ccd.models import Recommender
from ccd.train import TrainResult, Validator, pick_device, train


def finetune_student(
    student: Recommender, data: BlockData, config: RunConfig, seed: int = 0, progress: bool = True,
    validator: Validator | None = None,
) -> tuple[Recommender, TrainResult]:
    """The previous student (not modified) grown to block k and trained on it with BPR."""
    student.to(pick_device(config.train.device)).eval()
    model = grown(student, data, config)
    return model, train(model, data, update_config(config), seed=seed, progress=progress, validator=validator)


def lwckd_student(
    student: Recommender,
    data: BlockData,
    previous_train: np.ndarray,
    config: RunConfig,
    seed: int = 0,
    progress: bool = True,
    validator: Validator | None = None,
) -> tuple[Recommender, TrainResult]:
    """The previous student grown and trained on block k with BPR + LWC-KD against itself at k-1."""
    student.to(pick_device(config.train.device)).eval()
    model = grown(student, data, config)
    extension = LwcKd(model, student, previous_train, data.train, config.continual)
    return model, train(model, data, update_config(config), seed=seed, progress=progress, extension=extension,
                        validator=validator)


def cumulative(data: BlockData) -> BlockData:
    """Block k's splits with every training pair so far as its train split (for `retrain`)."""
    return BlockData(data.block, data.n_users, data.n_items, data.seen_train, data.valid, data.test, np.zeros((0, 2), np.int64))


def retrain_student(
    data: BlockData, config: RunConfig, teacher_dim: int, progress: bool = True,
    validator: Validator | None = None,
) -> tuple[Recommender, TrainResult]:
    """A fresh student (the distilled students' kind and size) trained with BPR on all training
    pairs of blocks 0..k, selected on block k's valid split (or `validator`)."""
    everything = cumulative(data)
    model = make_student(config, everything.n_users, everything.n_items, teacher_dim)
    return model, train(model, everything, config.train, seed=config.distill.seed, progress=progress,
                        validator=validator)
