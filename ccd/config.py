"""One typed configuration for the whole pipeline.

`RunConfig` has one frozen dataclass section per stage. It loads from a JSON or TOML file plus
`section.key=value` overrides; an unknown key or a value of the wrong type is an error, so a
typo never silently falls back to a default. Every checkpoint and registry entry stores the
`RunConfig.to_dict()` it was made with.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ccd.errors import BadInputError


@dataclass(frozen=True)
class LakeConfig:
    """Ingest and validation policy."""

    # Seed of the per-user random train/valid/test split.
    split_seed: int = 0
    # CCD protocol: per user 10% test and 10% valid (at least one each), the rest train.
    test_fraction: float = 0.1
    valid_fraction: float = 0.1
    # A user needs this many interactions in a block before valid/test are carved out;
    # below it everything goes to train (one train item at least must remain; at least 3).
    min_user_interactions_for_split: int = 3
    # Duplicate (user, item) pairs inside a block: drop them and report, or reject the block.
    duplicate_policy: Literal["drop", "reject"] = "drop"
    # Timestamps older than the previous block's newest: warn, or reject the block.
    stale_timestamp_policy: Literal["warn", "reject"] = "warn"
    # Warn when a block's row count is outside [1/ratio, ratio] x the mean of earlier blocks.
    row_count_warn_ratio: float = 10.0


@dataclass(frozen=True)
class SampleConfig:
    """The synthetic sample stream of `ccd make-sample` (`ccd.lake.synthetic`).

    Defaults give about 2,000 users, 3,000 items and 69k interactions in 6 blocks, block 0
    about half: small enough for the whole pipeline on 2 CPU cores, shaped like Gowalla.
    """

    # Seed of every draw of the generator: the same seed gives the same files.
    seed: int = 0
    # Block 0 plus the blocks that arrive after it.
    n_blocks: int = 6
    # Users and items over the whole stream.
    n_users: int = 2000
    n_items: int = 3000
    # Shares of users / items that exist in block 0; the rest arrive evenly in later blocks.
    base_user_share: float = 0.55
    base_item_share: float = 0.7
    # Share of the users seen so far who come back in each later block (the rest are idle).
    returning_share: float = 0.3
    # Mean interactions per active user: block 0 spans a year, later blocks a month each.
    base_mean_interactions: float = 32.0
    block_mean_interactions: float = 11.0
    # Every active user gets at least this many, so per-user train/valid/test splits work.
    min_interactions: int = 5
    # Latent tastes: items sit near one of n_topics directions in R^dim.
    n_topics: int = 16
    dim: int = 16
    # Popularity ∝ rank^-zipf_exponent; choice logit = popularity_weight·log pop + taste·item / T.
    # These values make tastes dominate, so a personalised model clearly beats popularity.
    # Measured: top 10% of items hold ~43% of interactions; BPR-MF Recall@20 ~0.30 vs
    # popularity ~0.13 on block 0.
    zipf_exponent: float = 1.0
    popularity_weight: float = 1.0
    temperature: float = 0.08
    # Per-block step of each user's taste random walk (taste vectors have unit norm). At 0.35 a
    # BPR-MF frozen after block 0 loses ~25% of its Recall@20 on returning users by block 5.
    drift: float = 0.35
    # Extra log-popularity of items in the block they arrive in, so new items get picked.
    new_item_boost: float = 1.5
    # Block 0 starts 2020-01-01 UTC and spans base_days; each later block spans block_days.
    start: int = 1_577_836_800
    base_days: int = 365
    block_days: int = 30


@dataclass(frozen=True)
class GateConfig:
    """The registry: its promotion gate (`ccd.registry.propose`) and the copies it keeps."""

    # The metric compared with production: CCD's H-mean of LA and RA over blocks (Recall@20),
    # which rewards learning the new block without forgetting the old ones. Higher is better.
    metric: Literal[
        "h_recall@20", "la_recall@20", "ra_recall@20", "recall@20",
        "h_ndcg@20", "la_ndcg@20", "ra_ndcg@20", "ndcg@20",
    ] = "h_recall@20"
    # Largest absolute drop below production's metric that still promotes: about the
    # run-to-run noise of Recall@20 on the sample, so noise alone never blocks a refresh.
    tolerance: float = 0.005
    # After each block's registration, remove the registry's copies of old students and keep
    # this many (`ccd registry prune --keep`, which also keeps aliased versions and as many
    # rollback steps from production), so a scheduled stream does not fill the disk. 0 keeps
    # every copy.
    keep_copies: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """The one training loop (`ccd.train.train`) shared by every model kind."""

    # Adam. The authors' base teachers use lr 1e-3 with batches of 512; our batches are 16x
    # larger (far fewer, bigger kernels per epoch), so the step is larger to converge in a
    # similar number of epochs.
    lr: float = 5e-3
    # L2 weight, 1e-4 as in the spec.
    weight_decay: float = 1e-4
    # Where the L2 acts. "batch": in the loss, on the embedding rows a batch uses (LightGCN paper
    # form; a Mult-VAE's on its weights).
    # "all": Adam's own coupled weight_decay on every parameter against the batch's loss summed
    # over its rows, as the authors' code does; with Adam's normalised steps it shrinks every row
    # with no data at about the full learning rate, so an update on a new block forgets the
    # users and items absent from it (kept to measure CCD in the regime its paper ran in, see
    # docs/benchmarks.md).
    decay_on: Literal["batch", "all"] = "batch"
    # BPR (user, positive, negative) triples per step.
    batch_size: int = 8192
    # Users per step for models trained on whole user rows (Mult-VAE: dense rows of n_items).
    user_batch_size: int = 512
    # Batches shrink so that an epoch has at least this many steps. On the sample stream's block
    # 0 (28,710 train pairs) 8192-pair batches make 4 steps an epoch, and a LightGCN needs 20+
    # epochs to pass the valid Recall@20 it has untrained; at 20 steps an epoch, 4 epochs.
    min_steps_per_epoch: int = 20
    # Spec 2.6: at most 100 epochs, evaluated every epoch, patience 10 evaluations.
    max_epochs: int = 100
    eval_every: int = 1
    patience: int = 10
    # No early stop before this epoch. An untrained LightGCN already ranks by graph structure
    # (valid Recall@20 0.24 at epoch 1 on the sample stream) and dips while BPR reshapes it;
    # patience alone could stop it in the dip.
    min_epochs: int = 20
    # Users per chunk when ranking all items for validation.
    eval_batch_users: int = 1024
    # The pairs a LightGCN propagates over when it trains on a block: "seen", every training pair
    # up to that block; "block", only the block's own (the authors' code, spec B11), where a user
    # or item inactive in the block falls back to e^0 / (L + 1). On Gowalla "block" took a dim-16
    # LightGCN student from Recall@20 0.146 on block 0's test to 0.081 after block 1, since
    # block 0's items missing from block 1 sink in every ranking. Block 0 is the same either way.
    graph: Literal["seen", "block"] = "seen"
    # "auto": CUDA when available, else CPU; or an explicit torch device such as "cpu".
    device: str = "auto"


@dataclass(frozen=True)
class TeacherConfig:
    """Members of the teacher ensemble (`ccd train-teacher`)."""

    # "kind:dim[xcount]" per entry. The mix of kinds (CCD's Gowalla teacher mixes VAE
    # and BPR members; its Yelp teacher uses LightGCNs), each member with its own seed.
    members: tuple[str, ...] = ("lightgcn:64x3", "bpr:64x2", "vae:64x1")
    # Spec 1: LightGCN with 2 propagation layers.
    lightgcn_layers: int = 2
    # The n-th member (in the order of `members`) gets seed base_seed + n.
    base_seed: int = 0
    # Length of each user's top items and each item's top users kept from the ensemble
    # (spec 2.2 uses top-40 lists and samples beyond them; 100 leaves room for both).
    top_k: int = 100
    # The ensemble scores each item by the mean over members of (rank + 1)^-rank_exponent
    # (spec 2.5): a flat curve, so a member's rank 100 still counts 0.79 of its rank 1.
    rank_exponent: float = 0.05
    # Mult-VAE members (Liang et al. 2018): hidden layer [I -> hidden -> dim -> hidden -> I],
    # input dropout, the KL weight's cap and the optimiser steps to reach it (Liang et al.
    # anneal over 200,000 steps of 500 users; our larger batches take far fewer steps).
    vae_hidden: int = 600
    vae_dropout: float = 0.5
    vae_kl_cap: float = 0.2
    vae_kl_anneal_steps: int = 2000


@dataclass(frozen=True)
class DistillConfig:
    """DE-RRD distillation of a compact student from a frozen teacher (`ccd distill`)."""

    # "none" trains the student alone; "rd" is Tang & Wang's baseline; "-ir" adds IR-RRD;
    # "rrd-ir" is CCD's stage-1 KD (an ensemble teacher has no representation for DE).
    method: Literal["none", "rd", "de", "rrd", "de-rrd", "rrd-ir", "de-rrd-ir"] = "de-rrd"
    # The student has the teacher's architecture in the paper; an ensemble teacher has none, so
    # the kind is named here.
    student_kind: Literal["bpr", "lightgcn"] = "bpr"
    # 0: a tenth of the teacher's dimension (the paper's phi = 0.1), at least 1.
    student_dim: int = 0
    # Ensemble member whose representations DE reconstructs (an ensemble has none of its own);
    # empty: the first member. A single-model teacher always uses itself.
    de_member: str = ""
    # RRD (spec 3): K interesting items from the teacher's top-N, L uninteresting ones.
    n_interesting: int = 40
    n_uninteresting: int = 40
    top_n: int = 500
    # Whose lists RRD distils. "batch": the users of each BPR batch (DE-RRD, CCD's KD), so on a
    # continual block only the block's active users learn from the teacher's lists. "all":
    # besides them, every known user once an epoch, spread over the epoch's batches, so what
    # the teacher keeps (or forgets) about users absent from the block reaches the student too.
    rrd_users: Literal["batch", "all"] = "batch"
    # The authors later found the teacher's plain top-K better than rank-weighted sampling
    # (spec 3, "later author note"); True gives the paper's p(r) ~ exp(-r / T) sampling.
    sample_interesting: bool = False
    rank_temperature: float = 10.0
    # IR-RRD (IR-RRD paper): K_I = L_I = 20 users per item.
    n_interesting_users: int = 20
    n_uninteresting_users: int = 20
    # Loss weights relative to a BPR loss *summed* over the batch, as in the spec (the loop's
    # base loss is a mean; distillation terms are divided by the batch size to match).
    # CiteULike/BPR values of the authors' code; IR-RRD's 5e-4 from its paper.
    lambda_de: float = 0.01
    lambda_rrd: float = 0.001
    lambda_ir: float = 0.0005
    # RD (Tang & Wang 2018): teacher top-K as positives, weights ~ exp(-rank / temperature).
    # DE-RRD does not give RD's settings; K = 10 is RD's own, the rest our choice.
    lambda_rd: float = 0.1
    rd_k: int = 10
    rd_temperature: float = 5.0
    # DE (spec 2): M experts; Gumbel temperature tau_e = start * (end/start)^(e/period).
    n_experts: int = 30
    tau_start: float = 1.0
    tau_end: float = 1e-10
    tau_period: int = 1000
    # Seed of the student's initial tables, experts and samples.
    seed: int = 0


@dataclass(frozen=True)
class ServingConfig:
    """`ccd serve` / `ccd recommend`: the registry's production student behind a small HTTP API."""

    # Largest k one request may ask for: bounds a request's work and response size.
    max_k: int = 100
    # Recall@20 is what models are selected and gated on, so 20 is the list they are good at.
    default_k: int = 20
    # Seconds between checks of the registry's `production` alias. A check opens the registry
    # (about 0.1 s of DuckDB connect, in a background thread), so a few seconds costs nothing
    # while a promotion still goes live almost at once.
    refresh_seconds: float = 2.0
    # Loopback: the API has no authentication, so exposing it must be an explicit choice.
    host: str = "127.0.0.1"
    # TCP port of the API.
    port: int = 8000
    # "auto": CUDA when available, else CPU; or an explicit torch device such as "cpu".
    device: str = "auto"


