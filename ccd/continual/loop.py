"""The CCD loop over a stream of blocks, and its baselines, resumable stage by stage.

    report = run_stream(home, "ccd", config)             # every ingested block, in order

Block 0 (shared by every method, computed once per home): train the teacher members, ensemble
them, distill the first student D_0, evaluate. Then, for each later block k, by method:

- ccd: (1) update the student D_{k-1} with proxy-guided replay -> CL_k (`student_update`);
  (2) update every teacher member with LWC-KD and replay from S, P and CL_k (`teacher_update`;
  with `continual.teacher_update = "plain"`, BPR alone, as KD's; with "anchored", from the
  member's anchor, a BPR-only state carried from block to block and updated first);
  (3) ensemble the members and write their top-K lists to the lake; (4) distill the student
  D_k from them (`distill_stage`); evaluate; register D_k and propose it through the
  registry's gate.
- kd: (2) without the collaborative terms, (3), (4); evaluate.
- finetune, retrain, lwckd-student: one student stage (`baselines`); evaluate.

`block_plan` lists a block's stages in order and `stage_work` gives each one's function, so
the flows run exactly these stages (the teacher members side by side). Every stage runs through
the stage ledger (`ccd.stages.run_stage`) as `<method>-<stage>` of its block (`ledger_name`): a
finished stage is skipped on a re-run (its recorded outputs are reused), so the loop resumes
after a stop at the first unfinished stage. A stage writes its artifacts atomically
(`ccd.models.io`, `ccd.ensemble.write_topk`) and returns their paths, which later stages load;
see `state.Layout` for the layout and for retrains under another run key.

Progress: tqdm bars from the training loop (`progress=True`), `logging`, and an optional
`callback(stage, info)` called when a stage starts, finishes or is skipped (info: block, method,
event, seconds, outputs), which the flows turn into their own logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from ccd.atomic import write_text
from ccd.config import SEED_LIMIT, ContinualConfig, RunConfig
from ccd.continual import evaluation
from ccd.continual.baselines import finetune_student, lwckd_student, retrain_student
from ccd.continual.distill_stage import distill_block
from ccd.continual.exclusion import cap, list_pairs, top_pairs
from ccd.continual.gate_baseline import as_served, rescored_metrics
from ccd.continual.pinned_config import check_shared_teacher, pin_config
from ccd.continual.state import BASE, METHODS, Layout, keyed
from ccd.continual.student_update import make_proxies, same_tables, update_student
from ccd.continual.selection import stream_validator
from ccd.continual.teacher_update import MemberSources, ranks_proxies, update_member
from ccd.data import BlockData
from ccd.ensemble import USER_TOPK, Ensemble, StoredTopK, read_topk, write_topk
from ccd.errors import BadInputError, CcdError
from ccd.evaluate import NDCG, RECALL, UserItemCSR, first_counted_block
from ccd.home import Home, keep_matplotlib_cache_in
from ccd.lake import catalog
from ccd.lake.store import load_block_data
from ccd.locking import file_lock
from ccd.models import Recommender, io, parse_members
from ccd.registry import propose, register
from ccd import registry, stages
from ccd.stages import DEFAULT_RUN_KEY
from ccd.teacher import TEACHER, folder_lock, member_dir_name, train_member, train_teacher
from ccd.train import TrainResult, Validator, pick_device

log = logging.getLogger(__name__)
StreamCallback = Callable[[str, dict[str, Any]], None]
STUDENT = "student"
ANCHOR = "anchor"  # the BPR-only member states of `continual.teacher_update = "anchored"`
TEACHER_METHODS = ("ccd", "kd")  # methods that keep a teacher after block 0


def block_seed(seed: int, block: int) -> int:
    """The seed of a model's training at `block`: distinct per block, so no two blocks of a run
    draw the same negatives, and fixed by (seed, block), so a re-run draws them again."""
    return seed * 1000 + block


STREAM_SEED_STRIDE = SEED_LIMIT  # base seeds are below it, so two streams' seeds never meet


def stream_seed(seed: int, config: RunConfig) -> int:
    """`seed` moved to the run's stream (`continual.stream_seed`); unchanged for stream 0."""
    return seed + STREAM_SEED_STRIDE * config.continual.stream_seed


def seeded_for_block(config: RunConfig, block: int) -> RunConfig:
    """`config` with stage 4's seed at `block` (`continual.kd_seed_per_block`). Block 0's
    student, shared by every run key of a home, keeps `distill.seed`."""
    if block == 0:
        return config
    seed = stream_seed(config.distill.seed, config)
    if config.continual.kd_seed_per_block:
        seed = block_seed(seed, block)
    return config.replace(distill=dataclasses.replace(config.distill, seed=seed))


