"""Stage 4 of a CCD block: distill the student served after block k from the teacher (spec 2.2).

    result = distill_block(topk_dir, data, config, teacher_dim, start=d_prev)   # result.student is D_k

A student is trained on block k with BPR plus RRD (each user's top teacher items against sampled
uninteresting ones) and IR-RRD (each item's top teacher users), read from the ensemble's top-K
lists on disk (`ccd.ensemble.write_topk`), by the DE-RRD trainer (`ccd.distill.trainer.distill`).
Observed training pairs are never interesting (no bug B1).

The authors start it from random tables; then its knowledge of users absent from block k comes
from the teacher's lists alone, in the few steps a small block gives. By default
(`continual.kd_init = "updated"`) the loop passes CCD's updated student CL_k instead (stage 1's
model, trained on block k with the proxies' replay), so what stage 1 learned reaches the served
student; with "previous" it is D_{k-1}, grown for the new ids. Either way D_k is a new model
distilled from the updated teacher. Block 0's D_0 always starts fresh.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ccd.config import RunConfig
from ccd.continual.updates import grown
from ccd.data import BlockData
from ccd.distill.trainer import DistillResult, TeacherSignal, distill
from ccd.ensemble import ITEM_TOPK, USER_TOPK, read_topk
from ccd.models import Recommender
from ccd.train import Validator, pick_device

# CCD distils with RRD and IR-RRD only: an ensemble has no representation of its own for DE.
KD_METHOD = "rrd-ir"


def distill_config(config: RunConfig) -> RunConfig:
    """`config` with the settings of CCD's stage 4: method, loss weights and batch size."""
    c = config.continual
    return config.replace(
        train=dataclasses.replace(config.train, batch_size=c.kd_batch_size),
        distill=dataclasses.replace(config.distill, method=KD_METHOD, lambda_rrd=c.kd_lambda_rrd, lambda_ir=c.kd_lambda_ir),
    )


def distill_block(
    topk_dir: Path,
    data: BlockData,
    config: RunConfig,
    teacher_dim: int,
    start: Recommender | None = None,
    progress: bool = True,
    validator: Validator | None = None,
    exclude_negatives: np.ndarray | None = None,
) -> DistillResult:
    """A student distilled on `data` from the teacher lists in `topk_dir`.

    Parameters
    ----------
    topk_dir : Path
        Holds `user_topk.parquet` and `item_topk.parquet` of the ensemble after block k.
    data : BlockData
        Block k: BPR on its train split, selection on its valid split.
    config : RunConfig
        `distill` (student kind and size, sampled set sizes, seed), `continual` (λ's), `train`.
    teacher_dim : int
        The members' largest dimension (the student's default size is a tenth of it).
    start : Recommender, optional
        The student to start from, D_{k-1} (or CL_k, `kd_init == "updated"`): unless
        `continual.kd_init == "fresh"` the student starts from a grown copy of it (not
        modified), else from random tables.
    validator : callable, optional
        Selection other than block k's valid split (`ccd.continual.selection`).
    exclude_negatives : np.ndarray, shape (E, 2), optional
        Pairs never drawn as BPR negatives (`Run.kd_negatives`).
    """
    users, _ = read_topk(Path(topk_dir) / USER_TOPK)
    items, _ = read_topk(Path(topk_dir) / ITEM_TOPK)
    signal = TeacherSignal.from_lists(users, items, data, teacher_dim, device=pick_device(config.train.device))
    student = None
    if start is not None and config.continual.kd_init != "fresh":
        student = grown(start.to(pick_device(config.train.device)), data, config)
    return distill(signal, data, distill_config(config), student=student, progress=progress,
                   validator=validator, exclude_negatives=exclude_negatives)