@dataclass(frozen=True)
class ContinualConfig:
    """CCD's loop over a stream of blocks and its baselines (`ccd stream`, `ccd.continual`)."""

    # Updates start from trained models, so they run a short budget selected on the block's
    # valid Recall@20: Adam lr 1e-3 and batches of 2048 as the authors (spec 2.3d, 2.4), but 20
    # epochs, not their 10: on Gowalla every update was still improving at epoch 10, and 20
    # lifted CCD's and KD's D5 students by 0.0025-0.0034 H at about 1.5x the cycle time
    # (docs/benchmarks.md). Runs pinned with 10 keep it.
    update_epochs: int = 20
    update_lr: float = 1e-3
    update_batch_size: int = 2048
    # New ids start from their neighbours (spec 2.3b), K two-hop candidates; "random" is N(0, .01^2).
    init: Literal["neighbour", "random"] = "neighbour"
    init_k: int = 20
    # Proxy EMA weights on the *old* proxy (spec 2.3a); run.sh uses sw 0.9-1.0 and pw 0-0.1.
    stability_weight: float = 0.9
    plasticity_weight: float = 0.1
    # Student replay (spec 2.3c): items drawn per old user from the top ranks of S and P.
    student_top: int = 50
    student_stability_samples: int = 3
    student_plasticity_samples: int = 3
    # Teacher replay (spec 2.4): per old user from S, P and the updated student CL_k, the values
    # run.sh uses most often.
    teacher_top: int = 100
    teacher_stability_samples: int = 1
    teacher_plasticity_samples: int = 3
    teacher_student_samples: int = 5
    # Sharpness of the rank-disagreement weight exp(eps * (rank_ref - rank_proxy)) (spec 2.3c).
    replay_eps: float = 1e-4
    # Replay loss weight w * exp(-epoch / T), relative to a summed BPR loss: the student anneals
    # with T = 10, the teacher with T = 5 (the authors reuse another flag for it, B12); the
    # spec's w is 0.5 for both.
    replay_weight: float = 0.5
    student_replay_temperature: float = 10.0
    teacher_replay_weight: float = 0.5
    teacher_replay_temperature: float = 5.0
    # The teacher's replay term (`replay.ReplayLoss`): "bce" against sigma(source logit), the
    # spec's; or "bpr", the pair ranked above a random item, weighted by that label. A dim-8
    # student's logits are large (labels ~1.0), so BCE inflates a 64-dim member's scores of
    # whatever the student likes (docs/benchmarks.md, the ablation).
    teacher_replay_form: Literal["bce", "bpr"] = "bce"
    # Whom the teacher's replay draws for: "old", every old user (the spec's); "idle", only old
    # users without training pairs in the block, whose rows nothing else holds, so the block's
    # active users (its test users) learn their new tastes unopposed. The exclusion lists cover
    # every old user either way.
    teacher_replay_users: Literal["old", "idle"] = "old"
    # Epochs between redraws of the replay set (spec: redrawn at epoch 5); the teacher's
    # reference ranks are its current state at each redraw.
    replay_resample_every: int = 5
    # Users per chunk when the replay ranks sources and reference. Part of the draw, not only of
    # its speed: each chunk consumes the seeded generator in turn, so another size draws other
    # pairs (recorded runs used 512).
    replay_batch_users: int = 512
    # Each old user's top items under the previous models and proxies are never BPR negatives
    # (the spec's exclusion lists), so BPR does not push down what replay pulls up. 0: off.
    exclude_top: int = 40
    # How CCD's members update (stage 2). "collaborative": BPR with LWC-KD, the replay from S, P
    # and CL_k, and the exclusion lists (spec 2.4). "plain": BPR fine-tuning alone, as the KD
    # baseline's members, so CCD's teacher is KD's and only its student path (stage 1, stage 4
    # from CL_k) differs: an ablation of what the collaborative terms do to the teacher.
    # "anchored": each member keeps a BPR-only state from block to block (its anchor, KD's
    # member), and the member served and distilled from at block k is a collaborative update of
    # the anchor after k-1. The terms then shape every block's lists while their cost to the
    # members (on Gowalla a drift that compounds) is never carried to the next block; the
    # anchors' updates cost about a fifth of the collaborative ones.
    teacher_update: Literal["collaborative", "plain", "anchored"] = "collaborative"
    # Whether CCD's members keep the exclusion lists (the previous teacher's and the sources'
    # top `exclude_top` items of each old user are never their BPR negatives). False leaves
    # them to the student's update and stage 4 only: on Gowalla the lists alone made the members
    # drift as fast as the lists with LWC-KD (docs/benchmarks.md).
    teacher_exclusion_lists: bool = True
    # Whether those lists include the proxies' (S_{k-1}, P_{k-1}) top items, or only the previous
    # teacher's and CL_k's (if CL_k replays: at 0 samples a source gives no list). S blends the
    # students of past blocks (`stability_weight` 0.9 keeps mostly the oldest), so its lists
    # hold each old user's older tastes, which the members may then never push down.
    teacher_exclusion_proxies: bool = True
    # LWC-KD (spec 2.4): weight of UI+IU+UU+II against the loop's mean BPR loss (the spec does
    # not say whether its BPR is summed; against a sum of 2048 terms 0.01 would vanish; under
    # train.decay_on="all" the loop steps on sums, and this ratio to BPR is kept),
    # softmax temperature, and neighbours per entity in the user-user / item-item graphs.
    lwckd_weight: float = 0.01
    lwckd_tau: float = 5.0
    graph_degree: int = 10
    # Neighbours below this cosine similarity are left out of the user-user / item-item graphs
    # (the authors search a global threshold in (0.1, 0.9) for a mean degree of 10).
    graph_min_similarity: float = 0.1
    # Anchors per term and batch: each term holds an (anchors, candidates) softmax, so this caps
    # memory on large blocks whatever the batch size.
    lwckd_anchors: int = 256
    # Whose current embeddings LWC-KD moves. "block": only entities with training pairs in the
    # new block; the others get no BPR gradient, and under Adam (which normalises step sizes)
    # the softmax denominators' ~1e-8 gradients alone would move their rows at the full learning
    # rate, re-ranking old users' lists with no new data. "all": every candidate (our runs
    # before this setting; the authors' Adam weight decay moves every row anyway).
    lwckd_moves: Literal["block", "all"] = "block"
    # Personalised imitation weights (B7 fixed, `ccd.continual.lwckd.imitation_weights`): a user
    # whose new items sit far from its old taste imitates its old self less; weights
    # exp(-shift / T), shift = 1 - cosine in [0, 2], so at T = 0.5 they span a factor e^4.
    piw: bool = True
    piw_temperature: float = 0.5
    # Stage 4 KD (spec 2.2): batches of 1024 as the spec's: a block is small, and at
    # train.batch_size (8192) a student distilled on it gets a handful of steps per epoch
    # (sample block 1: Recall@20 0.03 at 8192 vs 0.18 at 1024). RRD and IR-RRD weights relative
    # to a summed BPR loss: the spec's 0.01 goes with 30,000 uninteresting items per user, whose
    # denominators rank against almost the whole catalogue; with distill.n_uninteresting (40)
    # 0.1 does better (sample block 1, Recall@20 old/new block: 0.18/0.18 at 0.01, 0.20/0.20).
    kd_batch_size: int = 1024
    kd_lambda_rrd: float = 0.1
    kd_lambda_ir: float = 0.1
    # Stage 4's BPR never draws as a negative an old user's top `exclude_top` items in the
    # block's teacher lists (which RRD pulls up) nor, for CCD, under S_{k-1}, P_{k-1} and CL_k
    # (spec 2.2's exclusion lists). Runs pinned before this setting keep uniform negatives.
    kd_exclude_top: bool = True
    # Whether CCD's stage-4 lists include S_{k-1}'s and P_{k-1}'s top items, or only the teacher
    # lists' and CL_k's (see `teacher_exclusion_proxies`: S's lists are the stalest). Gowalla
    # block 5: no difference beyond the seeds' spread (docs/benchmarks.md).
    kd_exclusion_proxies: bool = True
    # Stage 4's seed (batches, negatives, sampled sets) is `distill.seed` combined with the block
    # (`loop.block_seed`), as every other training of the loop, so no two blocks' distillations
    # repeat one draw sequence. Runs pinned before this setting keep `distill.seed` at every block.
    kd_seed_per_block: bool = True
    # Where the student distilled at block k >= 1 starts. "updated": CCD's D_k starts from its
    # updated student CL_k (stage 1's model, already on block k's ids), so what the student
    # update learned reaches the served student directly; methods without a CL_k (KD) start from
    # D_{k-1}. Gowalla D5 H 0.1121 against 0.1102 from D_{k-1} (KD 0.1105; docs/benchmarks.md).
    # "previous": D_{k-1} grown to the block. "fresh": random tables, as the authors' KD; a
    # fresh student learns old users only through the teacher's lists and a small block's few
    # steps: on the sample, block 5, Recall@20 on block 0's test 0.13 fresh vs 0.28 from D_4.
    kd_init: Literal["previous", "fresh", "updated"] = "updated"
    # Which epoch of a served student (CCD's CL_k and D_k, every baseline student) is kept:
    # "stream", the best H of block k's valid Recall@20 and the earlier blocks' mean valid
    # Recall@20 (`ccd.continual.selection`); "block", the best on block k's alone (the authors').
    # Teachers keep "block". Gowalla: same or better for every student, +0.0017 H at D5 for KD
    # (docs/benchmarks.md).
    select_on: Literal["block", "stream"] = "stream"
    # Whether block 0 counts in LA and RA (the `with_base_block` switch of the CCD author's code).
    with_base_block: bool = True
    # Moves every seed the loop draws with at blocks >= 1 (student update, member updates,
    # stage 4, the baselines' students): a run key with another value repeats the stream with
    # other draws from the same shared block 0, which measures how far one stream's numbers move
    # by chance. 0 is the stream as before this setting (`loop.stream_seed`). New ids' random
    # rows under `init = "random"` are seeded by the model alone, the same in every stream.
    stream_seed: int = 0


