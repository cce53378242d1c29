"""The training loop: negative sampling, learning, selection, reproducibility, failures."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from ccd.config import TrainConfig
from ccd.errors import TrainingError
from ccd.evaluate import rank_metrics
from ccd.models import BPRConfig, LightGCNConfig, VAEConfig, build_model
from ccd.train import NegativeSampler, pick_device, steps_per_epoch, train, validate
from planted import planted_block, single_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = TrainConfig(lr=0.02, batch_size=256, user_batch_size=32, max_epochs=25, eval_every=1, patience=4, min_epochs=0, min_steps_per_epoch=4, device="cpu")
CONFIGS = [BPRConfig(dim=16, seed=3), LightGCNConfig(dim=16, layers=2, seed=3), VAEConfig(dim=16, hidden=32, seed=3)]
IDS = ["bpr", "lightgcn", "vae"]


# --- negative sampling ---------------------------------------------------------------------

def test_sampler_never_returns_seen_items_and_covers_unseen():
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 30
    seen = np.stack([rng.integers(0, n_users, 600), rng.integers(0, n_items, 600)], 1)
    seen = np.concatenate([seen, [[7, i] for i in range(n_items - 1)]])  # user 7: one item left
    sampler = NegativeSampler(seen, n_users, n_items, torch.device("cpu"))
    users = torch.as_tensor(np.repeat(np.arange(n_users), 400))
    negatives = sampler.sample(users, torch.Generator().manual_seed(0))
    seen_set = {(int(u), int(i)) for u, i in seen}
    drawn = set(zip(users.tolist(), negatives.tolist()))
    assert not drawn & seen_set
    assert ((negatives >= 0) & (negatives < n_items)).all()
    assert set(negatives[users == 7].tolist()) == {n_items - 1}
    unseen = {(u, i) for u in range(n_users) for i in range(n_items)} - seen_set
    assert drawn == unseen  # 400 uniform draws per user reach every unseen item


def test_sampler_is_uniform_over_unseen_items():
    seen = np.array([[0, 1], [0, 3], [0, 4]])
    sampler = NegativeSampler(seen, 1, 6, torch.device("cpu"))
    draws = sampler.sample(torch.zeros(30_000, dtype=torch.long), torch.Generator().manual_seed(1))
    counts = torch.bincount(draws, minlength=6).double() / len(draws)
    assert counts[[1, 3, 4]].sum() == 0
    assert torch.allclose(counts[[0, 2, 5]], torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.015)


def test_sampler_is_vectorised(monkeypatch):
    rng = np.random.default_rng(0)
    n_users, n_items = 20_000, 5_000
    seen = np.stack([rng.integers(0, n_users, 200_000), rng.integers(0, n_items, 200_000)], 1)
    sampler = NegativeSampler(seen, n_users, n_items, torch.device("cpu"))
    calls = []
    searchsorted = torch.searchsorted
    monkeypatch.setattr(torch, "searchsorted", lambda *a, **kw: calls.append(1) or searchsorted(*a, **kw))
    users = torch.as_tensor(rng.integers(0, n_users, 300_000))
    negatives = sampler.sample(users, torch.Generator().manual_seed(0))
    assert len(calls) == 1  # one lookup for all 300,000 draws: no loop per user, no rejection rounds
    codes = users * n_items + negatives
    assert not np.isin(codes.numpy(), seen[:, 0] * n_items + seen[:, 1]).any()


def test_sampler_rejects_a_user_with_every_item():
    sampler = NegativeSampler(np.array([[0, 0], [0, 1]]), 2, 2, torch.device("cpu"))
    with pytest.raises(TrainingError, match="every item"):
        sampler.sample(torch.tensor([1, 0]), torch.Generator().manual_seed(0))


# --- learning ------------------------------------------------------------------------------

def _popularity_recall(data) -> float:
    popularity = torch.as_tensor(np.bincount(data.train[:, 1], minlength=data.n_items), dtype=torch.float32)
    return rank_metrics(lambda u: popularity.repeat(len(u), 1), data.test, data.seen_train, data.n_items)["recall@20"]


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_training_learns_planted_structure(config):
    data = planted_block()
    model = build_model(config, data.n_users, data.n_items)
    result = train(model, data, FAST, progress=False)
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < losses[0]
    test = validate(model, data, split="test")
    random_recall = 20 / (data.n_items - 8)  # 8 train items per user are excluded
    assert test["recall@20"] > max(_popularity_recall(data), random_recall) + 0.2
    assert [r["epoch"] for r in result.history] == list(range(1, result.epochs_run + 1))
    assert result.best_metrics["recall@20"] == max(r["valid"]["recall@20"] for r in result.history)
    assert validate(model, data) == result.best_metrics  # the best state was restored
    assert result.seconds_per_epoch > 0 and result.device == "cpu"


def test_early_stopping_respects_patience_and_min_epochs():
    data = planted_block()
    config = TrainConfig(lr=0.05, batch_size=256, max_epochs=200, patience=2, min_epochs=0, device="cpu")
    result = train(build_model(BPRConfig(dim=8), data.n_users, data.n_items), data, config, progress=False)
    assert result.stopped_early and result.epochs_run < 200
    assert result.epochs_run - result.best_epoch == 2  # two evaluations without improvement
    late = dataclasses.replace(config, min_epochs=result.epochs_run + 5)
    result = train(build_model(BPRConfig(dim=8), data.n_users, data.n_items), data, late, progress=False)
    assert result.epochs_run == late.min_epochs  # patience ran out earlier, but not before min_epochs


def test_training_steps_flush_subnormal_floats_and_restore_ieee_after():
    """Subnormals (unused DE experts, Adam's decaying moments) made CPU matmuls ~8x slower, but
    outside the training steps (validation, ingest) floats must stay IEEE."""
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormals")
    subnormal = torch.tensor([1e-40])
    seen: list[float] = []

    class Probe:  # a training extension that only looks at the CPU's float mode
        def parameters(self):
            return iter(())

        def start_epoch(self, epoch):
            """Nothing to redraw."""

        def loss(self, batch):
            seen.append((subnormal * 1.0).item())
            return torch.zeros(())

    data = planted_block()
    train(build_model(BPRConfig(dim=8), data.n_users, data.n_items), data, dataclasses.replace(FAST, max_epochs=1),
          progress=False, extension=Probe())
    assert seen and set(seen) == {0.0}
    assert (subnormal * 1.0).item() != 0.0


def test_eval_every_and_no_validation_data():
    data = planted_block()
    config = TrainConfig(lr=0.02, batch_size=256, max_epochs=5, eval_every=2, patience=10, device="cpu")
    result = train(build_model(BPRConfig(dim=8), data.n_users, data.n_items), data, config, progress=False)
    assert [("valid" in r) for r in result.history] == [False, True, False, True, True]  # and the last
    no_valid = type(data)(data.block, data.n_users, data.n_items, data.train, data.valid[:0], data.test, data.history)
    result = train(build_model(BPRConfig(dim=8), data.n_users, data.n_items), no_valid, config, progress=False)
    assert result.best_epoch == result.epochs_run == 5 and result.best_metrics == {}


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_training_is_reproducible_on_cpu(config):
    data = planted_block(n_users=60, n_items=40)
    short = TrainConfig(lr=0.02, batch_size=128, user_batch_size=16, max_epochs=3, patience=5, device="cpu")
    states = []
    for seed in (7, 7, 8):
        model = build_model(config, data.n_users, data.n_items)
        train(model, data, short, seed=seed, progress=False)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_extra_negative_exclusions_are_respected():
    data = planted_block()
    seen = {(int(u), int(i)) for u, i in data.seen_train}
    # Excluding every item user 0 has not seen leaves it no negative: the extra pairs are used.
    extra = np.array([[0, i] for i in range(data.n_items) if (0, i) not in seen])
    with pytest.raises(TrainingError, match="every item"):
        train(build_model(BPRConfig(dim=4), data.n_users, data.n_items), data, FAST, exclude_negatives=extra, progress=False)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_a_later_block_keeps_the_graph_of_every_pair_seen(config):
    """On block k a LightGCN propagates over every training pair so far (not the block's only,
    spec B11) unless graph="block"; a Mult-VAE learns from the block's rows either way."""
    whole = planted_block()
    cut = len(whole.train) // 2
    later = type(whole)(1, whole.n_users, whole.n_items, whole.train[cut:], whole.valid, whole.test, whole.train[:cut])
    short = TrainConfig(lr=0.02, batch_size=128, user_batch_size=16, max_epochs=1, min_epochs=0, device="cpu")
    as_set = lambda pairs: {(int(u), int(i)) for u, i in pairs}
    for graph, expected in (("seen", later.seen_train), ("block", later.train)):
        model = build_model(config, later.n_users, later.n_items)
        train(model, later, dataclasses.replace(short, graph=graph), progress=False)
        kept = later.train if config.__class__ is VAEConfig else expected
        assert as_set(model.interactions) == as_set(kept)


@pytest.mark.parametrize("decay_on, row_decay, adam_decay", [("batch", 0.5, 0.0), ("all", 0.0, 0.5)])
def test_decay_on_puts_the_l2_in_one_place_only(monkeypatch, decay_on, row_decay, adam_decay):
    """The L2 goes either into the loss (batch rows) or into Adam (every parameter), never both."""
    data = planted_block()
    model = build_model(BPRConfig(dim=4, seed=1), data.n_users, data.n_items)
    seen = {"loss": set(), "adam": set()}
    loss = model.training_loss
    monkeypatch.setattr(model, "training_loss", lambda batch, wd: seen["loss"].add(wd) or loss(batch, wd))
    adam = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda params, **kw: seen["adam"].add(kw.get("weight_decay", 0.0)) or adam(params, **kw))
    train(model, data, dataclasses.replace(FAST, max_epochs=1, weight_decay=0.5, decay_on=decay_on), progress=False)
    assert seen == {"loss": {row_decay}, "adam": {adam_decay}}


