"""Distil a compact student from a frozen teacher with DE, RRD, IR-RRD or RD (DE-RRD §1, §4).

    signal = TeacherSignal.from_model(teacher, data, config.distill)
    result = distill(signal, data, config)                # result.student is a plain BPR-MF

The student is trained by the project's one loop (`ccd.train.train`) with a `Distiller` plugged
in as its extension. Per BPR batch of B triples (users U_b, positives I⁺_b, negatives I⁻_b, each
deduplicated) the step's loss is

    L = L_BPR + (1/B)·[ λ_DE·(DE(U_b) + ½(DE(I⁺_b) + DE(I⁻_b)))
                        + λ_RRD·Σ_{u∈U_b} RRD(u) + λ_IR·Σ_{i∈I⁺_b∪I⁻_b} IR-RRD(i) + λ_RD·Σ_{u∈U_b} RD(u) ]

With `distill.rrd_users = "all"` RRD's users are U_b plus the batch's share of a per-epoch
permutation of every user, so each known user is distilled once an epoch whether or not the
block has data for them.

The spec's λ's weigh terms against a BPR loss *summed* over the batch; the loop's BPR loss is a
mean, so the distillation sums are divided by B, which keeps the spec's ratios. Interesting and
uninteresting sets are redrawn at the start of every epoch and DE's Gumbel temperature follows
`experts.temperature(epoch - 1)`, so epoch 1 uses τ0 (the loop counts epochs from 1).

Which representations: both RRD and DE work on the student's *serving* representations
(`user_item_representations()["final"]`): RRD must rank with the scores the student serves, and
DE should shape the vectors those scores come from. For BPR-MF these are the embedding tables;
for a LightGCN student they are the propagated embeddings. CCD's code instead uses LightGCN's
layer-0 tables for RRD (spec B10), which trains a score the model never serves; we do not.
The teacher side of DE uses the teacher's "final" representations the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ccd.config import DistillConfig, RunConfig, TrainConfig
from ccd.data import BlockData
from ccd.distill.experts import DistillationExperts, temperature
from ccd.distill.rd import rank_weights, rd_loss
from ccd.distill.rrd import rrd_loss
from ccd.distill.sampling import PairSet, clean_lists, forbidden_pairs, sample_interesting, sample_uninteresting, teacher_lists
from ccd.errors import TrainingError
from ccd.models import BPRConfig, Batch, LightGCNConfig, Recommender, build_model
from ccd.train import TrainResult, Validator, pick_device, train

# The loss terms each method adds to the student's own BPR loss.
METHODS: dict[str, tuple[str, ...]] = {
    "none": (),
    "rd": ("rd",),
    "de": ("de",),
    "rrd": ("rrd",),
    "de-rrd": ("de", "rrd"),
    "rrd-ir": ("rrd", "ir"),
    "de-rrd-ir": ("de", "rrd", "ir"),
}


@dataclass(frozen=True)
class TeacherSignal:
    """What distillation reads from a frozen teacher.

    Attributes
    ----------
    dim : int
        The teacher's dimension (the student's default is a tenth of it).
    user_lists : torch.Tensor, shape (n_users, N), int64
        Each user's top-N unobserved items, best first (never a training pair, bug B1).
    item_lists : torch.Tensor, shape (n_items, N_I), int64, or None
        Each item's top unobserved users, for IR-RRD.
    user_reps, item_reps : torch.Tensor, shapes (n_users, d_t), (n_items, d_t), or None
        The teacher's representations, for DE.
    """

    dim: int
    user_lists: torch.Tensor
    item_lists: torch.Tensor | None = None
    user_reps: torch.Tensor | None = None
    item_reps: torch.Tensor | None = None

    @classmethod
    def from_lists(
        cls,
        user_lists: np.ndarray | torch.Tensor,
        item_lists: np.ndarray | torch.Tensor | None,
        data: BlockData,
        dim: int,
        representations: tuple[torch.Tensor, torch.Tensor] | None = None,
        device: torch.device | str | None = None,
    ) -> "TeacherSignal":
        """From ranked lists, e.g. `ccd.ensemble.read_topk` of the teacher ensemble's files.

        Observed pairs (`data.seen_train`) and -1 padding are dropped from the lists whatever
        their source (`clean_lists`), so no training item is ever interesting.
        """
        observed = PairSet(data.seen_train, data.n_items, device)
        users = clean_lists(user_lists, observed)
        items = None if item_lists is None else clean_lists(item_lists, observed.transposed(data.n_users))
        reps = (None, None) if representations is None else tuple(r.detach().to(device) for r in representations)
        return cls(dim, users, items, *reps)

    @classmethod
    @torch.no_grad()
    def from_model(
        cls,
        teacher: Recommender | Any,
        data: BlockData,
        config: DistillConfig,
        dim: int | None = None,
        representations: tuple[torch.Tensor, torch.Tensor] | None = None,
        device: torch.device | str | None = None,
        batch_users: int = TrainConfig.eval_batch_users,
    ) -> "TeacherSignal":
        """Rank every item for every user with `teacher.score`, in chunks, excluding seen pairs.

        Parameters
        ----------
        teacher : Recommender or Ensemble
            Anything with `score(users) -> (B, n_items)`.
        dim : int, optional
            Default `teacher.dim`.
        representations : (users, items), optional
            Default `teacher.user_item_representations()["final"]` when the teacher has them.
        """
        if representations is None and hasattr(teacher, "user_item_representations"):
            representations = teacher.user_item_representations()["final"]
        observed = PairSet(data.seen_train, data.n_items, device)
        n_item = config.top_n if "ir" in METHODS[config.method] else 0
        users, items = teacher_lists(teacher.score, data.n_users, data.n_items, observed, config.top_n, n_item, batch_users, device)
        reps = (None, None) if representations is None else tuple(r.detach().to(device) for r in representations)
        return cls(int(dim if dim is not None else teacher.dim), users, items, *reps)


class Distiller:
    """The `ccd.train.Extension` that adds DE, RRD, IR-RRD and RD terms to the student's loss.

    Parameters
    ----------
    student : Recommender
        A BPR-MF or LightGCN student (trained on BPR triples).
    teacher : TeacherSignal
    observed : np.ndarray, shape (E, 2)
        Training pairs seen so far; never interesting nor uninteresting.
    config : DistillConfig
    device : torch.device

    Attributes
    ----------
    experts : nn.ModuleDict
        "user" and "item" `DistillationExperts` (only with DE); discarded after training.
    interesting, uninteresting : torch.Tensor, shapes (n_users, K), (n_users, L)
        This epoch's sets (RRD).
    interesting_users, uninteresting_users : torch.Tensor, shapes (n_items, K_I), (n_items, L_I)
        This epoch's item-side sets (IR-RRD).
    tau : float
        This epoch's Gumbel-softmax temperature (DE).
    """

    def __init__(
        self, student: Recommender, teacher: TeacherSignal, observed: np.ndarray, config: DistillConfig, device: torch.device,
        n_train: int,
    ) -> None:
        self.student, self.teacher, self.config, self.device = student, teacher, config, device
        self.users_per_row = student.n_users / max(n_train, 1)  # all-user RRD: extra users per BPR triple
        self.terms = METHODS[config.method]
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.tau = config.tau_start
        self.experts = nn.ModuleDict()
        _check_signal(teacher, self.terms, config, student)
        if "de" in self.terms:
            self.teacher_users, self.teacher_items = teacher.user_reps.to(device), teacher.item_reps.to(device)
            init = torch.Generator().manual_seed(config.seed)
            d_t = teacher.user_reps.shape[1]
            for side in ("user", "item"):
                self.experts[side] = DistillationExperts(student.dim, d_t, config.n_experts, init)
            self.experts.to(device)
        observed_pairs = PairSet(observed, student.n_items, device)
        if "rrd" in self.terms:
            self.forbidden_items = forbidden_pairs(observed_pairs, teacher.user_lists.to(device))
            _check_pool(self.forbidden_items, student.n_users, student.n_items, config.n_uninteresting, "distill.n_uninteresting")
        if "ir" in self.terms:
            self.forbidden_users = forbidden_pairs(observed_pairs.transposed(student.n_users), teacher.item_lists.to(device))
            _check_pool(self.forbidden_users, student.n_items, student.n_users, config.n_uninteresting_users, "distill.n_uninteresting_users")
        if "rd" in self.terms:
            self.rd_items = teacher.user_lists[:, : config.rd_k].to(device)  # (n_users, K_RD)
            self.rd_weights = rank_weights(config.rd_k, config.rd_temperature, device)

    def parameters(self) -> Iterator[nn.Parameter]:
        """The experts' weights, trained with the student by the loop's Adam."""
        return self.experts.parameters()

    def start_epoch(self, epoch: int) -> None:
        """Redraw the interesting / uninteresting sets and anneal τ (epochs count from 1)."""
        c = self.config
        self.tau = temperature(epoch - 1, c.tau_start, c.tau_end, c.tau_period)
        if "rrd" in self.terms:
            lists = self.teacher.user_lists.to(self.device)
            self.interesting = sample_interesting(lists, c.n_interesting, c.sample_interesting, c.rank_temperature, self.generator)
            rows = torch.arange(self.student.n_users, device=self.device)
            self.uninteresting = sample_uninteresting(self.student.n_items, c.n_uninteresting, self.forbidden_items, rows, self.generator)
            if c.rrd_users == "all":  # drawn only then, so "batch" keeps the draws it always had
                self.user_order = torch.randperm(self.student.n_users, generator=self.generator, device=self.device)
                self.rows_done = 0
        if "ir" in self.terms:
            lists = self.teacher.item_lists.to(self.device)
            self.interesting_users = sample_interesting(
                lists, c.n_interesting_users, c.sample_interesting, c.rank_temperature, self.generator
            )
            rows = torch.arange(self.student.n_items, device=self.device)
            self.uninteresting_users = sample_uninteresting(
                self.student.n_users, c.n_uninteresting_users, self.forbidden_users, rows, self.generator
            )

    def loss(self, batch: Batch) -> torch.Tensor:
        """The batch's distillation terms, scaled to the loop's mean BPR loss (a scalar)."""
        c = self.config
        user_rep, item_rep = self.student.user_item_representations()["final"]  # (n_users, d), (n_items, d)
        users = torch.unique(batch.users)
        total = torch.zeros((), device=user_rep.device)
        if "de" in self.terms:
            pos, neg = torch.unique(batch.pos), torch.unique(batch.neg)
            de_user, de_item = self.experts["user"], self.experts["item"]
            t_users, t_items = self.teacher_users, self.teacher_items
            de = de_user(user_rep[users], t_users[users], self.tau, batch.generator).sum()
            de_items = sum(de_item(item_rep[i], t_items[i], self.tau, batch.generator).sum() for i in (pos, neg))
            total = total + c.lambda_de * (de + 0.5 * de_items)  # the paper's L_DE: items weigh half (specs/derrd.md)
        if "rrd" in self.terms:
            rrd_users = self._rrd_users(users, len(batch.users))
            scores = _pair_scores(user_rep[rrd_users], item_rep, self.interesting[rrd_users], self.uninteresting[rrd_users])
            total = total + c.lambda_rrd * rrd_loss(*scores).sum()
        if "ir" in self.terms:
            items = torch.unique(torch.cat([batch.pos, batch.neg]))
            scores = _pair_scores(item_rep[items], user_rep, self.interesting_users[items], self.uninteresting_users[items])
            total = total + c.lambda_ir * rrd_loss(*scores).sum()
        if "rd" in self.terms:
            scores = torch.einsum("bd,bkd->bk", user_rep[users], item_rep[self.rd_items[users]])  # (U, K_RD)
            total = total + c.lambda_rd * rd_loss(scores, self.rd_weights).sum()
        return total / len(batch.users)

    def _rrd_users(self, batch_users: torch.Tensor, rows: int) -> torch.Tensor:
        """The batch's users, plus (`rrd_users == "all"`) its share of this epoch's user order:
        the slice that brings the order up to this batch's place in the epoch."""
        if self.config.rrd_users == "batch":
            return batch_users
        start = round(self.rows_done * self.users_per_row)
        self.rows_done += rows
        extra = self.user_order[start:round(self.rows_done * self.users_per_row)]
        return torch.unique(torch.cat([batch_users, extra]))


