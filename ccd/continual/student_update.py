"""Stage 1 of a CCD block: update the last distilled student on the new block (spec 2.3).

    stability, plasticity = make_proxies(d_prev, s_prev, p_prev, config.continual)
    update = update_student(d_prev, stability, plasticity, data, previous_train, config)

The update starts from D_{k-1}, the student distilled after the previous block (not from the
previous updated student: the updated student reaches the next block only through the teacher).
It grows the tables for new ids with the neighbour initialisation and trains on block k with

    BPR + replay of old users' items drawn from the stability proxy S_{k-1} and (from k = 2 on)
    the plasticity proxy P_{k-1}, labelled by the proxies, weighted by how far D_{k-1} has
    fallen behind the proxy on them (`replay.draw_replay`), annealed with temperature 10.

The reference ranks come from D_{k-1}, fixed for the whole stage. The result CL_k replays into
every teacher member (`teacher_update`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ccd.config import ContinualConfig, RunConfig
from ccd.continual.exclusion import cap, top_pairs
from ccd.continual.proxies import blend_state
from ccd.continual.replay import ReplayLoss
from ccd.continual.updates import ProxyReplay, clone, grown, recent_items, update_config
from ccd.data import BlockData
from ccd.models import Recommender
from ccd.train import TrainResult, Validator, pick_device, steps_per_epoch, train


@dataclass
class StudentUpdate:
    """The updated student CL_k and how its training went."""

    model: Recommender
    train: TrainResult
    replay_pairs: int  # size of the last replay set drawn


def blend_model(previous: Recommender | None, student: Recommender, weight: float) -> Recommender:
    """A frozen proxy: `student`'s copy with every table blended row-wise into `previous`'s
    (`proxies.blend_state`); with no previous proxy, the student itself (k = 1)."""
    proxy = clone(student)
    proxy.load_state_dict(blend_state(None if previous is None else previous.state_dict(), student.state_dict(), weight))
    for parameter in proxy.parameters():
        parameter.requires_grad_(False)
    return proxy.eval()


def make_proxies(
    student: Recommender, stability: Recommender | None, plasticity: Recommender | None, config: ContinualConfig
) -> tuple[Recommender, Recommender]:
    """S_{k-1} and P_{k-1} from D_{k-1} and the proxies of the block before (None at k = 1).

    S_{k-1} = sw * S_{k-2} + (1 - sw) * D_{k-1} on the rows S_{k-2} has, D_{k-1} on new rows;
    P the same with pw (spec 2.3a).
    """
    return blend_model(stability, student, config.stability_weight), blend_model(plasticity, student, config.plasticity_weight)


def update_student(
    student: Recommender,
    stability: Recommender,
    plasticity: Recommender,
    data: BlockData,
    previous_train: np.ndarray,
    config: RunConfig,
    protected: np.ndarray | None = None,
    seed: int = 0,
    progress: bool = True,
    validator: Validator | None = None,
) -> StudentUpdate:
    """Train CL_k: D_{k-1} grown to block k, BPR on block k plus proxy-guided replay.

    Parameters
    ----------
    student : Recommender
        D_{k-1} (not modified).
    stability, plasticity : Recommender
        S_{k-1}, P_{k-1} from `make_proxies`. P replays only when it differs from S, i.e. from
        block 2 on (at block 1 both are D_0).
    data : BlockData
        Block k.
    previous_train : np.ndarray, shape (N, 2)
        Block k-1's training pairs (with block k's, never replayed).
    config : RunConfig
        `continual` and `train` sections.
    protected : np.ndarray, shape (E, 2), optional
        Extra pairs never drawn as BPR negatives (e.g. the previous teacher's top lists).
    seed : int
        Of batches, negatives and replay draws.
    validator : callable, optional
        Selection other than block k's valid split (`ccd.continual.selection`).
    """
    c = config.continual
    device = pick_device(config.train.device)
    for model in (student, stability, plasticity):
        model.to(device).eval()
    model = grown(student, data, config)
    old_users = np.arange(student.n_users)
    recent = recent_items(data, previous_train, device)
    sources = [(stability, c.student_stability_samples)]
    if not same_tables(stability, plasticity):
        sources.append((plasticity, c.student_plasticity_samples))
    proxies = ProxyReplay(student, sources, old_users, recent, c.student_top, c.replay_eps, c.replay_batch_users)
    settings = update_config(config)
    replay = ReplayLoss(model, lambda epoch: proxies.draw(seed + epoch), steps_per_epoch(len(data.train), settings),
                        c.replay_weight, c.student_replay_temperature, c.replay_resample_every, seed, form="bce")
    k = cap(c.exclude_top, data.n_items)
    negatives = [top_pairs(student.score, old_users, k, recent, config.train.eval_batch_users, device), proxies.exclusion_pairs(k)]
    if protected is not None:
        negatives.append(protected)
    result = train(model, data, settings, seed=seed, exclude_negatives=np.concatenate(negatives),
                   progress=progress, extension=replay, validator=validator)
    return StudentUpdate(model, result, replay.size)


def same_tables(a: Recommender, b: Recommender) -> bool:
    """Whether two proxies hold the same tables (P = S = D_0 at block 1, and at every block when
    `stability_weight == plasticity_weight`): the same source drawn twice would only double its share."""
    sa, sb = a.state_dict(), b.state_dict()
    return all(sa[name].shape == sb[name].shape and bool((sa[name] == sb[name]).all()) for name in sa)
