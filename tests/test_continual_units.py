"""Stages of the CCD loop on tiny in-memory streams: LWC-KD by id (B8), weights that weight
(B7), replay loss, proxies, student and teacher updates, exclusion lists, evaluation."""

from __future__ import annotations

import dataclasses
import math
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ccd.config import ContinualConfig, GateConfig, RunConfig
from ccd.continual.distill_stage import distill_block
from ccd.continual.evaluation import evaluate_block, gate_metrics, lead_over, plot_hmean, plot_lead, summaries
from ccd.continual.exclusion import cap, list_pairs, top_pairs
from ccd.continual.lwckd import LwcKd, contrastive_kd_loss, imitation_weights, layer_tables
from ccd.continual.replay import ReplayLoss, ReplaySet, top_items
from ccd.continual.state import Layout
from ccd.continual.student_update import make_proxies, same_tables, update_student
from ccd.continual import teacher_update
from ccd.continual.teacher_update import MemberSources, ranked_sources, ranks_proxies, update_member
from ccd.continual.updates import ProxyReplay, clone, recent_items
from ccd.data import BlockData
from ccd.ensemble import write_topk
from ccd.errors import BadInputError
from ccd.models import Batch, BPRConfig, BPRMF, LightGCNConfig, VAEConfig, build_model
from ccd.train import train, validate
from planted import single_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_stream(n_blocks: int = 2, n_users: int = 80, n_items: int = 48, new: int = 8, groups: int = 4,
                per_user: int = 8, seed: int = 0) -> list[BlockData]:
    """Blocks of a planted stream: user u likes items of group u % groups; each later block
    brings `new` users and items and brings back half of the old users. Per active user 1 valid,
    1 test, the rest train; ids are cumulative, as the lake assigns them."""
    rng = np.random.default_rng(seed)
    blocks, history = [], np.zeros((0, 2), np.int64)
    users_so_far, items_so_far = n_users, n_items
    for k in range(n_blocks):
        if k:
            users_so_far, items_so_far = users_so_far + new, items_so_far + new
            old = rng.choice(users_so_far - new, (users_so_far - new) // 2, replace=False)
            active = np.concatenate([old, np.arange(users_so_far - new, users_so_far)])
        else:
            active = np.arange(users_so_far)
        splits = {"train": [], "valid": [], "test": []}
        for u in active:
            pool = np.flatnonzero(np.arange(items_so_far) % groups == u % groups)
            items = rng.choice(pool, min(per_user, len(pool)), replace=False)
            splits["valid"].append((u, items[0]))
            splits["test"].append((u, items[1]))
            splits["train"] += [(u, i) for i in items[2:]]
        arrays = {s: np.array(p, np.int64).reshape(-1, 2) for s, p in splits.items()}
        blocks.append(BlockData(k, users_so_far, items_so_far, arrays["train"], arrays["valid"], arrays["test"], history))
        history = np.concatenate([history, arrays["train"]])
    return blocks


def tiny_config(**continual) -> RunConfig:
    base = RunConfig.load(None, ["train.device=cpu", "train.max_epochs=15", "train.batch_size=128", "train.lr=0.05",
                                 "continual.update_epochs=4", "continual.update_batch_size=64", "continual.update_lr=0.01"])
    return base.replace(continual=dataclasses.replace(base.continual, **continual))


def trained(kind_config, data: BlockData, config: RunConfig):
    model = build_model(kind_config, data.n_users, data.n_items)
    train(model, data, config.train, progress=False)
    return model


# --- LWC-KD


def test_weights_actually_weight_the_contrastive_loss():
    """B7: per-anchor weights change the loss to the weighted mean of the anchors' terms."""
    torch.manual_seed(0)
    anchors, candidates = torch.randn(3, 4), torch.randn(5, 4)
    rows, cols = torch.tensor([0, 1, 1, 2]), torch.tensor([1, 0, 3, 4])
    logp = torch.log_softmax(anchors @ candidates.T / 2.0, dim=1)
    terms = torch.stack([logp[0, 1], (logp[1, 0] + logp[1, 3]) / 2, logp[2, 4]])
    weights = torch.tensor([3.0, 1.0, 0.0])
    weighted = contrastive_kd_loss(anchors, candidates, rows, cols, tau=2.0, weights=weights)
    assert torch.allclose(weighted, -(weights * terms).sum() / weights.sum())
    plain = contrastive_kd_loss(anchors, candidates, rows, cols, tau=2.0)
    assert torch.allclose(plain, -terms.mean()) and not torch.allclose(weighted, plain)
    assert torch.allclose(contrastive_kd_loss(anchors, candidates, rows, cols, 2.0, torch.full((3,), 7.0)), plain)


def test_imitation_weights_follow_the_shift_of_taste():
    model = BPRMF(BPRConfig(dim=2), n_users=3, n_items=4)
    with torch.no_grad():
        model.user_emb.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        model.item_emb.copy_(torch.tensor([[1.0, 0.1], [-1.0, 0.0], [0.9, 0.0], [0.0, 1.0]]))
    # user 0 picks items like its taste, user 1 the opposite, user 2 only a new item (id 9)
    pairs = np.array([[0, 0], [0, 2], [1, 1], [2, 9]])
    weights = imitation_weights(model, pairs, temperature=0.5)
    assert weights.shape == (3,)
    assert weights[0] > 0.95 and weights[1] < math.exp(-3.9) and weights[2] == 1.0


def _pair_batch(users, pos) -> Batch:
    users, pos = torch.tensor(users), torch.tensor(pos)
    return Batch(users, pos, pos.clone(), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("moves", ["block", "all"])
def test_lwckd_reads_previous_embeddings_by_id_not_by_position(moves):
    """B8: with active ids {1, 4} and {2, 5, 7}, a positional lookup would read rows 0, 1, 2."""
    torch.manual_seed(0)
    previous = BPRMF(BPRConfig(dim=3, seed=1), n_users=6, n_items=8)
    previous_train = np.array([[1, 2], [1, 7], [4, 5], [4, 7]])
    model = clone(previous)
    model.grow(7, 9, np.array([[6, 8], [4, 8]]), init="random", k=20)
    with torch.no_grad():
        model.user_emb.add_(torch.randn_like(model.user_emb))
        model.item_emb.add_(torch.randn_like(model.item_emb))
    config = ContinualConfig(lwckd_weight=1.0, lwckd_tau=0.5, piw=False, graph_degree=1, lwckd_moves=moves)
    ext = LwcKd(model, previous, previous_train, np.array([[4, 8]]), config)
    batch = _pair_batch([1, 4, 6], [7, 5, 8])  # user 6 and item 8 are new: no anchor
    loss = ext.loss(batch)

    prev_u, prev_i = previous.user_emb.detach(), previous.item_emb.detach()
    cur_u, cur_i = model.user_emb.detach(), model.item_emb.detach()
    users_c, items_c = [1, 4], [2, 5, 7]

    def term(anchor_rows, candidates, cand_ids, positives):
        values = []
        for a, pos in positives.items():
            logp = torch.log_softmax(anchor_rows[a] @ candidates[cand_ids].T / 0.5, dim=0)
            values.append(torch.stack([logp[cand_ids.index(p)] for p in pos]).mean())
        return -torch.stack(values).mean()

    neighbours = lambda csr, a: [int(x) for x in csr[1][csr[0][a]:csr[0][a + 1]]]
    expected = (
        term(prev_u, cur_i, items_c, {1: [2, 7], 4: [5, 7]})
        + term(prev_i, cur_u, users_c, {7: [1, 4], 5: [4]})
        + term(prev_u, cur_u, users_c, {a: neighbours(ext.user_users, a) for a in (1, 4) if neighbours(ext.user_users, a)})
        + term(prev_i, cur_i, items_c, {a: neighbours(ext.item_items, a) for a in (7, 5) if neighbours(ext.item_items, a)})
    )
    assert torch.allclose(loss, expected, atol=1e-5)  # the same loss either way; only gradients differ
    loss.backward()
    grad_u, grad_i = model.user_emb.grad, model.item_emb.grad
    assert grad_u[4].abs().sum() > 0 and grad_u[[0, 2, 3, 5, 6]].abs().sum() == 0  # only candidates get gradients
    if moves == "all":
        assert grad_u[1].abs().sum() > 0 and grad_i[[2, 5, 7]].abs().sum() > 0
    else:  # only user 4 has pairs in the new block; no candidate item does
        assert grad_u[1].abs().sum() == 0 and grad_i.abs().sum() == 0


def test_lightgcn_lwckd_compares_the_ego_tables_and_one_propagation():
    data = tiny_stream(1)[0]
    model = build_model(LightGCNConfig(dim=4, layers=2), data.n_users, data.n_items)
    model.set_interactions(data.train)
    (users_0, items_0), (users_1, items_1) = layer_tables(model)
    assert torch.equal(users_0, model.user_emb) and torch.equal(items_0, model.item_emb)
    # layer 1 by hand: the dense symmetric normalisation D^-1/2 A D^-1/2 of the user-item graph
    n = data.n_users + data.n_items
    adjacency = torch.zeros(n, n)
    u, i = torch.as_tensor(data.train[:, 0]), torch.as_tensor(data.train[:, 1]) + data.n_users
    adjacency[u, i] = adjacency[i, u] = 1.0
    inv_sqrt = adjacency.sum(1).clamp(min=1).rsqrt()
    propagated = (inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]) @ torch.cat([model.user_emb, model.item_emb]).detach()
    assert torch.allclose(users_1, propagated[: data.n_users], atol=1e-6)
    assert torch.allclose(items_1, propagated[data.n_users :], atol=1e-6)
    bpr = build_model(BPRConfig(dim=4), data.n_users, data.n_items)
    assert len(layer_tables(bpr)) == 1


# --- replay


def test_replay_loss_chunks_labels_annealing_and_redraws():
    model = BPRMF(BPRConfig(dim=4, seed=0), n_users=5, n_items=6)
    replay = ReplaySet(np.array([0, 1, 2, 3, 4]), np.array([1, 2, 3, 4, 5]), np.array([0.9, 0.8, 0.1, 0.5, 0.7], np.float32))
    draws = []
    loss = ReplayLoss(model, lambda epoch: draws.append(epoch) or replay, steps_per_epoch=2, weight=0.5, temperature=10.0,
                      resample_every=5, seed=0, form="bce")
    batch = _pair_batch([0, 1, 2, 3], [0, 0, 0, 0])
    users, items = model.user_emb.detach(), model.item_emb.detach()
    for epoch in range(1, 8):
        loss.start_epoch(epoch)
        assert math.isclose(loss.weight, 0.5 * math.exp(-(epoch - 1) / 10))
        total = sum(float(loss.loss(batch).detach()) for _ in range(2))
        assert loss.loss(batch).item() == 0.0  # chunks used up: no term
        scores = (users[replay.users] * items[replay.items]).sum(1)
        expected = 0.5 * math.exp(-(epoch - 1) / 10) * F.binary_cross_entropy_with_logits(
            scores, torch.as_tensor(replay.labels), reduction="sum") / 4
        assert math.isclose(total, float(expected), rel_tol=1e-5)  # every pair once per epoch
    assert draws == [1, 6]


def test_bpr_replay_ranks_each_pair_above_a_random_item_weighted_by_its_label():
    replay = ReplaySet(np.array([0, 1, 2]), np.array([1, 2, 3]), np.array([0.9, 0.8, 0.0], np.float32))
    batch = _pair_batch([0, 1], [0, 0])
    tied = BPRMF(BPRConfig(dim=4, seed=0), n_users=5, n_items=6)
    with torch.no_grad():
        tied.item_emb.copy_(torch.ones(6, 4))  # every item scores alike: any random item is a tie
    loss = ReplayLoss(tied, lambda epoch: replay, steps_per_epoch=1, weight=0.5, temperature=10.0, resample_every=5, seed=3, form="bpr")
    loss.start_epoch(1)
    # a tie costs log 2 per pair, weighted by its label, summed, scaled by 0.5 and over B = 2
    assert math.isclose(loss.loss(batch).item(), 0.5 * (0.9 + 0.8 + 0.0) * math.log(2) / 2, rel_tol=1e-5)

    model = BPRMF(BPRConfig(dim=4, seed=0), n_users=5, n_items=6)
    idle_user = model.user_emb[2].detach().clone()
    loss = ReplayLoss(model, lambda epoch: replay, steps_per_epoch=1, weight=0.5, temperature=1e9, resample_every=5, seed=3, form="bpr")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for epoch in range(1, 201):  # the replay term alone, a fresh random item every step
        loss.start_epoch(epoch)
        optimizer.zero_grad()
        loss.loss(batch).backward()
        optimizer.step()
    scores = model.score(torch.tensor([0, 1]))
    assert scores[0].argmax() == 1 and scores[1].argmax() == 2  # each replayed item on top
    assert torch.equal(model.user_emb[2], idle_user)  # label 0: the pair teaches its user nothing
    with pytest.raises(ValueError, match="replay form"):
        ReplayLoss(model, lambda epoch: replay, steps_per_epoch=1, weight=0.5, temperature=10.0, resample_every=5, seed=0, form="mse")


# --- proxies and updates


def test_proxies_are_the_student_at_block_one_and_blends_later():
    config = ContinualConfig(stability_weight=0.75, plasticity_weight=0.0)
    d0 = BPRMF(BPRConfig(dim=3, seed=0), 4, 5)
    s1, p1 = make_proxies(d0, None, None, config)
    assert torch.equal(s1.user_emb, d0.user_emb) and torch.equal(p1.item_emb, d0.item_emb)
    d1 = BPRMF(BPRConfig(dim=3, seed=1), 6, 7)
    s2, p2 = make_proxies(d1, s1, p1, config)
    assert torch.allclose(s2.user_emb[:4], 0.75 * d0.user_emb + 0.25 * d1.user_emb[:4])
    assert torch.equal(s2.user_emb[4:], d1.user_emb[4:]) and torch.equal(p2.user_emb, d1.user_emb)
    assert not any(p.requires_grad for p in s2.parameters())
    assert same_tables(s1, p1) and not same_tables(s2, p2)
    equal = ContinualConfig(stability_weight=0.5, plasticity_weight=0.5)  # P = S at every block: drawn once
    assert same_tables(*make_proxies(d1, s1, p1, equal))


def test_student_update_learns_the_block_and_keeps_old_knowledge():
    b0, b1 = tiny_stream(2)
    config = tiny_config()
    d0 = trained(BPRConfig(dim=8, seed=0), b0, config)
    before = validate(d0, b0, split="test")["recall@20"]
    stability, plasticity = make_proxies(d0, None, None, config.continual)
    update = update_student(d0, stability, plasticity, b1, b0.train, config, progress=False)
    model = update.model
    assert (model.n_users, model.n_items) == (b1.n_users, b1.n_items)
    assert d0.n_users == b0.n_users  # the previous student is not modified
    assert not torch.equal(model.user_emb[: b0.n_users], d0.user_emb)
    assert update.replay_pairs > 0
    assert model.user_emb[b0.n_users :].abs().sum() > 0  # new users start from neighbours, not zero
    old_test = BlockData(0, b1.n_users, b1.n_items, b0.train, b0.valid, b0.test, b1.seen_train)
    after_old = validate(model, old_test, split="test")["recall@20"]
    assert after_old >= 0.8 * before  # the old block is not forgotten
    assert validate(model, b1, split="test")["recall@20"] > 0.3  # and the new one is learned


def test_teacher_update_collaborative_and_vae_members(monkeypatch):
    b0, b1 = tiny_stream(2)
    config = tiny_config(lwckd_anchors=16)
    member = trained(LightGCNConfig(dim=8, layers=2, seed=0), b0, config)
    student = trained(BPRConfig(dim=4, seed=0), b0, config)
    stability, _ = make_proxies(student, None, None, config.continual)
    cl = clone(student)
    cl.grow(b1.n_users, b1.n_items, b1.train, "neighbour", 20)
    updated, result = update_member(member, b1, b0.train, config, MemberSources([(stability, 2)], (cl, 2)), progress=False)
    assert (updated.n_users, updated.n_items) == (b1.n_users, b1.n_items)
    assert not torch.equal(updated.user_emb[: b0.n_users], member.user_emb)
    assert validate(updated, b1, split="test")["recall@20"] > 0.3 and result.epochs_run == 4
    plain, _ = update_member(member, b1, b0.train, config, None, collaborative=False, progress=False)
    assert not torch.equal(plain.user_emb, updated.user_emb)
    built = []
    monkeypatch.setattr(teacher_update, "LwcKd", lambda *args: built.append(args) or LwcKd(*args))
    no_term, _ = update_member(member, b1, b0.train, tiny_config(lwckd_anchors=16, lwckd_weight=0.0), None, progress=False)
    assert built == [] and torch.equal(no_term.user_emb, plain.user_emb)  # LWC-KD at weight 0: not even built
    no_lists = tiny_config(lwckd_anchors=16, lwckd_weight=0.0, teacher_replay_weight=0.0, teacher_exclusion_lists=False)
    sources = MemberSources([(stability, 2)], (cl, 2))
    unlisted, _ = update_member(member, b1, b0.train, no_lists, sources, progress=False)
    assert torch.equal(unlisted.user_emb, plain.user_emb)  # the sources' lists were the only difference left
    listed, _ = update_member(member, b1, b0.train, tiny_config(lwckd_anchors=16, lwckd_weight=0.0, teacher_replay_weight=0.0),
                              sources, progress=False)
    assert not torch.equal(listed.user_emb, plain.user_emb)
    # Without the proxies' lists only CL_k's remain (and the previous teacher's, passed as `protected`).
    no_proxies = tiny_config(lwckd_anchors=16, lwckd_weight=0.0, teacher_replay_weight=0.0, teacher_exclusion_proxies=False)
    student_only, _ = update_member(member, b1, b0.train, no_proxies, sources, progress=False)
    cl_listed, _ = update_member(member, b1, b0.train, tiny_config(lwckd_anchors=16, lwckd_weight=0.0, teacher_replay_weight=0.0),
                                 MemberSources([], (cl, 2)), progress=False)
    assert torch.equal(student_only.user_emb, cl_listed.user_emb) and not torch.equal(student_only.user_emb, listed.user_emb)

    vae = trained(VAEConfig(dim=4, hidden=16, seed=0), b0, config)
    vae_next, _ = update_member(vae, b1, b0.train, config, MemberSources([(stability, 2)], None), progress=False)
    assert vae_next.n_items == b1.n_items
    assert len(vae_next.interactions) == len(np.unique(b1.seen_train, axis=0))  # scores from the whole history


def test_lwckd_leaves_rows_without_new_pairs_where_they_were():
    """Old users absent from the new block get no BPR gradient; under Adam LWC-KD's tiny
    denominator gradients alone would still move them (`lwckd_moves = "all"`)."""
    b0, b1 = tiny_stream(2)
    member = trained(BPRConfig(dim=8, seed=0), b0, tiny_config())
    idle = np.setdiff1d(np.arange(b0.n_users), b1.train[:, 0])
    assert 10 < len(idle) < b0.n_users - 10
    for moves, kept in (("block", True), ("all", False)):
        config = tiny_config(teacher_replay_weight=0.0, lwckd_moves=moves)
        updated, _ = update_member(member, b1, b0.train, config, None, progress=False)
        assert torch.equal(updated.user_emb[idle], member.user_emb[idle]) == kept
        back = np.setdiff1d(np.arange(b0.n_users), idle)  # old users with new pairs still learn
        assert not torch.equal(updated.user_emb[back], member.user_emb[back])


def test_teacher_replay_form_and_weight_zero(monkeypatch):
    b0, b1 = tiny_stream(2)
    member = trained(BPRConfig(dim=8, seed=0), b0, tiny_config())
    student = trained(BPRConfig(dim=4, seed=0), b0, tiny_config())
    proxies = [(make_proxies(student, None, None, tiny_config().continual)[0], 2)]
    sources = MemberSources(proxies, None)
    bce, _ = update_member(member, b1, b0.train, tiny_config(), sources, progress=False)
    bpr, _ = update_member(member, b1, b0.train, tiny_config(teacher_replay_form="bpr"), sources, progress=False)
    assert not torch.equal(bce.item_emb, bpr.item_emb)
    assert validate(bpr, b1, split="test")["recall@20"] > 0.3
    # With the replay on and the proxies' lists off, the lists are CL_k's alone, and none when
    # CL_k is left out at 0 samples.
    cl = trained(BPRConfig(dim=4, seed=1), b0, tiny_config())
    cl.grow(b1.n_users, b1.n_items, b1.train, "neighbour", 20)
    listed, real = [], ProxyReplay.exclusion_pairs
    monkeypatch.setattr(ProxyReplay, "exclusion_pairs", lambda *a: listed.append(real(*a)) or listed[-1])
    no_proxies = tiny_config(teacher_exclusion_proxies=False)
    update_member(member, b1, b0.train, no_proxies, MemberSources(proxies, (cl, 2)), progress=False)
    k = cap(no_proxies.continual.exclude_top, b1.n_items)
    expected = top_pairs(cl.score, np.arange(b0.n_users), k, recent_items(b1, b0.train), 64)
    assert set(map(tuple, listed[0].tolist())) == set(map(tuple, expected.tolist()))
    update_member(member, b1, b0.train, no_proxies, MemberSources(proxies, (cl, 0)), progress=False)
    assert len(listed[1]) == 0
    # At weight 0 the sources give only the exclusion lists: nothing is ever drawn.
    monkeypatch.setattr("ccd.continual.updates.ProxyReplay.draw", lambda *a: pytest.fail("drew a replay set"))
    update_member(member, b1, b0.train, tiny_config(teacher_replay_weight=0.0), sources, progress=False)


def test_member_sources_ranked_by_role_not_by_position():
    """Which of S, P and CL_k a member's update ranks, and whose lists it keeps, follows from
    each source's role and the settings; the proxies are not ranked when nothing uses them."""
    s, p, cl = object(), object(), object()
    sources = MemberSources([(s, 1), (p, 3)], (cl, 5))
    ranked = lambda **c: [(m, listed) for m, _, listed in ranked_sources(sources, tiny_config(**c).continual)]  # noqa: E731
    assert ranked() == [(s, True), (p, True), (cl, True)]  # the defaults: replayed and listed
    assert ranked(teacher_exclusion_proxies=False) == [(s, False), (p, False), (cl, True)]  # replayed, not listed
    assert ranked(teacher_replay_weight=0.0) == [(s, True), (p, True), (cl, True)]  # listed only
    assert ranked(teacher_replay_weight=0.0, teacher_exclusion_proxies=False) == [(cl, True)]
    assert ranked(teacher_replay_weight=0.0, teacher_exclusion_lists=False) == []
    assert not ranks_proxies(tiny_config(teacher_replay_weight=0.0, teacher_exclusion_proxies=False).continual)
    # Without CL_k the last source is a proxy, and it is not taken for CL_k
    proxies_only = MemberSources([(s, 1), (p, 3)], None)
    only = lambda **c: [(m, listed) for m, _, listed in ranked_sources(proxies_only, tiny_config(**c).continual)]  # noqa: E731
    assert only(teacher_exclusion_proxies=False) == [(s, False), (p, False)]
    assert only(teacher_replay_weight=0.0, teacher_exclusion_proxies=False) == []
    at_zero = MemberSources([(s, 1), (p, 0)], (cl, 0))  # a source at 0 samples is left out, lists included
    assert [m for m, _, _ in ranked_sources(at_zero, tiny_config().continual)] == [s]
    assert ranked_sources(None, tiny_config().continual) == []


def test_idle_teacher_replay_draws_only_for_old_users_without_new_pairs(monkeypatch):
    b0, b1 = tiny_stream(2)
    member = trained(BPRConfig(dim=8, seed=0), b0, tiny_config())
    student = trained(BPRConfig(dim=4, seed=0), b0, tiny_config())
    sources = MemberSources([(make_proxies(student, None, None, tiny_config().continual)[0], 2)], None)
    idle = np.setdiff1d(np.arange(b0.n_users), b1.train[:, 0])
    drawn, excluded = [], []
    real_draw, real_exclusion = ProxyReplay.draw, ProxyReplay.exclusion_pairs
    monkeypatch.setattr(ProxyReplay, "draw", lambda self, seed: drawn.append(real_draw(self, seed)) or drawn[-1])
    monkeypatch.setattr(ProxyReplay, "exclusion_pairs", lambda *a: excluded.append(real_exclusion(*a)) or excluded[-1])
    for which, users in (("old", np.arange(b0.n_users)), ("idle", idle)):
        drawn.clear()
        excluded.clear()
        update_member(member, b1, b0.train, tiny_config(teacher_replay_users=which), sources, progress=False)
        assert drawn and all(np.array_equal(np.unique(s.users), users) for s in drawn)
        assert np.array_equal(np.unique(excluded[0][:, 0]), np.arange(b0.n_users))  # every old user either way


def test_top_items_restricted_keeps_the_chosen_users_lists():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1], [0.0, 0.4, 0.8]])
    tops = top_items(lambda users: scores[users], np.arange(3), None, 2, 2)
    kept = tops.restricted(np.array([2, 0]))
    assert kept.users.tolist() == [0, 2]
    assert kept.items.tolist() == [[1, 2], [2, 1]] and torch.equal(kept.scores, tops.scores[[0, 2]])


