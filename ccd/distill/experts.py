"""Distillation Experts (DE, Kang et al. CIKM 2020 §2): transfer the teacher's representations.

A small student cannot hold the teacher's representation space, so DE does not regress student
embeddings onto teacher embeddings directly. M small experts E_m (d_s -> ⌊(d_s+d_t)/2⌋ -> d_t
two-layer MLPs) each map the student space into the teacher space, and a selection network
routes every entity to one expert from its *teacher* representation: entities close in the
teacher's space share an expert, which then specialises in reconstructing that region. The loss
of entity e with student row h_s and teacher row h_t is

    L_DE(e) = ‖ h_t − Σ_m s_m(e) · E_m(h_s) ‖²,    s(e) = Gumbel-softmax(W h_t + b; τ).

The temperature τ anneals per epoch from soft mixing to a near one-hot choice
(`temperature`). Users and items get separate `DistillationExperts`; all of it is discarded
after training, so the served student costs nothing extra.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Selection weights at or below this are treated as zero (see `DistillationExperts.forward`).
WEIGHT_FLOOR = 1e-8
# The grouped form pays about 1.4-2x per (entity, expert) slot what the dense form does
# (`bench/bench_de_experts.py`), so it runs only while its largest group holds at most this
# share of the entities.
GROUPED_SHARE = 0.4


def temperature(epoch: int, start: float, end: float, period: int) -> float:
    """Gumbel-softmax temperature of an epoch: τ_e = start · (end/start)^(e/period), at least `end`.

    The authors' schedule (spec §2): epoch 0 uses `start`; with their 1, 1e-10 and 1000 (the
    `distill.tau_*` defaults) τ ≈ 0.1 at epoch 100 and ≈ 3e-3 at epoch 250, so selection is soft
    early and near one-hot later.

    Example
    -------
    >>> round(temperature(100, 1.0, 1e-10, 1000), 6)
    0.1
    """
    if epoch < 0 or period < 1 or not 0 < end <= start:
        raise ValueError(f"need epoch >= 0, period >= 1 and 0 < end <= start, got {epoch}, {period}, {end}, {start}")
    return max(start * (end / start) ** (epoch / period), end)


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Relaxed one-hot sample of each row: softmax((log_softmax(logits) + g) / τ), g ~ Gumbel(0, 1).

    `log_softmax` differs from the logits by a per-row constant, so this equals the authors'
    softmax over log(α + 1e-10) without their epsilon. The noise comes from `generator` so a
    run is reproducible without torch's global state.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, M)
    tau : float
        > 0; small values give near one-hot rows.

    Returns
    -------
    torch.Tensor, shape (B, M)
        Rows on the simplex.
    """
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    tiny = torch.finfo(logits.dtype).tiny
    gumbel = -torch.log(-torch.log(uniform.clamp_min(tiny)))  # (B, M)
    return torch.softmax((F.log_softmax(logits, dim=1) + gumbel) / tau, dim=1)


