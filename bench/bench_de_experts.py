"""Distillation Experts' cost per step: the dense and grouped forms vs one matmul per expert.

    .venv/bin/python bench/bench_de_experts.py --threads 1

One forward and backward of `DistillationExperts` (users of one BPR batch: B entities, d_s -> d_t,
M experts) at several Gumbel temperatures τ, three ways: every expert on every entity as two wide
matmuls (`_dense_mixture`), only the kept (entity, expert) pairs as one zero-padded batch per
layer (`_grouped_mixture`), and the earlier form, a Python loop over the experts in use
(`per_expert_loop` below, the reference). All give the same loss (checked before timing). The
library picks dense or grouped by the largest group's share (`GROUPED_SHARE`); this table is what
that threshold rests on. Teacher rows are random, so the selection is as balanced as an untrained
selection network makes it.

A second table times the library's DE step with a share of the expert weights set subnormal
(`--subnormal-share`, as unused experts' weights become in long runs) with and without
`ccd.train.subnormals_flushed`.
"""

from __future__ import annotations

import argparse
import time

import torch

from ccd.distill.experts import GROUPED_SHARE, WEIGHT_FLOOR, DistillationExperts, gumbel_softmax
from ccd.train import subnormals_flushed


def per_expert_loop(de: DistillationExperts, student: torch.Tensor, teacher: torch.Tensor, tau: float,
                    generator: torch.Generator) -> torch.Tensor:
    """The earlier DE forward: one index_add per expert in use."""
    weights = gumbel_softmax(de.select(teacher), tau, generator)
    used = weights > WEIGHT_FLOOR
    mixed = torch.zeros_like(teacher)
    for m in torch.nonzero(used.any(dim=0)).flatten().tolist():
        rows = torch.nonzero(used[:, m]).flatten()
        mixed = mixed.index_add(0, rows, weights[rows, m, None] * de.expert(m, student[rows]))
    return (teacher - mixed).pow(2).sum(dim=1)


def milliseconds(step, repeats: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--student-dim", type=int, default=20)
    parser.add_argument("--teacher-dim", type=int, default=200)
    parser.add_argument("--experts", type=int, default=30)
    parser.add_argument("--taus", default="1,0.3,0.1,0.01,0.001")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--subnormal-share", type=float, default=0.02, help="share of expert weights set to 1e-40")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    de = DistillationExperts(args.student_dim, args.teacher_dim, args.experts, torch.Generator().manual_seed(0))
    student = torch.randn(args.entities, args.student_dim, generator=torch.Generator().manual_seed(1), requires_grad=True)
    teacher = torch.randn(args.entities, args.teacher_dim, generator=torch.Generator().manual_seed(2))
    print(f"B={args.entities}, d_s={args.student_dim}, d_t={args.teacher_dim}, M={args.experts}, {args.threads} thread(s)")
    print("| τ | pairs kept | largest group | dense (ms) | grouped (ms) | per-expert loop (ms) | library uses |")
    print("|---|---|---|---|---|---|---|")
    for tau in map(float, args.taus.split(",")):
        weights = lambda: gumbel_softmax(de.select(teacher), tau, torch.Generator().manual_seed(3))

        def grouped() -> torch.Tensor:
            w = weights()
            return (teacher - de._grouped_mixture(student, w, w > WEIGHT_FLOOR)).pow(2).sum(dim=1)

        forms = {
            "dense": lambda: (teacher - de._dense_mixture(student, weights())).pow(2).sum(dim=1),
            "grouped": grouped,
            "loop": lambda: per_expert_loop(de, student, teacher, tau, torch.Generator().manual_seed(3)),
        }
        reference = forms["loop"]()
        assert all(torch.allclose(form(), reference, rtol=1e-4, atol=1e-4) for form in forms.values())
        kept = weights() > WEIGHT_FLOOR
        largest = float(kept.sum(dim=0).max()) / args.entities
        times = [milliseconds(lambda form=form: form().sum().backward(), args.repeats) for form in forms.values()]
        uses = "grouped" if largest <= GROUPED_SHARE else "dense"
        print(f"| {tau:g} | {float(kept.float().mean()):.1%} | {largest:.0%} | " + " | ".join(f"{t:.1f}" for t in times)
              + f" | {uses} |", flush=True)
    subnormal_table(de, student, teacher, args)


def subnormal_table(de: DistillationExperts, student: torch.Tensor, teacher: torch.Tensor, args: argparse.Namespace) -> None:
    """The DE step at τ = 1 (dense form) with a share of the expert weights subnormal."""
    step = lambda: de(student, teacher, 1.0, torch.Generator().manual_seed(3)).sum().backward()
    clean = milliseconds(step, args.repeats)
    with torch.no_grad():
        for weight in (de.w1, de.w2):
            hit = torch.rand(weight.shape, generator=torch.Generator().manual_seed(4)) < args.subnormal_share
            weight[hit] = 1e-40
    subnormal = milliseconds(step, args.repeats)
    with subnormals_flushed():
        flushed = milliseconds(step, args.repeats)
    print(f"\n| expert weights | DE step at τ = 1 (ms) |\n|---|---|\n| normal | {clean:.1f} |")
    print(f"| {args.subnormal_share:.0%} subnormal | {subnormal:.1f} |\n| {args.subnormal_share:.0%} subnormal, flushed | {flushed:.1f} |")


if __name__ == "__main__":
    main()
