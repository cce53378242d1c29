"""Models: the interface, LightGCN propagation, new-entity initialisation, save/load."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ccd.config import TeacherConfig
from ccd.errors import BadInputError
from ccd.evaluate import UserItemCSR
from ccd.models import MODELS, BPRConfig, BPRMF, LightGCN, LightGCNConfig, MultVAE, VAEConfig, build_model, parse_members
from ccd.models import init as model_init
from ccd.models.lightgcn import SymmetricSpmm
from ccd.models import io as model_io
from planted import planted_block, single_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIGS = [BPRConfig(dim=8, seed=1), LightGCNConfig(dim=8, layers=2, seed=1), VAEConfig(dim=8, hidden=16, seed=1)]
IDS = [type(c).__name__ for c in CONFIGS]


def _model(config, data=None):
    data = data or planted_block()
    model = build_model(config, data.n_users, data.n_items)
    model.set_interactions(data.train)
    return model.eval()


# --- the interface -------------------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_score_shape_and_determinism(config):
    model = _model(config)
    users = torch.tensor([0, 5, 7])
    scores = model.score(users)
    assert scores.shape == (3, model.n_items)
    assert torch.equal(scores, model.score(users))  # no noise outside training (VAE: z = mu)
    U, I, d = model.n_users, model.n_items, config.dim
    if isinstance(config, VAEConfig):  # item_in, in_bias, to_latent, from_latent, item_out, out_bias
        h = config.hidden
        expected = I * h + h + (h * 2 * d + 2 * d) + (d * h + h) + I * h + I
    else:  # one embedding row per user and per item
        expected = (U + I) * d
    assert model.parameter_count() == expected


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_recommend_excludes_and_is_topk(config):
    data = planted_block()
    model = _model(config, data)
    exclude = UserItemCSR.from_pairs(data.train, data.n_users)
    users = torch.arange(20)
    ids, scores = model.recommend(users, k=10, exclude=exclude)
    assert ids.shape == scores.shape == (20, 10)
    seen = {(int(u), int(i)) for u, i in data.train}
    assert not any((int(u), int(i)) in seen for u, row in zip(users, ids) for i in row)
    full = model.score(users).detach()
    for row, (u, top) in enumerate(zip(users, ids)):
        allowed = [i for i in range(data.n_items) if (int(u), i) not in seen]
        best = sorted(allowed, key=lambda i: -float(full[row, i]))[:10]
        assert torch.allclose(full[row, top], full[row, best])  # same scores: ties may swap ids
        assert torch.all(scores[row, :-1] >= scores[row, 1:])
    with pytest.raises(ValueError):
        model.recommend(users, k=data.n_items + 1)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_representations_reproduce_scores(config):
    model = _model(config)
    reps = model.user_item_representations()
    users, items = reps["final"]
    assert users.shape[0] == model.n_users and items.shape[0] == model.n_items
    assert torch.allclose(users[:6] @ items.T, model.score(torch.arange(6)), atol=1e-5)


def test_lightgcn_propagation_matches_dense_formula():
    data = planted_block(n_users=12, n_items=8, groups=2, per_user=4)
    model = _model(LightGCNConfig(dim=4, layers=3), data)
    n_u, n_i = data.n_users, data.n_items
    adjacency = np.zeros((n_u + n_i, n_u + n_i))
    for u, i in data.train:
        adjacency[u, n_u + i] = adjacency[n_u + i, u] = 1.0
    degree = adjacency.sum(1)
    inv = np.where(degree > 0, degree ** -0.5, 0.0)
    norm = inv[:, None] * adjacency * inv[None, :]
    layer = np.concatenate([model.user_emb.detach().numpy(), model.item_emb.detach().numpy()]).astype(np.float64)
    total = layer.copy()
    for _ in range(3):
        layer = norm @ layer
        total += layer
    final = total / 4
    users, items = model.user_item_representations()["final"]
    np.testing.assert_allclose(users.detach().numpy(), final[:n_u], atol=1e-6)
    np.testing.assert_allclose(items.detach().numpy(), final[n_u:], atol=1e-6)
    ego_users, _ = model.user_item_representations()["ego"]
    assert torch.equal(ego_users, model.user_emb)


def test_lightgcn_eval_cache_follows_weight_updates():
    model = _model(LightGCNConfig(dim=4, layers=2))
    with torch.no_grad():
        before = model.score(torch.tensor([0])).clone()
        assert model.embeddings()[0] is model.embeddings()[0]  # cached while nothing changes
        model.user_emb.mul_(2.0)  # in-place updates, as an optimiser step makes
        model.item_emb.mul_(2.0)
        after = model.score(torch.tensor([0]))
    assert torch.allclose(after, 4 * before, atol=1e-8)


def test_parse_members():
    members = parse_members(TeacherConfig(members=("lightgcn:64x2", "bpr:32", "lightgcn:16", "vae:8"), lightgcn_layers=3,
                                          base_seed=5, vae_hidden=12, vae_kl_cap=0.3))
    assert [name for name, _ in members] == ["lightgcn-0", "lightgcn-1", "bpr-0", "lightgcn-2", "vae-0"]
    assert members[1][1] == LightGCNConfig(dim=64, layers=3, seed=6)
    assert members[2][1] == BPRConfig(dim=32, seed=7)  # seeds run over all members
    assert members[3][1] == LightGCNConfig(dim=16, layers=3, seed=8)
    assert members[4][1] == VAEConfig(dim=8, hidden=12, kl_cap=0.3, seed=9)  # the section's vae_* settings
    for bad in ["gcn:64", "bpr", "bpr:0", "bpr:64x0", "bpr:64y2"]:
        with pytest.raises(BadInputError):
            parse_members(TeacherConfig(members=(bad,)))
    assert set(MODELS) == {"bpr", "lightgcn", "vae"}


# --- new-entity initialisation (spec 2.3b, bug B9) -----------------------------------------
# Old users 0..2, old items 0..1; new user 3 (and 4, without pairs), new item 2.
E_U = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
E_I = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
PAIRS = np.array([[3, 0], [3, 2], [0, 0], [1, 2], [2, 1], [1, 1]])
# Block popularity of old users: u0 1, u1 2, u2 1. User 3 shares item 0 with u0, item 2 with u1.


def test_one_hop_is_mean_of_old_neighbours():
    rows = model_init.one_hop(E_I, PAIRS, n_own_old=3, n_own=5)
    assert torch.equal(rows, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))  # u3: item 0 only (item 2 is new)


@pytest.mark.parametrize(
    "k, expected_user3",
    [
        (2, [0.5, 0.5]),  # exactly K sharing users -> exactly those (bug B9 would average all 3: [1, 1])
        (3, [1.0, 1.0]),  # fewer than K -> padded with the most popular other old user (u2)
        (1, [0.0, 1.0]),  # more than K -> the most popular sharing user (u1)
    ],
)
def test_two_hop_candidate_choice(k, expected_user3):
    rows = model_init.two_hop(E_U, PAIRS, n_own=4, k=k)
    assert torch.allclose(rows[0], torch.tensor(expected_user3))


def test_two_hop_without_neighbours_takes_most_popular_then_lower_id():
    rows = model_init.two_hop(E_U, PAIRS, n_own=5, k=2)
    assert torch.allclose(rows[1], (E_U[1] + E_U[0]) / 2)  # u1 (pop 2), then u0 before u2 (tie at 1)


def test_two_hop_is_the_same_whatever_the_chunk():
    """New ids are processed `chunk` at a time to bound memory; a chunk edge must not change a row."""
    generator = torch.Generator().manual_seed(0)
    own = torch.randn(30, 4, generator=generator)
    pairs = torch.stack([torch.randint(0, 50, (400,), generator=generator),
                         torch.randint(0, 25, (400,), generator=generator)], dim=1).numpy()
    whole = model_init.two_hop(own, pairs, n_own=50, k=5)
    assert whole.shape == (20, 4) and whole.abs().sum() > 0
    for chunk in (1, 3, 7):
        assert torch.allclose(model_init.two_hop(own, pairs, n_own=50, k=5, chunk=chunk), whole)


def test_grow_tables_hand_computed():
    users, items = model_init.grow_tables(E_U, E_I, PAIRS, n_users=5, n_items=3, init="neighbour", k=2)
    assert torch.equal(users[:3], E_U) and torch.equal(items[:2], E_I)
    assert torch.allclose(users[3], torch.tensor([0.75, 0.75]))  # ([1,1] + [0.5,0.5]) / 2
    assert torch.allclose(users[4], torch.tensor([0.25, 0.25]))  # ([0,0] + [0.5,0.5]) / 2
    # Item 2: one-hop = old user u1 = [0,1]; two-hop = items 0 and 1 (share users 3 and 1) = [2, .5].
    assert torch.allclose(items[2], torch.tensor([1.0, 0.75]))
    with pytest.raises(ValueError):
        model_init.grow_tables(E_U, E_I, PAIRS, n_users=2, n_items=3, init="neighbour", k=2)


@pytest.mark.parametrize("config", [BPRConfig(dim=2), LightGCNConfig(dim=2, layers=1)], ids=["bpr", "lightgcn"])
def test_model_grow_neighbour_init(config):
    model = build_model(config, 3, 2)
    with torch.no_grad():
        model.user_emb.copy_(E_U)
        model.item_emb.copy_(E_I)
    model.grow(5, 3, PAIRS, init="neighbour", k=2)
    assert (model.n_users, model.n_items) == (5, 3)
    assert torch.allclose(model.user_emb[3], torch.tensor([0.75, 0.75]))
    assert torch.allclose(model.item_emb[2], torch.tensor([1.0, 0.75]))
    assert torch.equal(model.user_emb[:3], E_U)
    assert model.score(torch.tensor([4])).shape == (1, 3)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_grow_random_keeps_old_rows(config):
    data = planted_block()
    model = _model(config, data)
    old_scores = model.score(torch.arange(5))
    old_state = {k: v.clone() for k, v in model.state_dict().items()}
    new_pairs = np.concatenate([data.train, [[data.n_users, 0], [0, data.n_items], [data.n_users + 1, data.n_items + 1]]])
    model.grow(data.n_users + 2, data.n_items + 2, new_pairs, init="random", k=20)
    for name, value in model.state_dict().items():
        old = old_state[name]
        assert torch.equal(value[: len(old)] if old.dim() else value, old), name
    assert model.score(torch.arange(data.n_users + 2)).shape == (data.n_users + 2, data.n_items + 2)
    if config.__class__ is BPRConfig:  # MF scores of old pairs do not depend on the graph
        assert torch.allclose(model.score(torch.arange(5))[:, : data.n_items], old_scores)
        assert 0.003 < float(model.item_emb[-2:].detach().std()) < 0.03  # N(0, 0.01^2)


def test_lightgcn_grow_adds_the_new_pairs_to_its_graph():
    data = planted_block()
    model = build_model(LightGCNConfig(dim=4, layers=2), data.n_users, data.n_items)
    model.set_interactions(data.train)
    new_pairs = np.array([[data.n_users, 0], [0, data.n_items]])
    model.grow(data.n_users + 1, data.n_items + 1, new_pairs, init="random", k=20)
    expected = {tuple(p) for p in data.train} | {tuple(p) for p in new_pairs}
    assert {tuple(p) for p in model.interactions} == expected


def test_vae_grow_neighbour_uses_two_hop_on_item_tables():
    model = build_model(VAEConfig(dim=2, hidden=3), 3, 2)
    model.grow(5, 3, PAIRS, init="neighbour", k=2)
    old = torch.cat([model.item_in[:2], model.item_out[:2], model.out_bias[:2, None]], 1)
    new = torch.cat([model.item_in[2], model.item_out[2], model.out_bias[2:]])
    assert torch.allclose(new, old.mean(0))  # item 2 shares users with items 0 and 1


# --- save / load ---------------------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_save_load_round_trip(tmp_path, config):
    model = _model(config)
    model_io.save(model, tmp_path / "m", metadata={"block": 0, "note": "x"})
    loaded = model_io.load(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config
    users = torch.arange(10)
    assert torch.equal(loaded.score(users), model.score(users))
    assert model_io.read_metadata(tmp_path / "m")["metadata"] == {"block": 0, "note": "x"}
    assert not list((tmp_path / "m").glob(".tmp-*"))


def test_load_detects_tampering(tmp_path):
    model = _model(BPRConfig(dim=4))
    folder = model_io.save(model, tmp_path / "m")
    weights = folder / model_io.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip bits inside the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(model_io.ModelFileError, match="SHA-256"):
        model_io.load(folder)
    with pytest.raises(model_io.ModelFileError, match="no saved model"):
        model_io.load(tmp_path / "missing")


def test_an_overwrite_killed_halfway_leaves_no_model_not_a_mismatched_one(tmp_path, monkeypatch):
    """model.json says a folder is complete; an overwrite killed after the new weights landed
    must not leave the old one beside them (every later load would fail its checksum, and a
    caller that trusts model.json would never save again)."""
    folder = model_io.save(_model(BPRConfig(dim=4)), tmp_path / "m")

    def killed(path):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(model_io, "sha256_file", killed)  # after the weights, before model.json
    with pytest.raises(KeyboardInterrupt):
        model_io.save(_model(BPRConfig(dim=8)), folder)
    with pytest.raises(model_io.ModelFileError, match="no saved model"):
        model_io.read_metadata(folder)
    monkeypatch.undo()
    model_io.save(_model(BPRConfig(dim=8)), folder)  # the re-run's save
    assert model_io.load(folder).dim == 8


def test_saved_weights_are_not_pickle(tmp_path):
    folder = model_io.save(_model(LightGCNConfig(dim=4)), tmp_path / "m")
    head = (folder / model_io.WEIGHTS).read_bytes()[:2]
    assert head != b"\x80\x04" and not (folder / model_io.WEIGHTS).read_bytes().startswith(b"PK")
    line = (folder / model_io.CHECKSUM).read_text().split()
    assert line == [model_io.read_metadata(folder)["weights_sha256"], model_io.WEIGHTS]


def test_models_are_seeded():
    for config in CONFIGS:
        a, b = build_model(config, 10, 12), build_model(config, 10, 12)
        other = build_model(dataclasses.replace(config, seed=config.seed + 1), 10, 12)
        for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), other.state_dict().values()):
            assert torch.equal(x, y), name
            assert not x.any() or not torch.equal(x, z), name  # the seed draws the weights (zeros aside)
    assert isinstance(build_model(CONFIGS[0], 3, 3), BPRMF) and isinstance(build_model(CONFIGS[1], 3, 3), LightGCN)
    assert isinstance(build_model(CONFIGS[2], 3, 3), MultVAE)


def test_lightgcn_gradient_matches_dense_formula():
    data = planted_block(n_users=12, n_items=8, groups=2, per_user=4)
    graph = LightGCN(LightGCNConfig(dim=3), data.n_users, data.n_items)
    graph.set_interactions(data.train)
    dense = graph.graph.to_dense().double()
    x = torch.randn(len(dense), 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(len(dense), 3, dtype=torch.float64)
    out = SymmetricSpmm.apply(graph.graph.double(), x)
    (out * weights).sum().backward()
    assert torch.allclose(out, dense @ x.detach())
    assert torch.allclose(x.grad, dense.T @ weights)  # the backward reuses the graph: it is symmetric
    assert torch.equal(dense, dense.T)


def test_teacher_section_defaults_are_the_models_own():
    """`teacher.vae_*` and `lightgcn_layers` feed the member configs; at their defaults a member
    is the model's own default config, so the two places cannot drift apart unnoticed."""
    (_, lightgcn), (_, vae) = parse_members(TeacherConfig(members=("lightgcn:8", "vae:8")))
    assert lightgcn == LightGCNConfig(dim=8, seed=0) and vae == VAEConfig(dim=8, seed=1)