def test_decay_on_all_shrinks_the_rows_of_users_with_no_data():
    """decay_on="all" is Adam's coupled weight decay (the authors' code): a user with no pair in
    the block shrinks toward zero; with "batch" the L2 reaches only the rows a batch uses, so
    that user's row is left exactly as it was."""
    data = planted_block()
    idle = int(data.n_users - 1)
    block = type(data)(data.block, data.n_users, data.n_items, data.train[data.train[:, 0] != idle],
                       data.valid, data.test, data.history)
    start = torch.ones(8)  # a trained-sized row, far above Adam's step

    def idle_row_after(decay_on: str) -> torch.Tensor:
        model = build_model(BPRConfig(dim=8, seed=1), data.n_users, data.n_items)
        with torch.no_grad():
            model.user_emb[idle] = start
        config = dataclasses.replace(FAST, max_epochs=3, min_epochs=0, weight_decay=0.5, decay_on=decay_on)
        train(model, block, config, progress=False)
        return model.user_emb.detach()[idle]

    assert torch.equal(idle_row_after("batch"), start)
    # Adam moves it about lr a step toward 0, with nothing pulling back.
    assert idle_row_after("all").norm() < 0.95 * start.norm()


def test_decay_on_all_weighs_the_decay_against_the_summed_loss():
    """The authors' losses are sums over the batch, so their Adam weight decay is small beside a
    row's data gradient; against a mean over 256 rows the same decay would be 256 times
    stronger and would shrink the rows with data too (this model then stayed near Recall@20
    0.45 on the planted groups, every row near zero)."""
    data = planted_block()
    model = build_model(BPRConfig(dim=8, seed=1), data.n_users, data.n_items)
    config = dataclasses.replace(FAST, max_epochs=10, patience=100, weight_decay=1e-2, decay_on="all")
    assert train(model, data, config, progress=False).best_metrics["recall@20"] > 0.9