def test_distill_block_starts_from_the_previous_student_or_fresh(tmp_path):
    b0, b1 = tiny_stream(2)
    config = tiny_config()
    teacher = trained(BPRConfig(dim=8, seed=3), b1, config)
    write_topk(teacher.score, b1.n_users, b1.n_items, b1.seen_train, tmp_path, 30, 30, 1024)
    previous = trained(BPRConfig(dim=4, seed=0), b0, config)
    frozen = config.replace(train=dataclasses.replace(config.train, lr=1e-12, max_epochs=1),
                            distill=dataclasses.replace(config.distill, student_dim=4, n_interesting=10, n_interesting_users=10,
                                                        n_uninteresting=5, n_uninteresting_users=5))
    warm = distill_block(tmp_path, b1, frozen, teacher_dim=8, start=previous, progress=False).student
    assert (warm.n_users, warm.n_items) == (b1.n_users, b1.n_items)
    assert torch.allclose(warm.user_emb[: b0.n_users], previous.user_emb, atol=1e-6)  # starts from D_{k-1}
    fresh_config = frozen.replace(continual=dataclasses.replace(frozen.continual, kd_init="fresh"))
    fresh = distill_block(tmp_path, b1, fresh_config, teacher_dim=8, start=previous, progress=False).student
    assert not torch.allclose(fresh.user_emb[: b0.n_users], previous.user_emb, atol=1e-3)


