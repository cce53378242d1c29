"""DE-RRD's pure pieces against direct formulas on tiny hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from ccd.distill.experts import DistillationExperts, gumbel_softmax, hidden_width, temperature
from ccd.distill.rd import rank_weights, rd_loss
from ccd.distill.rrd import rrd_loss
from planted import single_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


def direct_rrd(interesting: list[float], uninteresting: list[float]) -> float:
    """-log Π_k exp(s_k) / (Σ_{i>=k} exp(s_i) + Σ_j exp(t_j)), term by term in float64."""
    rest = sum(math.exp(t) for t in uninteresting)
    total = 0.0
    for k, s in enumerate(interesting):
        total -= math.log(math.exp(s) / (sum(math.exp(x) for x in interesting[k:]) + rest))
    return total


# --- RRD


def test_rrd_hand_computed_value():
    # -log( e²/(e²+e+1) · e/(e+1) ) computed by hand = 0.720868
    loss = rrd_loss(torch.tensor([[2.0, 1.0]]), torch.tensor([[0.0]]))
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(0.7208677, abs=1e-6)


def test_rrd_matches_direct_formula_per_row():
    interesting = torch.tensor([[0.5, -1.0, 2.0], [3.0, 1.0, 0.2], [0.0, 0.0, 0.0]])
    uninteresting = torch.tensor([[0.1, -0.3], [1.5, 2.5], [-4.0, 0.0]])
    loss = rrd_loss(interesting, uninteresting)
    expected = [direct_rrd(i.tolist(), u.tolist()) for i, u in zip(interesting, uninteresting)]
    assert loss.shape == (3,)
    assert loss.tolist() == pytest.approx(expected, rel=1e-5)


def test_rrd_without_uninteresting_is_plackett_luce():
    scores = torch.tensor([[1.0, 0.0, -1.0]])
    assert rrd_loss(scores, torch.zeros(1, 0)).item() == pytest.approx(direct_rrd([1.0, 0.0, -1.0], []), rel=1e-6)


def test_rrd_prefers_teacher_order_and_interesting_above_uninteresting():
    good = rrd_loss(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[-2.0, -3.0]]))
    reversed_order = rrd_loss(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[-2.0, -3.0]]))
    swapped_sets = rrd_loss(torch.tensor([[-2.0, -3.0, -4.0]]), torch.tensor([[3.0, 2.0]]))
    assert good.item() < reversed_order.item() < swapped_sets.item()


def test_rrd_order_of_uninteresting_does_not_matter():
    interesting = torch.tensor([[1.0, 0.5]])
    a = rrd_loss(interesting, torch.tensor([[0.3, -1.0, 2.0]]))
    b = rrd_loss(interesting, torch.tensor([[2.0, 0.3, -1.0]]))
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_rrd_is_stable_for_large_scores_and_shift_invariant():
    interesting = torch.tensor([[2.0, 1.5, -0.5, 0.3]])
    uninteresting = torch.tensor([[0.0, 1.0, -2.0]])
    base = rrd_loss(interesting, uninteresting)
    shifted_i = (interesting + 1e3).requires_grad_()
    shifted_u = (uninteresting + 1e3).requires_grad_()
    big = rrd_loss(shifted_i, shifted_u)
    big.sum().backward()
    assert torch.isfinite(big).all()
    assert big.item() == pytest.approx(base.item(), abs=2e-3)  # float32 at 1e3: ~1e-4 resolution
    assert torch.isfinite(shifted_i.grad).all() and torch.isfinite(shifted_u.grad).all()
    # Widely spread scores (exp would overflow float32 at 89) stay finite too.
    spread = torch.tensor([[500.0, -500.0]], requires_grad=True)
    loss = rrd_loss(spread, torch.tensor([[-800.0]]))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(spread.grad).all()


def test_rrd_gradients_match_finite_differences():
    interesting = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    uninteresting = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    assert torch.autograd.gradcheck(rrd_loss, (interesting, uninteresting))


def test_rrd_rejects_bad_shapes():
    with pytest.raises(ValueError):
        rrd_loss(torch.zeros(2, 3), torch.zeros(3, 2))


# --- DE


AUTHORS = (1.0, 1e-10, 1000)  # start, end, period: the authors' schedule, `distill.tau_*`


def test_temperature_schedule_values():
    assert temperature(0, *AUTHORS) == 1.0
    assert temperature(100, *AUTHORS) == pytest.approx(0.1, rel=1e-9)
    assert temperature(250, *AUTHORS) == pytest.approx(10 ** -2.5, rel=1e-9)
    assert temperature(1000, *AUTHORS) == pytest.approx(1e-10, rel=1e-9)
    assert temperature(5000, *AUTHORS) == 1e-10  # clipped at the end value
    assert temperature(10, start=2.0, end=0.5, period=20) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        temperature(-1, *AUTHORS)


def test_hidden_width():
    assert hidden_width(20, 200) == 110  # the authors' 20 -> 110 -> 200
    assert hidden_width(21, 200) == 110
    assert hidden_width(200, 200) == 100  # self-distillation: d_s / 2


def test_gumbel_softmax_rows_are_distributions_and_reproducible():
    logits = torch.tensor([[0.0, 1.0, 2.0], [5.0, 0.0, 0.0]])
    a = gumbel_softmax(logits, 1.0, torch.Generator().manual_seed(3))
    b = gumbel_softmax(logits, 1.0, torch.Generator().manual_seed(3))
    assert a.shape == (2, 3)
    assert torch.equal(a, b)
    assert torch.allclose(a.sum(1), torch.ones(2))
    hard = gumbel_softmax(logits, 1e-10, torch.Generator().manual_seed(3))
    assert torch.equal(hard.max(1).values, torch.ones(2))  # near one-hot at tiny tau


def test_gumbel_softmax_selects_by_probability():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(20000, -1)
    hard = gumbel_softmax(logits, 1e-10, torch.Generator().manual_seed(0))
    share = hard.argmax(1).bincount(minlength=3).double() / len(hard)
    assert share.tolist() == pytest.approx([0.7, 0.2, 0.1], abs=0.015)


@pytest.mark.parametrize("tau", [0.5, 0.01])  # soft: every expert used; sharp: near one-hot, pairs skipped
@pytest.mark.parametrize("grouped_share", [0.0, 1.0])  # always the dense form; always the grouped form
def test_distillation_experts_shapes_and_direct_formula(tau, grouped_share, monkeypatch):
    monkeypatch.setattr("ccd.distill.experts.GROUPED_SHARE", grouped_share)
    de = DistillationExperts(3, 5, n_experts=4, generator=torch.Generator().manual_seed(0))
    assert (de.w1.shape, de.w2.shape, de.select.out_features) == ((4, 3, 4), (4, 4, 5), 4)
    student = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    teacher = torch.randn(6, 5, generator=torch.Generator().manual_seed(2))
    loss = de(student, teacher, tau, torch.Generator().manual_seed(9))
    assert loss.shape == (6,)
    # Direct: s = Gumbel-softmax of the selection logits (same noise), expert m = W2 relu(W1 x + b1) + b2.
    s = gumbel_softmax(de.select(teacher), tau, torch.Generator().manual_seed(9))
    expected = torch.zeros(6)
    for e in range(6):
        mixed = sum(s[e, m] * (torch.relu(student[e] @ de.w1[m] + de.b1[m]) @ de.w2[m] + de.b2[m]) for m in range(4))
        expected[e] = ((teacher[e] - mixed) ** 2).sum()
    assert torch.allclose(loss, expected, rtol=1e-5)
    # The grouped, padded batch must route gradients like the direct formula does.
    direct = torch.autograd.grad(expected.sum(), [student, de.w1, de.w2, de.b1])
    loss.sum().backward()
    grads = [student.grad, de.w1.grad, de.w2.grad, de.b1.grad]
    assert all(torch.allclose(g, d, rtol=1e-4, atol=1e-6) for g, d in zip(grads, direct))
    assert torch.isfinite(de.select.weight.grad).all()


def test_distillation_experts_teacher_is_not_trained_and_single_expert_skips_selection():
    de = DistillationExperts(2, 3, n_experts=1, generator=torch.Generator().manual_seed(0))
    student = torch.randn(4, 2)
    teacher = torch.randn(4, 3, requires_grad=True)
    loss = de(student, teacher, 1e-10)
    expert = torch.relu(student @ de.w1[0] + de.b1[0]) @ de.w2[0] + de.b2[0]
    direct = ((teacher - expert) ** 2).sum(1)
    assert torch.allclose(loss, direct)
    loss.sum().backward()
    assert teacher.grad is None  # the frozen teacher gets no gradient through DE


def test_distillation_experts_learn_a_mapping():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(64, 4, generator=gen)
    teacher = student @ torch.randn(4, 8, generator=gen)  # a linear map the experts can fit
    de = DistillationExperts(4, 8, n_experts=3, generator=gen)
    opt = torch.optim.Adam(de.parameters(), lr=3e-2)
    first = de(student, teacher, 1.0, gen).mean().item()
    for _ in range(50):
        opt.zero_grad()
        de(student, teacher, 1.0, gen).mean().backward()
        opt.step()
    assert de(student, teacher, 1.0, gen).mean().item() < 0.1 * first


# --- RD


def test_rank_weights_and_rd_loss_direct():
    w = rank_weights(3, 2.0)
    raw = [math.exp(-r / 2.0) for r in (1, 2, 3)]
    assert w.tolist() == pytest.approx([x / sum(raw) for x in raw], rel=1e-6)
    scores = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]], requires_grad=True)
    loss = rd_loss(scores, w)
    sig = lambda x: 1 / (1 + math.exp(-x))
    expected = [-sum(wr * math.log(sig(s)) for wr, s in zip(w.tolist(), row)) for row in scores.tolist()]
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)
    loss.sum().backward()
    assert torch.isfinite(scores.grad).all() and (scores.grad < 0).all()  # pushes every listed score up
    assert torch.isfinite(rd_loss(torch.tensor([[-1e4, 1e4, 0.0]]), w)).all()
    with pytest.raises(ValueError):
        rd_loss(scores, rank_weights(2, 1.0))
