"""One training loop for every model kind.

    result = train(model, block, RunConfig().train)       # CUDA when available, else CPU

Each epoch: draw the epoch's batches on the device (BPR triples with exact uniform negatives,
or user rows for Mult-VAE), take one Adam step per batch on `model.training_loss`, then every
`eval_every` epochs rank all items for the validation users and keep the best state by valid
Recall@20; stop after `patience` evaluations without improvement (not before `min_epochs`)
and restore the best state.
All randomness comes from one seeded generator on the device, so a CPU run is reproducible.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from ccd.config import TrainConfig
from ccd.data import BlockData
from ccd.errors import TrainingError
from ccd.evaluate import RECALL, rank_metrics
from ccd.models import Batch, Recommender

log = logging.getLogger(__name__)
SELECT_METRIC = RECALL  # spec: selection by the block's valid Recall@20
SELECTION = "selection"  # a validator's own selection score, when it gives one

# model -> valid metrics; selection on `SELECTION` if present, else on `SELECT_METRIC`.
Validator = Callable[[Recommender], dict[str, float]]


class Extension(Protocol):
    """Extra terms of every step's loss, e.g. distillation (`ccd.distill.trainer`).

    `parameters()` are trained by the loop's Adam together with the model's; `start_epoch`
    runs before each epoch's batches (resampling, annealing); `loss(batch)` is added to
    `model.training_loss(batch, ...)`.
    """

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def start_epoch(self, epoch: int) -> None: ...

    def loss(self, batch: Batch) -> torch.Tensor: ...


def pick_device(name: str = "auto") -> torch.device:
    """`"auto"`: CUDA when available, else CPU; anything else is a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise TrainingError(f"bad device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} asked for, but this torch sees no CUDA GPU (use \"auto\" or \"cpu\")")
    return device