# --- failures ------------------------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_nan_loss_raises_training_error(config):
    data = planted_block()
    model = build_model(config, data.n_users, data.n_items)
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)
    with pytest.raises(TrainingError, match="loss became nan"):
        train(model, data, FAST, progress=False)


def test_model_must_match_block():
    data = planted_block()
    with pytest.raises(TrainingError, match="grow the model"):
        train(build_model(BPRConfig(dim=4), data.n_users - 1, data.n_items), data, FAST, progress=False)
    empty = type(data)(0, data.n_users, data.n_items, data.train[:0], data.valid, data.test, data.history)
    with pytest.raises(TrainingError, match="no training pairs"):
        train(build_model(BPRConfig(dim=4), data.n_users, data.n_items), empty, FAST, progress=False)


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[2]], ids=["pairs", "users"])
def test_small_data_still_gets_min_steps_per_epoch(config, monkeypatch):
    data = planted_block()  # 960 train pairs, 120 users
    steps = []
    for min_steps, expected in ((7, 7), (1, 1)):
        model = build_model(config, data.n_users, data.n_items)
        loss = model.training_loss
        monkeypatch.setattr(model, "training_loss", lambda *a: steps.append(1) or loss(*a))
        big = TrainConfig(batch_size=8192, user_batch_size=512, max_epochs=1, min_steps_per_epoch=min_steps, device="cpu")
        train(model, data, big, progress=False)
        assert len(steps) == expected == steps_per_epoch(len(data.train), big)
        steps.clear()
    assert steps_per_epoch(len(data.train), TrainConfig(batch_size=100, min_steps_per_epoch=4)) == 10  # no shrink needed


def test_pick_device_refuses_what_this_machine_cannot_run():
    """A device that does not exist here fails at once, as one clear error, not at the first
    tensor moved to it."""
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TrainingError, match="bad device 'gpu0'"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA GPU"):
            pick_device("cuda")