# --- exclusion lists, evaluation, layout


def test_exclusion_lists():
    assert cap(40, 1000) == 40 and cap(40, 50) == 5
    table = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.3, 0.2, 0.1, 0.0]])
    from ccd.evaluate import UserItemCSR

    recent = UserItemCSR.from_pairs(np.array([[0, 1], [1, 7]]), 2)  # item 7 is past the model's width
    pairs = top_pairs(lambda users: table[users], np.array([0, 1]), 2, recent, batch_users=1)
    assert pairs.tolist() == [[0, 2], [0, 3], [1, 0], [1, 1]]
    ids = np.array([[5, 6, -1], [7, -1, -1]])
    assert list_pairs(ids, 2, np.array([0, 1, 9])).tolist() == [[0, 5], [0, 6], [1, 7]]


def test_evaluation_matrix_summaries_gate_metrics_and_plot(tmp_path):
    rows = [
        {"trained": 0, "test": 0, "recall@20": 0.4, "ndcg@20": 0.2, "users": 3},
        {"trained": 1, "test": 0, "recall@20": 0.2, "ndcg@20": 0.1, "users": 3},
        {"trained": 1, "test": 1, "recall@20": 0.6, "ndcg@20": 0.3, "users": 2},
    ]
    out = summaries(rows)
    assert out[0]["summary"] is None and out[1]["recall@20"] == 0.6
    assert out[1]["summary"]["recall@20"] == pytest.approx({"LA": 0.5, "RA": 0.2, "H": 2 * 0.5 * 0.2 / 0.7})
    assert gate_metrics(out[0])["h_recall@20"] == 0.4  # one block: H is its own value
    assert gate_metrics(out[1])["h_ndcg@20"] == pytest.approx(2 * 0.25 * 0.1 / 0.35)
    # registry.metric accepts exactly the names a registered student carries
    assert set(gate_metrics(out[1])) == set(typing.get_args(typing.get_type_hints(GateConfig)["metric"]))
    path = plot_hmean({"ccd student": [(1, 0.3), (2, 0.35)], "ccd teacher": [(1, 0.4)]}, tmp_path / "h.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = torch.tensor([[0.0, 1.0, 0.5], [1.0, 0.0, 0.5]])
    matrix = evaluate_block(lambda users: table[users].clone(), 1, {0: np.array([[0, 1]]), 1: np.array([[1, 2]])},
                            np.array([[1, 0]]), 3)
    assert [(r["trained"], r["test"], r["recall@20"]) for r in matrix] == [(1, 0, 1.0), (1, 1, 1.0)]


def test_lead_over_each_baseline_per_shared_block_and_its_plot(tmp_path):
    ccd = [(1, 0.30), (2, 0.35), (3, 0.40)]
    leads = lead_over(ccd, {"kd": [(1, 0.31), (2, 0.33), (3, 0.36)], "finetune": [(1, 0.2), (2, 0.25)]})
    assert {name: [(b, round(x, 4)) for b, x in points] for name, points in leads.items()} == {
        "kd": [(1, -0.01), (2, 0.02), (3, 0.04)],
        "finetune": [(1, 0.1), (2, 0.1)],  # block 3 has no finetune result: no lead
    }
    assert lead_over([(1, 0.3)], {"kd": [(2, 0.1)]}) == {"kd": []}
    path = plot_lead(leads, tmp_path / "lead.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_layout_keeps_runs_apart(home):
    default, retrain = Layout(home, "ccd"), Layout(home, "ccd", "r1")
    assert default.model_dir(2, "student") == home.models / "ccd" / "block=2" / "student"
    assert retrain.model_dir(2, "student") == home.models / "ccd" / "block=2" / "run=r1" / "student"
    assert retrain.topk_dir(1) == home.lake / "teacher" / "ccd" / "block=1" / "run=r1"
    assert retrain.run_keys == ("r1", "default") and default.run_keys == ("default",)
    assert default.stage("student-update") == "ccd-student-update"
    with pytest.raises(BadInputError, match="invalid method"):
        Layout(home, "../x")