class NegativeSampler:
    """Uniform negatives that are never one of the user's seen items, exact and vectorised.

    For user u with sorted seen items s_0 < s_1 < ..., the j-th unseen item (0-based) is
    j + #{t : s_t - t <= j}, because s_t - t counts the unseen items below s_t. So one uniform
    draw j in [0, n_items - |seen_u|) and one `searchsorted` over the keys u * n_items + s_t - t
    (globally sorted) give a negative for every row at once: no rejection loop, no Python loop
    per user.

    Parameters
    ----------
    seen : np.ndarray, shape (M, 2)
        (user, item) pairs never to draw as negatives.
    n_users, n_items : int
    device : torch.device
    """

    def __init__(self, seen: np.ndarray, n_users: int, n_items: int, device: torch.device) -> None:
        seen = np.unique(np.asarray(seen, dtype=np.int64).reshape(-1, 2), axis=0)  # sorted by (user, item)
        counts = np.bincount(seen[:, 0], minlength=n_users)  # (n_users,)
        starts = np.cumsum(counts) - counts
        rank = np.arange(len(seen)) - starts[seen[:, 0]]  # t: position of each item in its user's list
        self.n_items = n_items
        self.keys = torch.as_tensor(seen[:, 0] * n_items + seen[:, 1] - rank, device=device)  # (M,) sorted
        self.starts = torch.as_tensor(starts, device=device)  # (n_users,)
        self.free = torch.as_tensor(n_items - counts, device=device)  # (n_users,) unseen items per user

    def sample(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One negative item per entry of `users` (B,), returned as (B,) int64."""
        free = self.free[users]
        if bool((free == 0).any()):
            raise TrainingError("a user has interacted with every item: no negative exists for BPR")
        draw = torch.rand(len(users), generator=generator, device=users.device, dtype=torch.float64)
        j = torch.minimum((draw * free).long(), free - 1)  # uniform in [0, free_u)
        below = torch.searchsorted(self.keys, users * self.n_items + j, right=True) - self.starts[users]
        return j + below


@contextmanager
def subnormals_flushed() -> Iterator[None]:
    """Within the block, floats below 1.2e-38 count as zero in CPU kernels (GPUs are unaffected).

    Weights that stop getting gradient (DE experts no entity selects any more) and Adam's
    decaying moments drift into the subnormal range, where CPU matmuls run ~8x slower (a
    CiteULike DE-RRD epoch went from ~20 s to 160 s); values that small are noise to training.
    The switch is CPU state of the calling thread, so IEEE behaviour is restored on exit: data
    handling (validation, exact storage) must see every float as it is.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@dataclass
class TrainResult:
    """What a training run did; `history` has one record per epoch (loss, seconds, valid)."""

    best_epoch: int
    epochs_run: int
    best_metrics: dict[str, float]
    seconds_per_epoch: float
    cpu_seconds_per_epoch: float  # process CPU time: steadier than wall time on a shared machine
    eval_seconds: float
    stopped_early: bool
    device: str
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train(
    model: Recommender,
    data: BlockData,
    config: TrainConfig,
    *,
    seed: int | None = None,
    exclude_negatives: np.ndarray | None = None,
    progress: bool = True,
    extension: Extension | None = None,
    validator: Validator | None = None,
) -> TrainResult:
    """Train `model` on `data.train`, select on `data.valid`, restore the best state.

    Parameters
    ----------
    model : Recommender
        Must cover exactly the block's id space (`grow` it first for a later block).
    data : BlockData
        Train pairs to learn from, valid pairs to select on; ranking excludes `data.seen_train`.
        `model.set_interactions` gets `data.seen_train` for a LightGCN's graph (`data.train`
        with `graph="block"`) and `data.train` for a Mult-VAE's training rows.
    config : TrainConfig
    seed : int, optional
        Seed of the batches, negatives and model noise; default `model.config.seed`.
    exclude_negatives : np.ndarray, shape (E, 2), optional
        Extra (user, item) pairs never drawn as negatives, on top of `data.seen_train`.
    progress : bool
        Show a tqdm bar over epochs on stderr.
    extension : Extension, optional
        Extra loss terms and trainable parameters (distillation); epochs count from 1.
    validator : callable, optional
        `validator(model)` -> valid metrics, instead of `validate(model, data)`; when they hold
        `SELECTION` the best epoch is chosen on it (`ccd.continual.selection`).

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingError
        Empty train split, a model that does not match the block, or a non-finite loss.
    """
    _check(model, data, config)
    device = pick_device(config.device)
    model.to(device)
    model.set_interactions(_interactions(model, data, config))
    generator = torch.Generator(device=device).manual_seed(model.config.seed if seed is None else seed)
    seen = data.seen_train if exclude_negatives is None else np.concatenate([data.seen_train, exclude_negatives])
    sampler = NegativeSampler(seen, data.n_users, data.n_items, device)
    train_pairs = torch.as_tensor(data.train, device=device)
    extra = list(extension.parameters()) if extension is not None else []
    adam_decay = config.weight_decay if config.decay_on == "all" else 0.0
    optimizer = torch.optim.Adam([*model.parameters(), *extra], lr=config.lr, weight_decay=adam_decay)

    history: list[dict[str, Any]] = []
    best = _Best()
    stale, train_seconds, cpu_seconds, eval_seconds = 0, 0.0, 0.0, 0.0
    bar = tqdm(range(1, config.max_epochs + 1), desc=f"train {model.kind}", unit="epoch", file=sys.stderr, disable=not progress)
    for epoch in bar:
        start, cpu_start = time.perf_counter(), time.process_time()
        batches = _batches(model, train_pairs, sampler, config, generator)
        mean_loss = _one_epoch(model, batches, optimizer, config, extension, epoch)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        train_seconds += seconds
        cpu_seconds += cpu
        record: dict[str, Any] = {"epoch": epoch, "loss": mean_loss, "seconds": seconds, "cpu_seconds": cpu}

        # --- evaluate, keep the best state, stop when it no longer improves
        if len(data.valid) and (epoch % config.eval_every == 0 or epoch == config.max_epochs):
            start = time.perf_counter()
            metrics = validator(model) if validator is not None else validate(model, data, config.eval_batch_users)
            eval_seconds += time.perf_counter() - start
            record["valid"] = metrics
            score = metrics.get(SELECTION, metrics[SELECT_METRIC])
            stale = 0 if best.offer(score, epoch, metrics, model) else stale + 1
            bar.set_postfix(loss=f"{mean_loss:.4f}", score=f"{score:.4f}", best=best.epoch)
        history.append(record)
        log.info("%s epoch %d: %s", model.kind, epoch, record)
        if stale >= config.patience and epoch >= config.min_epochs:
            break
    bar.close()

    if best.state is not None:
        model.load_state_dict(best.state)
    best_epoch = best.epoch if best.state is not None else len(history)  # nothing to select on: the last state
    model.eval()
    return TrainResult(
        best_epoch=best_epoch,
        epochs_run=len(history),
        best_metrics=best.metrics,
        seconds_per_epoch=train_seconds / len(history),
        cpu_seconds_per_epoch=cpu_seconds / len(history),
        eval_seconds=eval_seconds,
        stopped_early=len(history) < config.max_epochs,
        device=str(device),
        history=history,
    )



def _one_epoch(model: Recommender, batches: Iterator[Batch], optimizer: torch.optim.Optimizer, config: TrainConfig,
               extension: Extension | None, epoch: int) -> float:
    """One pass over the training data; the epoch's mean loss (its only device sync).

    Under `decay_on="batch"` the L2 is part of the model's loss, on the rows the batch uses.
    Under `"all"` it is Adam's (set on `optimizer`), and the step is on the batch's loss summed
    over its rows, as the authors' code does: Adam's step ignores the loss's scale except through
    its coupled weight decay (and eps), so against a mean over B rows that decay would weigh B
    times more than the authors'.
    """
    row_decay = config.weight_decay if config.decay_on == "batch" else 0.0
    summed = config.decay_on == "all"
    model.train()
    total, steps = None, 0
    if extension is not None:
        extension.start_epoch(epoch)
    with subnormals_flushed():
        for batch in batches:
            loss = model.training_loss(batch, row_decay)
            if extension is not None:
                loss = loss + extension.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            (loss * len(batch.users) if summed else loss).backward()
            optimizer.step()
            total = loss.detach() if total is None else total + loss.detach()
            steps += 1
    mean_loss = float(total) / steps
    if not math.isfinite(mean_loss):
        raise TrainingError(f"{model.kind} loss became {mean_loss} at epoch {epoch}: lower train.lr or check the data")
    return mean_loss


@dataclass
class _Best:
    """The best evaluated epoch so far and a copy of the model's state at it."""

    score: float = -math.inf
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None

    def offer(self, score: float, epoch: int, metrics: dict[str, float], model: Recommender) -> bool:
        """Keep `model`'s state when `score` beats the best so far; whether it did."""
        if not score > self.score:  # a NaN score never counts as better
            return False
        self.score, self.epoch, self.metrics = score, epoch, metrics
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True


def _interactions(model: Recommender, data: BlockData, config: TrainConfig) -> np.ndarray:
    """The pairs the model is handed while it trains. A pair model's are only its graph
    (LightGCN), which keeps every pair seen so far unless `graph="block"`; a row model (Mult-VAE)
    learns from its rows, which stay the block's so that an update fine-tunes on new data."""
    if config.graph == "seen" and model.batch_kind == "pairs":
        return data.seen_train
    return data.train

def validate(model: Recommender, data: BlockData, batch_users: int = TrainConfig.eval_batch_users, split: str = "valid") -> dict[str, float]:
    """Full-ranking Recall/NDCG@{10,20,50} of `model` on `data.<split>`, excluding seen train."""
    model.eval()
    return rank_metrics(model.score, getattr(data, split), data.seen_train, data.n_items, batch_users=batch_users, device=model.device)


def _batches(
    model: Recommender, pairs: torch.Tensor, sampler: NegativeSampler, config: TrainConfig, generator: torch.Generator
) -> Iterator[Batch]:
    """One epoch of batches, shuffled: BPR triples, or user rows for `batch_kind == "users"`.

    Batches are `batch_size` (or `user_batch_size`) long, smaller when that would leave fewer
    than `min_steps_per_epoch` steps.
    """
    device = pairs.device
    if model.batch_kind == "users":
        users = torch.unique(pairs[:, 0])
        users = users[torch.randperm(len(users), generator=generator, device=device)]
        for chunk in users.split(_batch_size(len(users), config.user_batch_size, config)):
            yield Batch(chunk, None, None, generator)
        return
    size = _batch_size(len(pairs), config.batch_size, config)
    pairs = pairs[torch.randperm(len(pairs), generator=generator, device=device)]  # (N, 2)
    negatives = sampler.sample(pairs[:, 0], generator)  # (N,), drawn for the whole epoch at once
    for chunk, neg in zip(pairs.split(size), negatives.split(size)):
        yield Batch(chunk[:, 0], chunk[:, 1], neg, generator)


def _batch_size(n: int, largest: int, config: TrainConfig) -> int:
    return max(1, min(largest, math.ceil(n / max(config.min_steps_per_epoch, 1))))


def steps_per_epoch(n_pairs: int, config: TrainConfig) -> int:
    """BPR steps one epoch of `n_pairs` training pairs takes under `config`: an extension that
    spreads a set over an epoch's steps (the replay) must count them as `train` batches them,
    small blocks included, where batches shrink to give `min_steps_per_epoch` steps."""
    return max(1, math.ceil(n_pairs / _batch_size(n_pairs, config.batch_size, config)))


def _check(model: Recommender, data: BlockData, config: TrainConfig) -> None:
    if len(data.train) == 0:
        raise TrainingError(f"block {data.block} has no training pairs")
    if (model.n_users, model.n_items) != (data.n_users, data.n_items):
        raise TrainingError(
            f"model covers {model.n_users} users x {model.n_items} items but block {data.block} has "
            f"{data.n_users} x {data.n_items}: grow the model to the block's id space first"
        )
    if min(config.batch_size, config.user_batch_size, config.max_epochs, config.eval_every, config.patience) < 1:
        raise TrainingError("train.batch_size, user_batch_size, max_epochs, eval_every and patience must be >= 1")