def hidden_width(student_dim: int, teacher_dim: int) -> int:
    """Expert hidden width: ⌊(d_s + d_t)/2⌋, or d_s/2 for self-distillation (d_s = d_t), spec §2."""
    if student_dim == teacher_dim:
        return max(student_dim // 2, 1)
    return (student_dim + teacher_dim) // 2


class DistillationExperts(nn.Module):
    """M experts and a selection network for one side (users or items).

    The M experts are stored as stacked weight tensors, each initialised like `nn.Linear`.

    Parameters
    ----------
    student_dim, teacher_dim : int
        d_s and d_t.
    n_experts : int
        M (30 in the authors' code). With M = 1 the selection is skipped (s = 1).
    generator : torch.Generator, optional
        Seeds the initial weights.

    Attributes
    ----------
    w1 : nn.Parameter, shape (M, d_s, H);  b1 : shape (M, H)
    w2 : nn.Parameter, shape (M, H, d_t);  b2 : shape (M, d_t)
    select : nn.Linear, d_t -> M
    """

    def __init__(self, student_dim: int, teacher_dim: int, n_experts: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if min(student_dim, teacher_dim, n_experts) < 1:
            raise ValueError(f"dims and n_experts must be >= 1, got {student_dim}, {teacher_dim}, {n_experts}")
        hidden = hidden_width(student_dim, teacher_dim)
        self.student_dim, self.teacher_dim, self.n_experts = student_dim, teacher_dim, n_experts
        self.w1 = nn.Parameter(_linear_init((n_experts, student_dim, hidden), student_dim, generator))
        self.b1 = nn.Parameter(_linear_init((n_experts, hidden), student_dim, generator))
        self.w2 = nn.Parameter(_linear_init((n_experts, hidden, teacher_dim), hidden, generator))
        self.b2 = nn.Parameter(_linear_init((n_experts, teacher_dim), hidden, generator))
        self.select = nn.Linear(teacher_dim, n_experts)
        with torch.no_grad():
            self.select.weight.copy_(_linear_init(self.select.weight.shape, teacher_dim, generator))
            self.select.bias.copy_(_linear_init(self.select.bias.shape, teacher_dim, generator))

    def expert(self, m: int, student: torch.Tensor) -> torch.Tensor:
        """E_m(x) = W2 · ReLU(W1 x + b1) + b2 of expert m: student (B, d_s) -> (B, d_t)."""
        return torch.relu(student @ self.w1[m] + self.b1[m]) @ self.w2[m] + self.b2[m]

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, tau: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """DE loss of each entity.

        While the selection is soft every expert runs on every entity as two wide matmuls
        (`_dense_mixture`). Once τ is small it is near one-hot, and only (entity, expert) pairs
        with selection weight above `WEIGHT_FLOOR` are computed (`_grouped_mixture`), ~1/M of
        the work; the pairs left out change the reconstruction by less than M · 1e-8 of an
        expert's output, below float32 resolution.

        Parameters
        ----------
        student : torch.Tensor, shape (B, d_s)
            Student representations (trainable).
        teacher : torch.Tensor, shape (B, d_t)
            Frozen teacher representations of the same entities.
        tau : float
            Gumbel-softmax temperature of the current epoch (`temperature`).

        Returns
        -------
        torch.Tensor, shape (B,)
            Squared L2 reconstruction error, summed over the d_t dimensions.
        """
        teacher = teacher.detach()
        if self.n_experts == 1:
            return (teacher - self.expert(0, student)).pow(2).sum(dim=1)
        weights = gumbel_softmax(self.select(teacher), tau, generator)  # (B, M)
        kept = weights > WEIGHT_FLOOR  # every row keeps its largest weight (>= 1/M)
        if kept.sum(dim=0).max() > GROUPED_SHARE * len(student):
            mixed = self._dense_mixture(student, weights)
        else:
            mixed = self._grouped_mixture(student, weights, kept)
        return (teacher - mixed).pow(2).sum(dim=1)

    def _dense_mixture(self, student: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Σ_m s_m · E_m(h_s) over every expert, (B, d_t): the M hidden layers side by side,
        each scaled by its weight, then one matmul with the stacked second layers."""
        m, hidden = self.n_experts, self.w1.shape[2]
        first = self.w1.permute(1, 0, 2).reshape(self.student_dim, m * hidden)  # (d_s, M*H)
        hidden_out = torch.relu(student @ first + self.b1.reshape(1, -1))  # (B, M*H)
        scaled = (hidden_out.view(-1, m, hidden) * weights[:, :, None]).reshape(-1, m * hidden)
        return scaled @ self.w2.reshape(m * hidden, self.teacher_dim) + weights @ self.b2

    def _grouped_mixture(self, student: torch.Tensor, weights: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """Σ_m s_m · E_m(h_s) over the kept pairs only, (B, d_t).

        The pairs fill an (M, R_max) grid of slots, zero-padded to the largest group, so each
        layer is one `baddbmm`; a padded slot has weight 0 and adds nothing.
        """
        experts, rows = torch.nonzero(kept.T, as_tuple=True)  # (P,), (P,): grouped by expert
        counts = torch.bincount(experts, minlength=self.n_experts)  # (M,)
        slot = torch.arange(len(rows), device=rows.device) - (torch.cumsum(counts, 0) - counts)[experts]  # place in its group
        grid = (self.n_experts, int(counts.max()))
        inputs = student.new_zeros(*grid, self.student_dim).index_put((experts, slot), student[rows])  # (M, R_max, d_s)
        slot_weights = weights.new_zeros(grid).index_put((experts, slot), weights[rows, experts])  # (M, R_max)
        slot_rows = rows.new_zeros(grid).index_put((experts, slot), rows)  # (M, R_max)
        hidden = torch.relu(torch.baddbmm(self.b1[:, None], inputs, self.w1))  # (M, R_max, H)
        outputs = torch.baddbmm(self.b2[:, None], hidden, self.w2) * slot_weights[..., None]  # (M, R_max, d_t)
        mixed = weights.new_zeros(len(student), self.teacher_dim)
        return mixed.index_add(0, slot_rows.flatten(), outputs.reshape(-1, self.teacher_dim))


def _linear_init(shape: tuple[int, ...] | torch.Size, fan_in: int, generator: torch.Generator | None) -> torch.Tensor:
    """U(-1/√fan_in, 1/√fan_in), `nn.Linear`'s default for weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)