class Run:
    """One method's run over the stream: its config, layout, device and cached block data.

    Parameters
    ----------
    home : Home
    method : str
        One of `state.METHODS`.
    config : RunConfig
    run_key : str
        "default", or a new key to retrain blocks without touching the default run's results.
    progress : bool
        tqdm bars of the training loops on stderr.
    callback : callable, optional
        `callback(stage, info)` on every stage event.
    """

    def __init__(self, home: Home, method: str, config: RunConfig, run_key: str = DEFAULT_RUN_KEY,
                 progress: bool = True, callback: StreamCallback | None = None) -> None:
        if method not in METHODS:
            raise BadInputError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        self.home, self.method, self.config, self.run_key = home, method, config, run_key
        self.progress, self.callback = progress, callback
        self.layout = Layout(home, method, run_key)
        pin_config(home, run_key, config)
        self.base = self.layout.base()
        self.device = pick_device(config.train.device)
        members = parse_members(config.teacher)
        self.members = [name for name, _ in members]
        self.teacher_dim = max(member.dim for _, member in members)
        self._data: dict[int, BlockData] = {}
        self._read: dict[int, str] = {}  # content hash of each block in `_data`
        self._outputs: dict[tuple[str, int, str], dict[str, Any]] = {}
        self._protected: dict[int, np.ndarray] = {}

    # --- plumbing: data, models, stages

    def data(self, block: int) -> BlockData:
        if block not in self._data:
            record = catalog.get_block(self.home, block)  # before the read: a replace in between is caught
            self._data[block] = load_block_data(self.home, block)
            self._read[block] = record.content_hash if record is not None else ""
        return self._data[block]

    def _unchanged(self) -> None:
        """Stop when a block this run has read was replaced since (`ccd ingest --replace`): its
        cached data and the outputs trained on it are stale, and the replace forgot its stages."""
        now = {record.block: record.content_hash for record in catalog.list_blocks(self.home)}
        for block, content_hash in self._read.items():
            if now.get(block) != content_hash:
                raise CcdError(f"block {block} was replaced while this run was under way: run it again to train on its new content")

    def load(self, relative: str) -> Recommender:
        return io.load(self.home.root / relative, self.device)

    def save(self, model: Recommender, layout: Layout, block: int, name: str, result: TrainResult | None = None) -> str:
        metadata = {"block": block, "method": layout.method, "run_key": self.run_key, "run_config": self.config.to_dict()}
        if result is not None:
            metadata["train"] = _brief(result)
        return layout.relative(io.save(model, layout.model_dir(block, name), metadata))

    def stage(self, layout: Layout, block: int, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run `fn` as ledger stage `<method>-<name>` of `block`, skipping it when done."""
        stage = layout.stage(name)
        info = {"block": block, "method": layout.method, "run_key": self.run_key}
        record = stages.get(self.home, block, stage, self.run_key)
        if record is not None and record.status == "done":
            outputs = record.outputs or {}
            self._notify(stage, {**info, "event": "skipped", "outputs": outputs})
        else:
            self._notify(stage, {**info, "event": "start"})
            start = time.perf_counter()

            def work() -> dict[str, Any]:
                self._unchanged()  # under the stage's lock, once its record has started
                return fn()

            with self._shared_folder(block, name):
                outputs = stages.run_stage(self.home, block, stage, work, self.run_key)  # re-checks under the stage's lock
            self._notify(stage, {**info, "event": "done", "seconds": time.perf_counter() - start, "outputs": outputs})
        self._outputs[(layout.method, block, name)] = outputs
        return outputs

    def _shared_folder(self, block: int, name: str) -> AbstractContextManager[Any]:
        """Block 0's teacher folders are one per home: their stages hold the folder's lock until
        recorded, so another run key reaching the same one waits, then finds the finished record
        (keys under other settings are refused anyway, by the claim of `check_shared_teacher`)."""
        if not on_base(block, name) or name not in (*map(member_dir_name, self.members), "ensemble"):
            return contextlib.nullcontext()
        folder = TEACHER if name == "ensemble" else name
        return folder_lock(self.home, self.home.model_dir(0, folder))

    def outputs(self, layout: Layout, block: int, name: str) -> dict[str, Any]:
        """What a finished stage recorded; cached, since a done stage's outputs never change."""
        key = (layout.method, block, name)
        if key not in self._outputs:
            self._outputs[key] = layout.outputs(block, name)
        return self._outputs[key]

    def _notify(self, stage: str, info: dict[str, Any]) -> None:
        log.info("%s block %d: %s", stage, info["block"], info["event"])
        if self.callback is not None:
            self.callback(stage, info)

    # --- where earlier stages left their results

    def student_path(self, block: int) -> str:
        """The served student after `block`."""
        if block == 0:
            return self.outputs(self.base, 0, STUDENT)["path"]
        return self.outputs(self.layout, block, "distill" if self.method in TEACHER_METHODS else STUDENT)["path"]

    def member_path(self, block: int, name: str) -> str:
        """Member `name` as served after `block` (in the ensemble that taught the student)."""
        return self.outputs(self.base if block == 0 else self.layout, block, f"{TEACHER}-{name}")["path"]

    def member_state(self, block: int, name: str) -> str:
        """The state of member `name` after `block` that block + 1 updates: the served member,
        or under "anchored" its anchor (block 0's member is both)."""
        if block > 0 and anchored(self.method, self.config):
            return self.outputs(self.layout, block, f"{ANCHOR}-{name}")["path"]
        return self.member_path(block, name)

    def topk_dir(self, block: int) -> str:
        return self.outputs(self.base if block == 0 else self.layout, block, "ensemble")["topk_dir"]

    def distill_start(self, block: int) -> str:
        """The student D_k (k >= 1) starts from: CCD's updated student CL_k with
        `continual.kd_init = "updated"`, else D_{k-1} (which "fresh" leaves unused)."""
        if self.config.continual.kd_init == "updated" and self.method == "ccd":
            return self.outputs(self.layout, block, "student-update")["updated_student"]
        return self.student_path(block - 1)

    def protected(self, block: int) -> np.ndarray:
        """Old users' top items in the teacher lists of `block - 1`, never BPR negatives; read
        once per block (the student update and every member use them), as those lists are final."""
        if block not in self._protected:
            ids, _ = read_topk(self.home.root / self.topk_dir(block - 1) / USER_TOPK)
            old_users = np.arange(self.data(block - 1).n_users)
            self._protected[block] = list_pairs(ids, cap(self.config.continual.exclude_top, self.data(block).n_items), old_users)
        return self._protected[block]

    def kd_negatives(self, block: int, topk_dir: Path | None = None,
                     settings: ContinualConfig | None = None) -> np.ndarray | None:
        """Pairs stage 4's BPR never draws as negatives (spec 2.2's exclusion lists): each old
        user's top items in block k's teacher lists (`topk_dir`, default this run's), which RRD
        pulls up, and for CCD under S_{k-1}, P_{k-1} (unless `continual.kd_exclusion_proxies` is
        off) and CL_k, block k's train items left out.
        None at block 0, which has no old users, and when `continual.kd_exclude_top` is off in
        `settings` (default this run's; a benchmark re-distilling under other settings passes its own)."""
        c, data = settings or self.config.continual, self.data(block)
        if block == 0 or not c.kd_exclude_top:
            return None
        k, old_users = cap(c.exclude_top, data.n_items), np.arange(self.data(block - 1).n_users)
        ids, _ = read_topk((topk_dir or self.home.root / self.topk_dir(block)) / USER_TOPK)
        pairs = [list_pairs(ids, k, old_users)]
        if self.method == "ccd":
            update = self.outputs(self.layout, block, "student-update")
            fresh = UserItemCSR.from_pairs(data.train, data.n_users, self.device)
            proxies = self.proxies(block) if c.kd_exclusion_proxies else []
            for model in [*proxies, self.load(update["updated_student"]).eval()]:
                pairs.append(top_pairs(model.score, old_users, k, fresh, self.config.train.eval_batch_users, self.device))
        return np.concatenate(pairs)

    def proxies(self, block: int) -> list[Recommender]:
        """S_{k-1}, and P_{k-1} where it differs from S (at block 1 both are D_0): so no caller
        ranks the same tables twice."""
        update = self.outputs(self.layout, block, "student-update")
        stability, plasticity = (self.load(update[name]).eval() for name in ("proxy_s", "proxy_p"))
        return [stability] if same_tables(stability, plasticity) else [stability, plasticity]

    def seed(self, block: int, base: int | None = None) -> int:
        """The seed of a training at `block` >= 1 from `base` (default `distill.seed`)."""
        return block_seed(stream_seed(self.config.distill.seed if base is None else base, self.config), block)

    def validator(self, block: int) -> Validator | None:
        """How a served student's epoch is chosen at `block` (`continual.select_on`): on the same
        earlier blocks as the reported RA, so block 0 only when `with_base_block`."""
        first = first_counted_block(self.config.continual.with_base_block)
        earlier = {j: self.data(j).valid for j in range(first, block)}
        return stream_validator(self.config.continual, earlier, self.data(block), self.config.train.eval_batch_users)


def run_stream(
    home: Home,
    method: str,
    config: RunConfig,
    last_block: int | None = None,
    run_key: str = DEFAULT_RUN_KEY,
    from_block: int = 0,
    progress: bool = True,
    callback: StreamCallback | None = None,
) -> dict[str, Any]:
    """Run `method` over blocks `from_block..last_block` of the lake, then write its report.

    Parameters
    ----------
    home : Home
        Its lake must hold blocks 0..last_block.
    method : {"ccd", "finetune", "retrain", "kd", "lwckd-student"}
    config : RunConfig
    last_block : int, optional
        Default: the newest ingested block.
    run_key : str
        Ledger key of this run; a new key with `from_block = k` retrains blocks k.. without
        touching the default run's records or artifacts (earlier blocks are read from it).
    from_block : int
        First block to run; earlier blocks must be done (under `run_key` or "default").
    progress, callback
        See `Run`.

    Returns
    -------
    dict
        The report (`report`), also written to `reports/stream/<method>/metrics.json` with the
        H-mean plot `hmean.png` (and `reports/stream/hmean_all.png` over every method in the home).
    """
    blocks = [b.block for b in catalog.list_blocks(home)]
    if not blocks:
        raise CcdError(f"the lake in {home.root} is empty: ingest the stream first (ccd ingest-folder FOLDER)")
    last = blocks[-1] if last_block is None else last_block
    if not 0 <= from_block <= last <= blocks[-1]:
        raise BadInputError(f"blocks {from_block}..{last} are not in the lake (ingested: 0..{blocks[-1]})")
    run = Run(home, method, config, run_key, progress, callback)
    _evaluations(run, from_block - 1)  # the blocks before the start must be done: fail before any work
    if from_block > 1 and anchored(method, config):  # and the anchors its members start from
        for name in run.members:
            run.member_state(from_block - 1, name)
    for block in range(from_block, last + 1):
        run_block(run, block)
    return write_report(run, last)


def first_block(home: Home, method: str, run_key: str) -> int:
    """Where `method`'s run under `run_key` starts: 0 for the default run or a key with nothing of
    the method recorded, else the first block with a stage of the method (or a base stage) under
    the key, so a retrain started at block k resumes at k rather than re-running blocks 0..k-1.
    Per method: another method under the key may not have the blocks before k in the default run."""
    if run_key == DEFAULT_RUN_KEY:
        return 0
    blocks = [s.block for s in stages.list_stages(home, run_key=run_key) if s.stage.startswith((f"{method}-", f"{BASE}-"))]
    return min(blocks, default=0)


def anchored(method: str, config: RunConfig) -> bool:
    """Whether `method`'s members update from anchors (`continual.teacher_update = "anchored"`)."""
    return method == "ccd" and config.continual.teacher_update == "anchored"


def block_plan(block: int, method: str, members: list[str], with_anchors: bool = False) -> list[tuple[str, ...]]:
    """The stages of one block for `method`, in order, as groups of stages that do not depend on
    each other (the teacher members): `run_block` runs them one after another, the flows side
    by side. Stage names are the ledger's without the method, e.g. "teacher-bpr-0".

    Block 0 (every method, shared): members, ensemble, the first student D_0, evaluation. A CCD
    block k: student update, members, ensemble, distillation of D_k, evaluation. KD: the same
    without the student update. The other baselines: one student stage, evaluation. CCD then
    registers the block's student. `with_anchors` (`anchored`): a CCD block also updates the
    members' anchors, beside the student's update and before the members that start from them.
    """
    teachers = tuple(f"{TEACHER}-{name}" for name in members)
    if block == 0:
        groups = [teachers, ("ensemble",), (STUDENT,), ("evaluate",)]
    elif method == "ccd":
        first = ("student-update", *(f"{ANCHOR}-{name}" for name in members)) if with_anchors else ("student-update",)
        groups = [first, teachers, ("ensemble",), ("distill",), ("evaluate",)]
    elif method == "kd":
        groups = [teachers, ("ensemble",), ("distill",), ("evaluate",)]
    else:
        groups = [(STUDENT,), ("evaluate",)]
    return groups + [("register",)] if method == "ccd" else groups


def on_base(block: int, stage: str) -> bool:
    """Whether `stage` of `block` belongs to the shared block 0 ("base" in the ledger)."""
    return block == 0 and stage != "register"


def ledger_name(block: int, stage: str, method: str) -> str:
    """The ledger name of a `block_plan` stage, e.g. "base-ensemble" or "ccd-distill"."""
    return f"{BASE if on_base(block, stage) else method}-{stage}"


def stage_work(run: Run, block: int, stage: str) -> tuple[Layout, Callable[[], dict[str, Any]]]:
    """The function of `stage` (a `block_plan` name) of `block`, and the layout it is recorded under."""
    member = stage.removeprefix(f"{TEACHER}-")
    if stage.startswith(f"{ANCHOR}-"):
        return run.layout, lambda: member_stage(run, block, stage.removeprefix(f"{ANCHOR}-"), False, ANCHOR)
    if on_base(block, stage):
        base = {
            "ensemble": lambda: base_ensemble_stage(run),
            STUDENT: lambda: distilled_stage(run, run.base, 0),
            "evaluate": lambda: evaluate_stage(run, 0),
        }
        return run.base, base.get(stage, lambda: base_member_stage(run, member))
    later = {
        "student-update": lambda: student_update_stage(run, block),
        "ensemble": lambda: ensemble_stage(run, block),
        "distill": lambda: distilled_stage(run, run.layout, block),
        STUDENT: lambda: baseline_student(run, block),
        "evaluate": lambda: evaluate_stage(run, block),
        "register": lambda: register_stage(run, block),
    }
    collaborative = run.method == "ccd" and run.config.continual.teacher_update != "plain"
    return run.layout, later.get(stage, lambda: member_stage(run, block, member, collaborative))


def run_block(run: Run, block: int) -> None:
    """Every stage of one block for `run.method`, in order (done stages are skipped)."""
    for group in block_plan(block, run.method, run.members, anchored(run.method, run.config)):
        for stage in group:
            layout, work = stage_work(run, block, stage)
            run.stage(layout, block, stage, work)


# --- block 0, shared by every method


def base_member_stage(run: Run, name: str) -> dict[str, Any]:
    _check_shared_teacher(run)
    row = train_member(run.home, 0, name, run.config, progress=run.progress)
    return {"path": run.base.relative(run.home.model_dir(0, member_dir_name(name))), "report": row}


def base_ensemble_stage(run: Run) -> dict[str, Any]:
    _check_shared_teacher(run)
    report = train_teacher(run.home, 0, run.config, progress=run.progress)  # members are reused, not retrained
    return {"topk_dir": run.base.relative(run.home.model_dir(0, TEACHER)), "ensemble": report["ensemble"]}


def _check_shared_teacher(run: Run) -> None:
    """Block 0's teacher is one per home: refuse to retrain it under other settings than the run
    keys that already finished it (`pinned_config.check_shared_teacher`)."""
    trained_by = {r.run_key for r in stages.list_stages(run.home, block=0)
                  if r.status == "done" and r.stage.startswith(f"{BASE}-{TEACHER}")}
    check_shared_teacher(run.home, run.run_key, run.config, sorted(trained_by))


# --- CCD and KD blocks


def student_update_stage(run: Run, block: int) -> dict[str, Any]:
    """CL_k from D_{k-1} with the proxies S_{k-1}, P_{k-1}; saves all three."""
    layout, data = run.layout, run.data(block)
    previous = run.load(run.student_path(block - 1))
    if block == 1:
        stability, plasticity = make_proxies(previous, None, None, run.config.continual)
    else:
        before = run.outputs(layout, block - 1, "student-update")
        stability, plasticity = make_proxies(previous, run.load(before["proxy_s"]), run.load(before["proxy_p"]), run.config.continual)
    update = update_student(previous, stability, plasticity, data, run.data(block - 1).train, run.config,
                            run.protected(block), run.seed(block), run.progress, validator=run.validator(block))
    return {
        "updated_student": run.save(update.model, layout, block, "updated-student", update.train),
        "proxy_s": run.save(stability, layout, block, "proxy-s"),
        "proxy_p": run.save(plasticity, layout, block, "proxy-p"),
        "replay_pairs": update.replay_pairs,
        "train": _brief(update.train),
    }


def member_stage(run: Run, block: int, name: str, collaborative: bool, role: str = TEACHER) -> dict[str, Any]:
    """Member `name` after block k, from its state after k-1 (CCD: with LWC-KD and replay), saved
    as `<role>-<name>`. An anchor (`role = ANCHOR`) is its anchor after k-1 fine-tuned with BPR
    alone, as KD's member (same start, same seed), so the collaborative terms never compound."""
    c, data = run.config.continual, run.data(block)
    previous = run.load(run.member_state(block - 1, name))
    sources, protected = None, None  # KD: plain BPR, no replay and no exclusion lists
    if collaborative:
        update = run.outputs(run.layout, block, "student-update")
        proxies = run.proxies(block) if ranks_proxies(c) else []
        sources = MemberSources(list(zip(proxies, (c.teacher_stability_samples, c.teacher_plasticity_samples))),
                                (run.load(update["updated_student"]), c.teacher_student_samples))
        protected = run.protected(block) if c.teacher_exclusion_lists else None
    model, result = update_member(previous, data, run.data(block - 1).train, run.config, sources, collaborative,
                                  protected, run.seed(block, previous.config.seed), run.progress)
    return {"path": run.save(model, run.layout, block, f"{role}-{name}", result), "train": _brief(result)}


def ensemble_stage(run: Run, block: int) -> dict[str, Any]:
    """The members' rank ensemble after block k, as top-K lists in the lake."""
    data, k = run.data(block), run.config.teacher.top_k
    ensemble = Ensemble([run.load(run.member_path(block, name)) for name in run.members], run.config.teacher.rank_exponent)
    out_dir = run.layout.topk_dir(block)
    write_topk(ensemble.score, data.n_users, data.n_items, data.seen_train, out_dir, k, k, run.config.train.eval_batch_users, run.device)
    return {"topk_dir": run.layout.relative(out_dir)}


def distilled_stage(run: Run, layout: Layout, block: int) -> dict[str, Any]:
    """D_k: a student distilled from the ensemble's lists of block k (from D_{k-1}, CL_k or fresh)."""
    start = run.load(run.distill_start(block)) if block > 0 else None
    result = distill_block(run.home.root / run.topk_dir(block), run.data(block), seeded_for_block(run.config, block), run.teacher_dim, start,
                           run.progress, validator=run.validator(block), exclude_negatives=run.kd_negatives(block))
    path = run.save(result.student, layout, block, STUDENT, result.train)
    return {"path": path, "params": result.student.parameter_count(), "train": _brief(result.train)}


# --- baselines


def baseline_student(run: Run, block: int) -> dict[str, Any]:
    """The served student of a baseline after block k."""
    data, validator = run.data(block), run.validator(block)
    if run.method == "retrain":
        streamed = dataclasses.replace(run.config.distill, seed=stream_seed(run.config.distill.seed, run.config))
        model, result = retrain_student(data, run.config.replace(distill=streamed), run.teacher_dim, run.progress,
                                        validator=validator)  # its initial tables and its draws
    else:
        previous = run.load(run.student_path(block - 1))
        if run.method == "finetune":
            model, result = finetune_student(previous, data, run.config, run.seed(block), run.progress, validator=validator)
        else:
            model, result = lwckd_student(previous, data, run.data(block - 1).train, run.config, run.seed(block), run.progress,
                                          validator=validator)
    path = run.save(model, run.layout, block, STUDENT, result)
    return {"path": path, "params": model.parameter_count(), "train": _brief(result)}


# --- evaluation, registration, report


def evaluate_stage(run: Run, block: int) -> dict[str, Any]:
    """Matrix rows of the student (and the teacher, when the method keeps one) after block k."""
    data = run.data(block)
    tests = {j: run.data(j).test for j in range(block + 1)}
    rank = lambda model: evaluation.evaluate_block(model.score, block, tests, data.seen_train, data.n_items,
                                                   run.config.train.eval_batch_users, run.device)
    student = run.load(run.student_path(block))
    out: dict[str, Any] = {"student": rank(student), "student_params": student.parameter_count(), "teacher": None}
    if block == 0 or run.method in TEACHER_METHODS:
        members = [run.load(run.member_path(block, name)) for name in run.members]
        # The stored lists exclude the same seen pairs as the evaluation: their top is the ranking's.
        stored = run.config.teacher.top_k >= evaluation.CUTOFF
        teacher = StoredTopK(run.home.root / run.topk_dir(block) / USER_TOPK, data.n_items) if stored else Ensemble(members, run.config.teacher.rank_exponent)
        out["teacher"] = rank(teacher)
        out["teacher_params"] = sum(m.parameter_count() for m in members)
    return out


def _evaluations(run: Run, last: int) -> list[dict[str, Any]]:
    return [run.outputs(run.base if k == 0 else run.layout, k, "evaluate") for k in range(last + 1)]


def metrics_table(run: Run, block: int) -> list[dict[str, Any]]:
    """Student and teacher after each block 0..`block`: own-block Recall/NDCG@20, LA, RA, H of
    Recall@20 and H of NDCG@20, one row per model and block (the flows' metrics artifact).

    Read from the evaluate stages' records; a model missing after some block (a baseline keeps no
    teacher after block 0) is left out. `params` is given on the row of `block`.
    """
    evaluations = _evaluations(run, block)
    rows = []
    for side in ("student", "teacher"):
        if not all(e.get(side) for e in evaluations):
            continue
        matrix = [row for e in evaluations for row in e[side]]
        for summary in evaluation.summaries(matrix, run.config.continual.with_base_block):
            recall = (summary["summary"] or {}).get(RECALL) or {}
            ndcg = (summary["summary"] or {}).get(NDCG) or {}
            rows.append({
                "model": side, "after_block": summary["block"], RECALL: summary[RECALL], NDCG: summary[NDCG],
                "LA": recall.get("LA"), "RA": recall.get("RA"), "H": recall.get("H"), f"H_{NDCG}": ndcg.get("H"),
                "params": evaluations[-1][f"{side}_params"] if summary["block"] == block else None,
            })
    return rows


def register_stage(run: Run, block: int) -> dict[str, Any]:
    """Register D_k as a version of "student" (method ccd), propose it through the gate, and
    prune old versions' copies when `registry.keep_copies` says so."""
    evaluations = _evaluations(run, block)
    rows = [row for e in evaluations for row in e["student"]]
    metrics = evaluation.gate_metrics(evaluation.summaries(rows, run.config.continual.with_base_block)[-1])
    members = {name: _artifact(run, run.member_path(block, name)) for name in run.members}
    path = run.student_path(block)
    lineage = {
        "blocks": list(range(block + 1)),
        "run_key": run.run_key,
        "trained_into": path,  # the registry serves its own copy of it
        "teacher_members": members,
        "teacher_topk": run.topk_dir(block),
        "start_student": run.distill_start(block) if block else None,
    }
    version = register(run.home, STUDENT, path, block, run.method, metrics, evaluations[-1]["student_params"], lineage, run.config)
    history = [row for e in evaluations[:-1] for row in e["student"]]
    decision = propose(run.home, STUDENT, version.version, run.config.registry, production_rescored(run, block, history))
    keep = run.config.registry.keep_copies
    pruned = [v.version for v in registry.prune(run.home, STUDENT, keep).pruned] if keep else []
    return {"version": version.version, "promoted": decision.promoted, "reason": decision.reason, "metrics": metrics,
            "pruned": pruned}


def production_rescored(run: Run, block: int, history: list[dict[str, Any]]) -> dict[int, float]:
    """{production version: its gate metric as the model after `block`, on the candidate's tests}.

    See `ccd.continual.gate_baseline`; empty when there is no production yet.
    """
    current = registry.aliases(run.home, STUDENT).get(registry.PRODUCTION)
    if current is None:
        return {}
    production = registry.get(run.home, STUDENT, current)
    model = io.load(registry.load_artifact_path(run.home, STUDENT, current), run.device)
    data = run.data(block)
    served = as_served(model, data.n_items, run.data(production.block).seen_train)
    tests = {j: run.data(j).test for j in range(block + 1)}
    metrics = rescored_metrics(served, history, block, tests, data.seen_train, data.n_items,
                               run.config.continual.with_base_block, run.config.train.eval_batch_users, run.device)
    return {current: metrics[run.config.registry.metric]}


def _artifact(run: Run, relative: str) -> dict[str, str]:
    return {"path": relative, "sha256": io.read_metadata(run.home.root / relative)["weights_sha256"]}


def report(run: Run, last: int) -> dict[str, Any]:
    """Matrices, per-block summaries, parameter counts and stage timings of blocks 0..last."""
    evaluations = _evaluations(run, last)
    with_base = run.config.continual.with_base_block
    out: dict[str, Any] = {"method": run.method, "run_key": run.run_key, "blocks": list(range(last + 1))}
    for side in ("student", "teacher"):
        rows = [row for e in evaluations if e.get(side) for row in e[side]]
        has_all = all(e.get(side) for e in evaluations)
        out[side] = {
            "params": evaluations[-1].get(f"{side}_params"),
            "matrix": rows,
            "blocks": evaluation.summaries(rows, with_base),
        } if has_all else None
    out["stages"] = _timings(run, last)
    if run.method == "ccd":  # the registered blocks (a flow run that stops at evaluation registers none)
        decisions = (stages.done_outputs(run.home, k, run.layout.stage("register"), run.layout.run_keys) for k in range(last + 1))
        out["registry"] = [d for d in decisions if d is not None]
    return out


def _timings(run: Run, last: int) -> list[dict[str, Any]]:
    """Seconds of every finished stage of this method (and block 0's) up to `last`."""
    prefixes = (f"{run.method}-", f"{BASE}-")
    chosen: dict[tuple[int, str], Any] = {}
    for key in reversed(run.layout.run_keys):  # own key last, so it wins
        for record in stages.list_stages(run.home, run_key=key):
            if record.block <= last and record.stage.startswith(prefixes) and record.status == "done":
                chosen[(record.block, record.stage)] = record
    return [{"block": b, "stage": s, "run_key": r.run_key, "seconds": r.seconds} for (b, s), r in sorted(chosen.items())]


def write_report(run: Run, last: int) -> dict[str, Any]:
    """Write `metrics.json` and `hmean.png` for this method, `hmean_all.png` over all methods, and
    `ccd_lead.png` (CCD's student lead over each baseline) once CCD and a baseline have results.
    The last two compare the methods' runs under this run key only: a retrain under another key
    has other settings, so it gets its own pair in `reports/stream/run=<key>/`."""
    result = report(run, last)
    keep_matplotlib_cache_in(run.home)
    folder = run.layout.report_dir
    result["files"] = {"metrics": str(folder / "metrics.json"), "plot": str(folder / "hmean.png")}
    evaluation.plot_hmean(_series(result), folder / "hmean.png", f"{run.method}: H-mean over blocks")
    # One method's report at a time per key: two methods finishing together would each draw the
    # comparison from the other's previous metrics.json.
    with file_lock(run.home, f"stream-report-{run.run_key}", timeout=None, remove=True):
        reports = _stream_reports(run.home, run.run_key, result)
        if len(reports) > 1:
            path = _comparison_dir(run.home, run.run_key) / "hmean_all.png"
            series = {name: points for r in reports for name, points in _series(r, f"{r['method']} ").items()}
            evaluation.plot_hmean(series, path, "H-mean over blocks, every method")
            result["files"]["plot_all"] = str(path)
            _add_ccd_lead(_comparison_dir(run.home, run.run_key), reports, result)
        # Last, once the plots are drawn: a report's metrics.json says it is up to date.
        write_text(folder / "metrics.json", json.dumps(result, indent=2, default=str) + "\n")
    return result


def _add_ccd_lead(folder: Path, reports: list[dict[str, Any]], result: dict[str, Any]) -> None:
    """CCD's student H minus each baseline's, per block, into `result` and `ccd_lead.png`."""
    leads = evaluation.ccd_leads({r["method"]: r for r in reports})
    if not leads:
        return
    result["ccd_lead"] = {name: [{"block": b, "lead": lead} for b, lead in points] for name, points in leads.items()}
    path = folder / "ccd_lead.png"
    evaluation.plot_lead(leads, path, "CCD student's H-mean lead over each baseline's")
    result["files"]["plot_lead"] = str(path)


def _series(result: dict[str, Any], prefix: str = "") -> dict[str, list[tuple[int, float]]]:
    series = {}
    for side in ("student", "teacher"):
        if result.get(side):
            series[f"{prefix}{side}"] = evaluation.hmean_points(result[side]["blocks"])
    return series


def _comparison_dir(home: Home, run_key: str) -> Path:
    """Where the plots over every method of one run key go."""
    return keyed(home.reports / "stream", run_key)


def _stream_reports(home: Home, run_key: str, current: dict[str, Any]) -> list[dict[str, Any]]:
    """Every method's report under `run_key`, in method-name order: `current` for its method,
    the others' `metrics.json`."""
    reports = []
    for method in sorted(METHODS):
        path = Layout(home, method, run_key).report_dir / "metrics.json"
        if method == current["method"]:
            reports.append(current)
        elif path.exists():
            reports.append(json.loads(path.read_text()))
    return reports


def _brief(result: TrainResult) -> dict[str, Any]:
    """What a stage records of a training run (the full history stays in the model's metadata)."""
    return {
        "best_epoch": result.best_epoch,
        "epochs": result.epochs_run,
        "s_per_epoch": round(result.seconds_per_epoch, 4),
        "valid": result.best_metrics,
    }