def _pair_scores(
    rows: torch.Tensor, others: torch.Tensor, interesting: torch.Tensor, uninteresting: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inner products of each row (R, d) with its interesting (R, K) and uninteresting (R, L)
    entities of `others` (N, d): returns (R, K) and (R, L)."""
    score = lambda ids: torch.einsum("rd,rkd->rk", rows, others[ids])
    return score(interesting), score(uninteresting)


def _check_signal(teacher: TeacherSignal, terms: tuple[str, ...], config: DistillConfig, student: Recommender) -> None:
    """Fail early, with the setting to change, when the teacher lacks what a method needs."""
    if student.batch_kind != "pairs":
        raise TrainingError(f"distillation needs a student trained on BPR triples, not {student.kind}")
    if "de" in terms and teacher.user_reps is None:
        raise TrainingError(f"method {config.method!r} needs the teacher's representations (DE)")
    if "ir" in terms and teacher.item_lists is None:
        raise TrainingError(f"method {config.method!r} needs the teacher's item lists (IR-RRD)")
    needs = {
        "rrd": ("user", teacher.user_lists, config.n_interesting, "distill.n_interesting"),
        "rd": ("user", teacher.user_lists, config.rd_k, "distill.rd_k"),
        "ir": ("item", teacher.item_lists, config.n_interesting_users, "distill.n_interesting_users"),
    }
    for term in terms:
        if term in needs:
            side, lists, k, key = needs[term]
            if lists.shape[1] < k:
                raise TrainingError(
                    f"the teacher's {side} lists hold {lists.shape[1]} unobserved entries per row, fewer than "
                    f"{key}={k}: lower it or write longer teacher lists"
                )


def _check_pool(forbidden: PairSet, n_rows: int, n_cols: int, want: int, key: str) -> None:
    """Every row must keep `want` candidates outside its observed pairs and teacher list."""
    free = n_cols - int(forbidden.row_counts(n_rows).max())
    if free < want:
        raise TrainingError(
            f"a row has only {free} candidates outside its observed pairs and teacher list, fewer than "
            f"{key}={want}: lower distill.top_n or {key}"
        )


@dataclass
class DistillResult:
    """A distilled student and how its training went."""

    student: Recommender
    method: str
    train: TrainResult

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "student_dim": self.student.dim, "train": self.train.to_dict()}


def student_dim(config: DistillConfig, teacher_dim: int) -> int:
    """`config.student_dim`, or a tenth of the teacher's dimension (the paper's φ = 0.1), >= 1."""
    return config.student_dim or max(1, round(teacher_dim / 10))


def make_student(config: RunConfig, n_users: int, n_items: int, teacher_dim: int) -> Recommender:
    """A fresh student of `config.distill.student_kind`, seeded with `config.distill.seed`."""
    c = config.distill
    dim = student_dim(c, teacher_dim)
    if c.student_kind == "lightgcn":
        return build_model(LightGCNConfig(dim=dim, layers=config.teacher.lightgcn_layers, seed=c.seed), n_users, n_items)
    return build_model(BPRConfig(dim=dim, seed=c.seed), n_users, n_items)


def distill(
    teacher: TeacherSignal,
    data: BlockData,
    config: RunConfig,
    student: Recommender | None = None,
    progress: bool = True,
    validator: Validator | None = None,
    exclude_negatives: np.ndarray | None = None,
) -> DistillResult:
    """Train a student on `data` with `config.distill.method`, selecting on valid Recall@20.

    Parameters
    ----------
    teacher : TeacherSignal
        The frozen teacher's lists and representations (`from_model`, `from_lists`).
    data : BlockData
        Train pairs, valid pairs for early stopping; `seen_train` is never distilled.
    config : RunConfig
        `distill` (method, sets, λ's) and `train` (lr, batch size, epochs, patience).
    student : Recommender, optional
        Default `make_student(config, ...)`.
    validator : callable, optional
        Selection other than `data.valid`'s Recall@20 (`ccd.train.train`).
    exclude_negatives : np.ndarray, shape (E, 2), optional
        (user, item) pairs BPR never draws as negatives (`ccd.train.train`).

    Returns
    -------
    DistillResult
        With the best-validation student restored.
    """
    if config.distill.method not in METHODS:
        raise TrainingError(f"unknown distill.method {config.distill.method!r}; known: {', '.join(METHODS)}")
    student = student or make_student(config, data.n_users, data.n_items, teacher.dim)
    device = pick_device(config.train.device)
    student.to(device)
    extension = None
    if config.distill.method != "none":
        extension = Distiller(student, teacher, data.seen_train, config.distill, device, len(data.train))
    result = train(student, data, config.train, seed=config.distill.seed, progress=progress, extension=extension,
                   validator=validator, exclude_negatives=exclude_negatives)
    return DistillResult(student, config.distill.method, result)