# Settings added to the code after runs were pinned (and models saved) whose default is not
# what the code did before them: the value that did, so a run pinned without the key resumes as
# it started. Any other key missing counts at its default (added with the old behaviour).
BEFORE_ADDED: dict[tuple[str, str], Any] = {
    ("continual", "select_on"): "block", ("train", "graph"): "block", ("continual", "kd_exclude_top"): False,
    ("continual", "kd_seed_per_block"): False, ("continual", "lwckd_moves"): "all",
}


@dataclass(frozen=True)
class RunConfig:
    """All settings of a run, one section per stage."""

    lake: LakeConfig = field(default_factory=LakeConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    registry: GateConfig = field(default_factory=GateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        return _build(cls, values, "")

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None) -> "RunConfig":
        """Read `path` (JSON or TOML; none means defaults) and apply `section.key=value` overrides."""
        return cls.from_dict(_named_values(path, overrides))

    @classmethod
    def named(cls, path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
        """Only the settings that `path` and `overrides` name, by section, checked like `load`.

        A run resumes with its own pinned settings plus these (`run_settings`), so a value named
        at its default must still count: it may differ from what the run was pinned with.
        """
        values = _named_values(path, overrides)
        cls.from_dict(values)  # unknown keys and wrong types fail here, before any run starts
        return values

    def replace(self, **sections: Any) -> "RunConfig":
        return dataclasses.replace(self, **sections)


def _named_values(path: str | Path | None, overrides: list[str] | None) -> dict[str, Any]:
    values: dict[str, Any] = {} if path is None else _read_file(Path(path))
    for item in overrides or []:
        _apply_override(values, item)
    return values


def _read_file(path: Path) -> dict[str, Any]:
    if path.suffix not in (".toml", ".json"):
        raise BadInputError(f"config {path} must be a .toml or .json file")
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInputError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"config {path} is not valid {path.suffix[1:].upper()}: {exc}") from None


def _apply_override(values: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or "." not in key:
        raise BadInputError(f"override {item!r} must look like section.key=value")
    section, name = key.split(".", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare word is a string
    values.setdefault(section, {})[name] = value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise BadInputError(f"config section {where or 'root'} must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise BadInputError(f"unknown config key(s) {', '.join(where + k for k in unknown)}")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}")
    return cls(**kwargs)


# Ranges of numeric settings given by the user (defaults are in range): none is negative but
# these; these must be above zero (a size, a count of steps, a rate, a temperature); these are
# shares in [0, 1]; these have a floor of their own. Checked here, so a bad value is one line
# before anything runs.
_MAY_BE_NEGATIVE = {"continual.graph_min_similarity"}
_ABOVE_ZERO = {
    "sample.base_user_share", "sample.base_item_share", "sample.returning_share",
    "sample.n_users", "sample.n_items", "sample.n_topics", "sample.dim", "sample.temperature",
    "sample.base_days", "sample.block_days", "sample.min_interactions",
    "train.lr", "train.batch_size", "train.user_batch_size", "train.max_epochs", "train.eval_every", "train.patience",
    "train.eval_batch_users",
    "teacher.top_k", "teacher.vae_hidden",
    "distill.n_interesting", "distill.n_uninteresting", "distill.top_n", "distill.rank_temperature",
    "distill.n_interesting_users", "distill.n_uninteresting_users", "distill.rd_k", "distill.rd_temperature",
    "distill.n_experts", "distill.tau_start", "distill.tau_end", "distill.tau_period",
    "serving.max_k", "serving.default_k", "serving.refresh_seconds",
    "continual.update_epochs", "continual.update_lr", "continual.update_batch_size", "continual.student_top",
    "continual.teacher_top", "continual.student_replay_temperature", "continual.teacher_replay_temperature",
    "continual.replay_resample_every", "continual.replay_batch_users", "continual.lwckd_tau", "continual.lwckd_anchors",
    "continual.piw_temperature", "continual.kd_batch_size",
}
_SHARES = {
    "lake.test_fraction", "lake.valid_fraction", "teacher.vae_dropout",
    "sample.base_user_share", "sample.base_item_share", "sample.returning_share",
    "continual.stability_weight", "continual.plasticity_weight",
}
_AT_LEAST = {
    "lake.row_count_warn_ratio": 1,  # a band [1/ratio, ratio] around the mean
    "lake.min_user_interactions_for_split": 3,  # one train, one valid and one test item
    "sample.n_blocks": 2,  # a base block and at least one that arrives later
}

# Seeds stay below this, so the seeds of a stream (`loop.stream_seed`: base + limit * stream,
# then * 1000 + block) never meet another stream's and fit torch's 64-bit seed.
SEED_LIMIT = 1_000_000
_BELOW = {"distill.seed": SEED_LIMIT, "teacher.base_seed": SEED_LIMIT, "continual.stream_seed": SEED_LIMIT}


def _check_range(where: str, value: float) -> None:
    if not math.isfinite(value):
        raise BadInputError(f"config {where} must be a finite number, got {value!r}")
    if where in _ABOVE_ZERO and not value > 0:
        raise BadInputError(f"config {where} must be above 0, got {value!r}")
    if where in _SHARES and not 0 <= value <= 1:
        raise BadInputError(f"config {where} must be between 0 and 1, got {value!r}")
    if value >= _BELOW.get(where, math.inf):
        raise BadInputError(f"config {where} must be below {_BELOW[where]}, got {value!r}")
    if value < _AT_LEAST.get(where, value):
        raise BadInputError(f"config {where} must be at least {_AT_LEAST[where]}, got {value!r}")
    if where not in _MAY_BE_NEGATIVE and value < 0:
        raise BadInputError(f"config {where} must not be negative, got {value!r}")


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where + ".")
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise BadInputError(f"config {where} must be one of {typing.get_args(hint)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise BadInputError(f"config {where} must be a list, got {value!r}")
        args = typing.get_args(hint)
        item_hint = args[0] if args else Any
        return origin(_coerce(item_hint, v, where) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise BadInputError(f"config {where} must be {hint.__name__}, got {value!r}")
    if hint in (int, float):
        _check_range(where, value)
    return value
