"""Stage 2 of a CCD block: update one teacher member on the new block (spec 2.4).

    member_k = update_member(member_prev, data, previous_train, config, MemberSources([(S, 1), (P, 3)], (CL, 5)))

One function per member, so the flows can update members in parallel. The member starts from
its own state after block k-1, grows for new ids (neighbour initialisation) and trains on block k
with

    BPR + LWC-KD against a frozen copy of its k-1 state (`lwckd.LwcKd`)
        + replay of old users' items drawn from S_{k-1}, P_{k-1} and the updated student CL_k,

the replay's reference ranks being the member's *current* state, redrawn every few epochs, so
the replay follows what the member is forgetting (the "collaborative" part: the student's
knowledge flows back into the teacher). Replay anneals with temperature 5, explicitly (B12).

Without sources and LWC-KD (`collaborative=False`) this is the KD baseline's plain fine-tune.

Mult-VAE members have no user table for LWC-KD or a pair score for replay: they are fine-tuned
with their own loss on block k, then score every user from its whole training history so far
(`set_interactions(data.seen_train)`), so users absent from block k keep their
recommendations.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ccd.config import ContinualConfig, RunConfig
from ccd.continual.exclusion import cap
from ccd.continual.lwckd import LwcKd
from ccd.continual.replay import ReplayLoss
from ccd.continual.updates import ProxyReplay, grown, recent_items, update_config
from ccd.data import BlockData
from ccd.models import Batch, Recommender
from ccd.train import Extension, TrainResult, pick_device, steps_per_epoch, train


class Extensions:
    """Several `ccd.train.Extension`s as one: parameters chained, losses summed."""

    def __init__(self, parts: list[Extension]) -> None:
        self.parts = parts

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        for part in self.parts:
            yield from part.parameters()

    def start_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.start_epoch(epoch)

    def loss(self, batch: Batch) -> torch.Tensor:
        return sum(part.loss(batch) for part in self.parts)


@dataclass(frozen=True)
class MemberSources:
    """What the student side gives a member's update at block k, by role, each with the samples
    per old user its replay draws (a source at 0 is left out, lists included)."""

    proxies: list[tuple[Recommender, int]]  # S_{k-1}, and P_{k-1} where it differs from S
    student: tuple[Recommender, int] | None  # the updated student CL_k


def ranks_proxies(c: ContinualConfig) -> bool:
    """Whether a collaborative member update uses S and P at all: for the replay or for their
    exclusion lists. When it does not, callers need not load them."""
    return c.teacher_replay_weight > 0 or (c.teacher_exclusion_lists and c.teacher_exclusion_proxies)


def update_member(
    member: Recommender,
    data: BlockData,
    previous_train: np.ndarray,
    config: RunConfig,
    sources: MemberSources | None = None,
    collaborative: bool = True,
    protected: np.ndarray | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Recommender, TrainResult]:
    """The member after block k: its k-1 state grown and trained on block k.

    Parameters
    ----------
    member : Recommender
        The member after block k-1 (not modified).
    data : BlockData
        Block k.
    previous_train : np.ndarray, shape (N, 2)
        Block k-1's training pairs (LWC-KD's candidates and positives; never replayed).
    config : RunConfig
    sources : MemberSources, optional
        The replay sources and exclusion lists: S_{k-1}, P_{k-1} and CL_k.
    collaborative : bool
        Add LWC-KD and replay; False gives plain BPR fine-tuning (the KD baseline).
    protected : np.ndarray, shape (E, 2), optional
        Extra pairs never drawn as BPR negatives (the previous teacher's top lists), unless
        `continual.teacher_exclusion_lists` is off.
    seed : int

    Returns
    -------
    (Recommender, TrainResult)
    """
    c = config.continual
    device = pick_device(config.train.device)
    member.to(device).eval()
    model = grown(member, data, config)
    settings = update_config(config)
    if model.batch_kind != "pairs":
        result = train(model, data, settings, seed=seed, progress=progress)
        model.set_interactions(data.seen_train)
        return model, result
    parts: list[Extension] = []
    lists = collaborative and c.teacher_exclusion_lists  # the previous teacher's and the sources'
    negatives = [protected] if lists and protected is not None else []
    if collaborative:
        if c.lwckd_weight > 0:  # at 0 its graphs and softmaxes would be built for no gradient
            parts.append(LwcKd(model, member, previous_train, data.train, c))
        ranked = ranked_sources(sources, c)
        if ranked:
            recent = recent_items(data, previous_train, device)
            old_users = np.arange(member.n_users)
            replayed = replay_users(old_users, data, c.teacher_replay_users)
            replay = ProxyReplay(model, [(m.to(device).eval(), n) for m, n, _ in ranked], old_users, recent, c.teacher_top,
                                 c.replay_eps, c.replay_batch_users, replayed)
            if c.teacher_replay_weight > 0:  # at 0 the sources only give the exclusion lists
                steps = steps_per_epoch(len(data.train), settings)
                parts.append(ReplayLoss(model, lambda epoch: replay.draw(seed + epoch), steps, c.teacher_replay_weight,
                                        c.teacher_replay_temperature, c.replay_resample_every, seed, c.teacher_replay_form))
            if lists:
                listed = [i for i, (_, _, is_listed) in enumerate(ranked) if is_listed]
                negatives.append(replay.exclusion_pairs(cap(c.exclude_top, data.n_items), listed))
    extension = Extensions(parts) if parts else None
    exclude = np.concatenate(negatives) if negatives else None
    result = train(model, data, settings, seed=seed, exclude_negatives=exclude, progress=progress, extension=extension)
    return model, result


def ranked_sources(sources: MemberSources | None, c: ContinualConfig) -> list[tuple[Recommender, int, bool]]:
    """(model, samples, listed) for each source the update ranks: every source at more than 0
    samples when the replay is on, else only those whose lists it keeps. When the exclusion
    lists are on, CL_k's are kept, and the proxies' unless `continual.teacher_exclusion_proxies`
    is off."""
    if sources is None:
        return []
    roles = [(m, n, c.teacher_exclusion_proxies) for m, n in sources.proxies]
    if sources.student is not None:
        roles.append((*sources.student, True))
    replaying = c.teacher_replay_weight > 0
    return [(m, n, listed) for m, n, listed in roles if n > 0 and (replaying or (c.teacher_exclusion_lists and listed))]


def replay_users(old_users: np.ndarray, data: BlockData, which: str) -> np.ndarray | None:
    """Whom the teacher's replay draws for (`continual.teacher_replay_users`): None for every old
    user, or only the idle ones, those without a training pair in the block. The new block's
    test users are its active users, so replaying their old tastes trades the block's accuracy
    for stability that BPR and LWC-KD already give them; idle users get no BPR gradient and are
    the ones that forget (under Adam's decay on every row)."""
    if which == "old":
        return None
    return np.setdiff1d(old_users, data.train[:, 0])
