"""A seeded synthetic interaction stream that behaves like real check-in data.

Why synthetic: the demo, the default tests and CI need a stream that is small (75k rows, the
whole pipeline runs in minutes on 2 CPU cores), can be checked in, and still has the structure
CCD is about. The generative story, per block k:

1. **Entities arrive.** Block 0 holds `base_user_share` of the users and `base_item_share` of the
   items; the rest arrive in equal batches in blocks 1..K-1, so every later block has new users
   and new items.
2. **Items** have a Zipf popularity (`pop ∝ rank^-zipf_exponent`, ranks shuffled over items so
   new items are as likely to be hits as old ones) and a unit latent vector near one of
   `n_topics` topic directions.
3. **Users** have a unit taste vector mixed from one or two topics. Each later block every
   user's taste takes a random-walk step of size `drift` (taste drift), so later blocks differ
   from block 0 and a frozen model goes stale.
4. **Choices.** Every new user and a `returning_share` of the users seen so far are active in
   block k. An active user draws n items *without replacement*, excluding everything they
   interacted with before, with probability ∝ `pop^a · exp(taste·item / T)` (the Gumbel top-n
   trick makes this one vectorised sort). Items new in block k get `new_item_boost` extra
   log-popularity. No (user, item) pair ever repeats, inside a block or across blocks (as in
   the CCD Gowalla stream), and n ≥ `min_interactions`.
5. **Time.** Block 0 spans `base_days`, each later block `block_days`, back to back; every
   interaction gets a uniform integer unix second inside its block, so timestamps increase
   across blocks.

External ids are strings (`u000123`, `i000456`) drawn from a shuffled numbering, so they are
neither dense nor in order of arrival and the lake's id mapping is exercised.

Example
-------
>>> from ccd.config import SampleConfig
>>> blocks = generate_stream(SampleConfig(seed=0))
>>> len(blocks), list(blocks[0].columns)
(6, ['user_id', 'item_id', 'timestamp'])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ccd.config import SampleConfig
from ccd.errors import BadInputError
from ccd.lake.make_blocks import write_blocks

DAY = 86_400


@dataclass(frozen=True)
class _World:
    """The latent state drawn once per stream.

    Attributes
    ----------
    user_block, item_block : np.ndarray, shapes (U,), (I,), int64
        Block in which each user / item arrives.
    log_pop : np.ndarray, shape (I,)
        Log Zipf popularity of each item.
    items : np.ndarray, shape (I, dim)
        Unit latent vectors of items.
    tastes : np.ndarray, shape (U, dim)
        Unit taste vectors of users at block 0 (they drift afterwards).
    user_labels, item_labels : np.ndarray of str, shapes (U,), (I,)
        External ids.
    """

    user_block: np.ndarray
    item_block: np.ndarray
    log_pop: np.ndarray
    items: np.ndarray
    tastes: np.ndarray
    user_labels: np.ndarray
    item_labels: np.ndarray


def generate_stream(config: SampleConfig) -> list[pd.DataFrame]:
    """Generate the blocks of the stream.

    Parameters
    ----------
    config : SampleConfig
        Sizes, latent-structure strengths and the seed; the same config gives identical blocks.

    Returns
    -------
    list of pd.DataFrame
        `config.n_blocks` frames with columns `user_id` (str), `item_id` (str) and `timestamp`
        (int64 unix seconds), sorted by timestamp.
    """
    _check(config)
    rng = np.random.default_rng(config.seed)
    world = _draw_world(config, rng)
    tastes = world.tastes.copy()
    seen = np.zeros((config.n_users, config.n_items), dtype=bool)  # (U, I) pairs used so far
    blocks = []
    for k in range(config.n_blocks):
        if k > 0:
            tastes = _drift(tastes, config.drift, rng)
        users, items = _choose(config, world, tastes, seen, k, rng)
        seen[users, items] = True
        blocks.append(_frame(config, world, users, items, k, rng))
    return blocks


def write_sample(out: str | Path, config: SampleConfig) -> list[dict[str, Any]]:
    """Generate the stream and write `block_0.parquet..` under `out` atomically.

    Returns the per-block statistics of `ccd.lake.make_blocks.block_stats`.
    """
    return write_blocks(generate_stream(config), Path(out), "parquet")


def _check(config: SampleConfig) -> None:
    if config.n_blocks < 2:
        raise BadInputError(f"sample.n_blocks must be at least 2, got {config.n_blocks}")
    if config.min_interactions < 1:
        raise BadInputError(f"sample.min_interactions must be positive, got {config.min_interactions}")
    for name in ("base_user_share", "base_item_share", "returning_share"):
        if not 0.0 < getattr(config, name) <= 1.0:
            raise BadInputError(f"sample.{name} must be in (0, 1], got {getattr(config, name)}")
    arrivals = config.n_blocks - 1
    if config.n_users * (1 - config.base_user_share) < arrivals or config.n_items * (1 - config.base_item_share) < arrivals:
        raise BadInputError("sample: too few users or items outside block 0 to have new ones in every later block")


def _draw_world(config: SampleConfig, rng: np.random.Generator) -> _World:
    user_block = _arrival_blocks(config.n_users, config.base_user_share, config.n_blocks)
    item_block = _arrival_blocks(config.n_items, config.base_item_share, config.n_blocks)
    ranks = rng.permutation(config.n_items) + 1
    log_pop = -config.zipf_exponent * np.log(ranks)
    topics = _unit(rng.standard_normal((config.n_topics, config.dim)))  # (T, dim)
    item_topic = rng.integers(config.n_topics, size=config.n_items)
    items = _unit(topics[item_topic] + 0.35 * rng.standard_normal((config.n_items, config.dim)))
    # Tastes: a main topic, a secondary one at lower weight, and individual noise.
    main, second = rng.integers(config.n_topics, size=(2, config.n_users))
    weight = rng.uniform(0.0, 0.6, size=(config.n_users, 1))
    tastes = _unit(topics[main] + weight * topics[second] + 0.3 * rng.standard_normal((config.n_users, config.dim)))
    user_labels = np.array([f"u{n:06d}" for n in rng.permutation(config.n_users * 5)[: config.n_users]])
    item_labels = np.array([f"i{n:06d}" for n in rng.permutation(config.n_items * 5)[: config.n_items]])
    return _World(user_block, item_block, log_pop, items, tastes, user_labels, item_labels)


def _arrival_blocks(n: int, base_share: float, n_blocks: int) -> np.ndarray:
    """Block of arrival for entities 0..n-1: the first base_share in block 0, the rest spread evenly."""
    n_base = int(round(n * base_share))
    later = np.arange(n - n_base) * (n_blocks - 1) // max(n - n_base, 1) + 1
    return np.concatenate([np.zeros(n_base, np.int64), later.astype(np.int64)])


def _drift(tastes: np.ndarray, step: float, rng: np.random.Generator) -> np.ndarray:
    """One random-walk step of every taste; the noise has expected norm about `step`."""
    dim = tastes.shape[1]
    return _unit(tastes + step * rng.standard_normal(tastes.shape) / np.sqrt(dim))


def _choose(
    config: SampleConfig,
    world: _World,
    tastes: np.ndarray,
    seen: np.ndarray,
    k: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick block k's (user, item) pairs; returns two int64 arrays of shape (N,)."""
    new = np.flatnonzero(world.user_block == k)
    if k == 0:
        active = new
    else:
        old = np.flatnonzero(world.user_block < k)
        back = old[rng.random(old.size) < config.returning_share]
        active = np.concatenate([back, new])
    available = np.flatnonzero(world.item_block <= k)
    log_pop = world.log_pop[available] + config.new_item_boost * (world.item_block[available] == k)
    mean = config.base_mean_interactions if k == 0 else config.block_mean_interactions
    counts = _counts(active.size, mean, config.min_interactions, rng)

    # Gumbel top-n: the n largest of logit + Gumbel noise are a draw of n items without
    # replacement with probabilities ∝ exp(logit) (Plackett–Luce).
    logits = config.popularity_weight * log_pop + tastes[active] @ world.items[available].T / config.temperature  # (A, I_k)
    keys = logits + rng.gumbel(size=logits.shape)
    keys[seen[np.ix_(active, available)]] = -np.inf
    counts = np.minimum(counts, np.isfinite(keys).sum(axis=1))
    most = int(counts.max())
    best = np.argpartition(-keys, most - 1, axis=1)[:, :most]  # (A, most) unordered
    order = np.take_along_axis(best, np.argsort(-np.take_along_axis(keys, best, 1), axis=1), 1)  # best first
    take = np.arange(most)[None, :] < counts[:, None]  # (A, most)
    rows = np.broadcast_to(active[:, None], order.shape)[take]
    return rows.astype(np.int64), available[order[take]].astype(np.int64)


def _counts(n: int, mean: float, minimum: int, rng: np.random.Generator) -> np.ndarray:
    """Interactions per active user: minimum + a negative binomial (heavy-ish tail), shape (n,)."""
    extra = max(mean - minimum, 0.0)
    shape = 1.5  # gamma shape: a few very active users, most near the mean
    rate = rng.gamma(shape, extra / shape, size=n) if extra > 0 else np.zeros(n)
    return minimum + rng.poisson(rate)


def _frame(
    config: SampleConfig,
    world: _World,
    users: np.ndarray,
    items: np.ndarray,
    k: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    start, span = _block_window(config, k)
    stamps = start + rng.integers(span, size=users.size)
    order = np.lexsort((items, users, stamps))  # by time, ties by internal id: deterministic
    return pd.DataFrame(
        {
            "user_id": world.user_labels[users[order]],
            "item_id": world.item_labels[items[order]],
            "timestamp": stamps[order].astype(np.int64),
        }
    )


def _block_window(config: SampleConfig, k: int) -> tuple[int, int]:
    """(first second, length in seconds) of block k."""
    if k == 0:
        return config.start, config.base_days * DAY
    return config.start + (config.base_days + (k - 1) * config.block_days) * DAY, config.block_days * DAY


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
