"""The model registry: versions, idempotent registration, the promotion gate, rollback, integrity,
concurrent promotions and the `ccd registry` CLI."""

import json
import math
import multiprocessing
import random

import pytest

from ccd import atomic, registry
from ccd.registry import pruning, store
from ccd.config import GateConfig, RunConfig
from ccd.errors import BadInputError
from ccd.home import Home
from ccd.registry import ArtifactIntegrityError, RegistryError

METRIC = "h_recall@20"


@pytest.fixture
def home(tmp_path):
    return Home.resolve(tmp_path / "home")


def artifact(home, name, content=b"weights"):
    """A one-file model folder under the home's models folder; returns its path."""
    folder = home.models / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(content)
    return folder


def add(home, score, content=None, block=0, name="student", **kwargs):
    path = artifact(home, f"{name}-{block}-{score}", content or f"{name}{block}{score}".encode())
    kwargs.setdefault("n_params", 1000)
    return registry.register(home, name, path, block, "ccd", {METRIC: score, "recall@20": score}, **kwargs)


def test_register_list_and_get(home):
    config = RunConfig()
    first = add(home, 0.30, lineage={"teacher_version": 2, "blocks": [0]}, config=config)
    second = add(home, 0.31, block=1)
    teacher = add(home, 0.40, name="teacher")

    assert (first.version, second.version, teacher.version) == (1, 2, 1)
    assert first.artifact == f"registry/student/{first.sha256}"  # the registry's own copy
    assert first.status == "registered" and first.aliases == ()
    assert first.lineage == {"teacher_version": 2, "blocks": [0]}
    assert RunConfig.from_dict(first.config) == config
    assert first.sha256 == registry.sha256_artifact(first.path(home))
    assert [(v.name, v.version) for v in registry.list_versions(home)] == [("student", 1), ("student", 2), ("teacher", 1)]
    assert [v.version for v in registry.list_versions(home, "student")] == [1, 2]
    assert registry.get(home, "student", 2) == second
    assert registry.get(home, "student", "2") == second
    with pytest.raises(RegistryError, match="no alias 'production'"):
        registry.get(home, "student")
    with pytest.raises(RegistryError, match="no version 7"):
        registry.get(home, "student", 7)


def test_register_is_idempotent_per_artifact_block_and_method(home):
    path = artifact(home, "m", b"same bytes")
    first = registry.register(home, "student", path, 0, "ccd", {METRIC: 0.3}, 10)
    again = registry.register(home, "student", path, 0, "ccd", {METRIC: 0.9}, 10)
    assert again == first and again.metrics[METRIC] == 0.3
    assert registry.register(home, "student", path, 1, "ccd", {METRIC: 0.3}, 10).version == 2
    assert registry.register(home, "student", path, 0, "derrd", {METRIC: 0.3}, 10).version == 3
    (path / "model.safetensors").write_bytes(b"retrained")
    assert registry.register(home, "student", path, 0, "ccd", {METRIC: 0.3}, 10).version == 4
    assert len(registry.list_versions(home)) == 4


def test_a_version_keeps_its_bytes_when_its_models_folder_is_written_again(home):
    """A re-run of a block (a replaced block, a forced stage) saves into the same models folder:
    production must still load what was registered, and the new model registers beside it."""
    path = artifact(home, "m", b"first training")
    first = registry.register(home, "student", path, 3, "ccd", {METRIC: 0.3}, 10)
    registry.propose(home, "student", first.version)
    (path / "model.safetensors").write_bytes(b"second training")
    assert registry.load_artifact_path(home, "student") == first.path(home)
    assert (first.path(home) / "model.safetensors").read_bytes() == b"first training"
    second = registry.register(home, "student", path, 3, "ccd", {METRIC: 0.3}, 10)
    assert second.version == 2 and (second.path(home) / "model.safetensors").read_bytes() == b"second training"
    assert not list(first.path(home).parent.glob(".tmp-*"))  # no staging folder left behind


def test_a_damaged_kept_copy_is_replaced_and_a_file_artifact_keeps_its_suffix(home):
    path = artifact(home, "m", b"bytes")
    first = registry.register(home, "student", path, 0, "ccd", {METRIC: 0.3}, 10)
    (first.path(home) / "model.safetensors").write_bytes(b"damaged")
    again = registry.register(home, "student", path, 1, "ccd", {METRIC: 0.3}, 10)  # same bytes, another block
    assert again.path(home) == first.path(home)
    registry.verify_artifact(home, first)  # repaired for both versions
    file = home.root / "models" / "topk.parquet"
    file.write_bytes(b"PAR1 not really")
    version = registry.register(home, "lists", file, 0, "ccd", {METRIC: 0.3}, 10)
    assert version.artifact == f"registry/lists/{version.sha256}.parquet" and version.path(home).read_bytes() == b"PAR1 not really"


def test_an_artifact_that_changes_while_it_is_copied_is_refused(home, monkeypatch):
    path = artifact(home, "m", b"bytes")

    def copy_then_change(source, target):
        atomic.copy_whole(source, target)
        (target / "model.safetensors").write_bytes(b"written meanwhile")

    monkeypatch.setattr(store, "copy_whole", copy_then_change)
    with pytest.raises(ArtifactIntegrityError, match="changed while it was registered"):
        registry.register(home, "student", path, 0, "ccd", {METRIC: 0.3}, 10)
    assert registry.list_versions(home) == [] and not list((home.root / "registry" / "student").iterdir())


def test_a_version_registered_before_the_kept_copies_gets_one_when_registered_again(home):
    path = artifact(home, "m", b"bytes")
    version = registry.register(home, "student", path, 0, "ccd", {METRIC: 0.3}, 10)
    with store.connect(home, write=True) as con:  # as versions were recorded before
        con.execute("UPDATE versions SET artifact = ? WHERE version = ?", [home.relative(path), version.version])
    again = registry.register(home, "student", path, 0, "ccd", {METRIC: 0.3}, 10)
    assert again.version == version.version and again.artifact == f"registry/student/{version.sha256}"


def test_folder_checksum_covers_file_names(home):
    path = artifact(home, "m")
    before = registry.sha256_artifact(path)
    (path / "model.safetensors").rename(path / "renamed.safetensors")
    assert registry.sha256_artifact(path) != before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "../x"}, "invalid model name"),
        ({"method": "a/b"}, "invalid method"),
        ({"block": -1}, "block must be"),
        ({"n_params": -5}, "n_params must be"),
        ({"metrics": {METRIC: "high"}}, "must map a name to a number"),
        ({"lineage": {"x": object()}}, "lineage must be JSON"),
        ({"artifact_path": "../outside"}, "outside the home folder"),
    ],
)
def test_register_rejects_bad_input(home, tmp_path, kwargs, message):
    (tmp_path / "outside").write_bytes(b"x")
    args = {"name": "student", "artifact_path": artifact(home, "m"), "block": 0, "method": "ccd",
            "metrics": {METRIC: 0.3}, "n_params": 10, **kwargs}
    with pytest.raises(BadInputError, match=message):
        registry.register(home, **args)
    assert registry.list_versions(home) == []


def test_gate_promotes_first_and_better_and_keeps_worse_as_candidate(home):
    v1, v2, v3 = add(home, 0.30), add(home, 0.32, block=1), add(home, 0.25, block=2)

    first = registry.propose(home, "student", v1.version)
    assert first.promoted and first.previous_production is None and "no production yet" in first.reason

    better = registry.propose(home, "student", v2.version)
    assert better.promoted and better.previous_production == 1 and better.baseline == pytest.approx(0.30)

    worse = registry.propose(home, "student", v3.version)
    assert not worse.promoted
    assert worse.reason == "h_recall@20 0.2500 is 0.0700 below production v2 0.3200 (tolerance 0.005)"
    assert (worse.value, worse.baseline, worse.previous_production) == (0.25, 0.32, 2)

    assert registry.aliases(home, "student") == {"candidate": 3, "production": 2}
    statuses = {v.version: v.status for v in registry.list_versions(home)}
    assert statuses == {1: "archived", 2: "production", 3: "candidate"}
    assert registry.get(home, "student", "candidate").reason == worse.reason
    assert [d.kind for d in registry.list_decisions(home, "student")] == ["gate"] * 3


def test_gate_compares_with_production_rescored_on_the_same_tests_while_it_is_production(home):
    v1, v2 = add(home, 0.40), add(home, 0.30, block=1)  # v1's 0.40 was measured on block 0 alone
    registry.propose(home, "student", v1.version)
    decision = registry.propose(home, "student", v2.version, rescored={1: 0.20})
    assert decision.promoted and decision.baseline == pytest.approx(0.20)
    assert decision.reason == "h_recall@20 0.3000 vs production v1 0.2000 on the same tests: within tolerance 0.005"

    v3 = add(home, 0.25, block=2)
    stale = registry.propose(home, "student", v3.version, rescored={1: 0.10})  # v1 is no longer production
    assert not stale.promoted and stale.baseline == pytest.approx(0.30)
    assert "on the same tests" not in stale.reason


def test_gate_keeps_a_retrain_of_an_older_block_back_however_good(home):
    """A retrain of block 1 must not replace a production that knows blocks 2-3's ids."""
    registry.propose(home, "student", add(home, 0.20, block=3).version)
    retrained = registry.propose(home, "student", add(home, 0.90, block=1).version)
    assert not retrained.promoted
    assert retrained.reason == (
        "trained through block 1, older than production v1's block 3: "
        "it would not know the newer blocks' users and items"
    )
    assert registry.aliases(home, "student") == {"candidate": 2, "production": 1}
    same_block = registry.propose(home, "student", add(home, 0.30, block=3).version)
    assert same_block.promoted


def test_gate_tolerance_edge_is_inclusive(home):
    gate = GateConfig(metric=METRIC, tolerance=0.005)
    registry.propose(home, "student", add(home, 0.300).version, gate)
    at_edge = registry.propose(home, "student", add(home, 0.295, block=1).version, gate)
    assert at_edge.promoted and "within tolerance" in at_edge.reason
    past_edge = registry.propose(home, "student", add(home, 0.2899, block=2).version, gate)
    assert not past_edge.promoted
    assert registry.aliases(home, "student")["production"] == 2


def test_gate_metric_is_configurable(home):
    path = artifact(home, "m")
    v = registry.register(home, "student", path, 0, "ccd", {"ndcg@20": 0.1}, 10)
    decision = registry.propose(home, "student", v.version, GateConfig(metric="ndcg@20"))
    assert decision.promoted and decision.metric == "ndcg@20"


def test_propose_is_idempotent(home):
    v1, v2 = add(home, 0.3), add(home, 0.1, block=1)
    first = registry.propose(home, "student", v1.version)
    kept = registry.propose(home, "student", v2.version)
    assert registry.propose(home, "student", v1.version) == first
    assert registry.propose(home, "student", v2.version) == kept
    assert len(registry.list_decisions(home)) == 2


def _break_nan(home, v):
    return registry.register(home, "student", artifact(home, "nan"), 0, "ccd", {METRIC: math.nan}, 10)


def _break_missing_metric(home, v):
    return registry.register(home, "student", artifact(home, "nometric"), 0, "ccd", {"recall@20": 0.3}, 10)


def _break_zero_params(home, v):
    return registry.register(home, "student", artifact(home, "zero"), 0, "ccd", {METRIC: 0.3}, 0)


def _break_missing_artifact(home, v):
    (v.path(home) / "model.safetensors").unlink()
    v.path(home).rmdir()
    return v


def _break_tampered_artifact(home, v):
    (v.path(home) / "model.safetensors").write_bytes(b"tampered")
    return v


@pytest.mark.parametrize(
    "breaker, message",
    [
        (_break_nan, "non-finite metrics"),
        (_break_missing_metric, "gate metric 'h_recall@20' missing"),
        (_break_zero_params, "parameter count 0"),
        (_break_missing_artifact, "is missing"),
        (_break_tampered_artifact, "does not match its registered sha256"),
    ],
)
def test_gate_rejects_insane_versions(home, breaker, message):
    broken = breaker(home, add(home, 0.9))
    decision = registry.propose(home, "student", broken.version)
    assert not decision.promoted and decision.kind == "gate"
    assert decision.reason.startswith("failed sanity checks") and message in decision.reason
    assert registry.get(home, "student", broken.version).status == "rejected"
    assert registry.aliases(home, "student") == {}


def test_manual_promote_bypasses_gate_but_not_integrity(home):
    v1, v2 = add(home, 0.3), add(home, 0.1, block=1)
    registry.propose(home, "student", v1.version)
    registry.propose(home, "student", v2.version)
    decision = registry.promote(home, "student", v2.version, "ops override")
    assert decision.promoted and decision.kind == "manual" and decision.reason == "ops override"
    assert registry.aliases(home, "student") == {"production": 2}
    with pytest.raises(RegistryError, match="already production"):
        registry.promote(home, "student", v2.version, "again")
    with pytest.raises(BadInputError, match="needs a reason"):
        registry.promote(home, "student", v1.version, " ")
    _break_tampered_artifact(home, v1)
    with pytest.raises(ArtifactIntegrityError):
        registry.promote(home, "student", v1.version, "tampered")
    assert registry.aliases(home, "student") == {"production": 2}


def test_rollback_walks_back_through_history(home):
    for block, score in enumerate([0.30, 0.31, 0.32]):
        registry.propose(home, "student", add(home, score, block=block).version)
    assert registry.aliases(home, "student")["production"] == 3

    back = registry.rollback(home, "student", "bad online metrics")
    assert (back.version, back.previous_production, back.kind) == (2, 3, "rollback")
    assert back.reason == "bad online metrics: v3 -> v2"
    assert registry.rollback(home, "student").version == 1
    with pytest.raises(RegistryError, match="nothing to roll back to: student v1 was the first production"):
        registry.rollback(home, "student")
    assert registry.aliases(home, "student")["production"] == 1
    statuses = {v.version: v.status for v in registry.list_versions(home)}
    assert statuses == {1: "production", 2: "archived", 3: "archived"}


def test_rollback_without_production_is_a_clear_error(home):
    add(home, 0.3)
    with pytest.raises(RegistryError, match="no alias 'production'"):
        registry.rollback(home, "student")


def test_load_artifact_path_verifies_checksum(home):
    v1 = add(home, 0.3)
    registry.propose(home, "student", v1.version)
    assert registry.load_artifact_path(home, "student") == v1.path(home)
    assert registry.load_artifact_path(home, "student", 1) == v1.path(home)
    _break_tampered_artifact(home, v1)
    with pytest.raises(ArtifactIntegrityError, match="student v1"):
        registry.load_artifact_path(home, "student")


def test_json_output_is_valid_with_nan_metrics(home):
    v = _break_nan(home, None)
    assert json.loads(json.dumps(v.to_dict(), allow_nan=False))["metrics"][METRIC] is None


def _hammer(root, seed, rounds, results):
    home, rng, promoted = Home(root), random.Random(seed), 0
    for _ in range(rounds):
        try:
            registry.promote(home, "student", rng.randint(1, 4), f"worker {seed}")
            promoted += 1
        except RegistryError:
            pass  # it was production already
    results.put(promoted)


def test_concurrent_promotions_serialize(home):
    for block in range(4):
        add(home, 0.3, block=block)
    ctx = multiprocessing.get_context("spawn")  # clean workers, see tests/test_locking.py
    results = ctx.Queue()
    workers = [ctx.Process(target=_hammer, args=(home.root, seed, 15, results)) for seed in (1, 2)]
    for worker in workers:
        worker.start()
    promoted = sum(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0

    decisions = registry.list_decisions(home, "student")
    assert len(decisions) == promoted > 0
    # Serialized: each promotion replaced exactly the production left by the one before it.
    assert decisions[0].previous_production is None
    for before, after in zip(decisions, decisions[1:]):
        assert after.previous_production == before.version != after.version
    production = registry.aliases(home, "student")["production"]
    assert production == decisions[-1].version
    assert [v.version for v in registry.list_versions(home) if v.status == "production"] == [production]


def cli(capsys, *argv):
    from ccd.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_prints_one_object(home, capsys):
    add(home, 0.3), add(home, 0.1, block=1)
    base = ["--home", str(home.root), "--json"]

    code, out, _ = cli(capsys, "registry", "promote", "student", "1", "--gate", *base)
    assert code == 0 and json.loads(out)["decision"]["promoted"] is True
    code, out, _ = cli(capsys, "registry", "promote", "student", "2", "--gate", *base)
    assert code == 0 and json.loads(out) == {"decision": json.loads(out)["decision"], "production": 1}
    assert json.loads(out)["decision"]["promoted"] is False

    for argv in (["list"], ["show", "student"], ["show", "student", "candidate"], ["history", "student"]):
        code, out, _ = cli(capsys, "registry", *argv, *base)
        assert code == 0 and out.count("\n") == 1 and isinstance(json.loads(out), dict)
    assert [v["version"] for v in json.loads(cli(capsys, "registry", "list", *base)[1])["versions"]] == [1, 2]
    assert json.loads(cli(capsys, "registry", "show", "student", *base)[1])["version"]["version"] == 1

    code, _, err = cli(capsys, "registry", "promote", "student", "2", "--set", "registry.tolerance=1", *base)
    assert code == 2 and "only with --gate" in err  # settings a forced promotion would ignore
    code, out, _ = cli(capsys, "registry", "promote", "student", "2", "--reason", "override", *base)
    assert code == 0 and json.loads(out)["production"] == 2
    code, out, _ = cli(capsys, "registry", "rollback", "student", *base)
    assert code == 0 and json.loads(out)["production"] == 1


def test_cli_tables_and_errors(home, capsys):
    registry.propose(home, "student", add(home, 0.3).version)
    code, out, _ = cli(capsys, "registry", "list", "--home", str(home.root))
    assert code == 0 and "h_recall@20" in out.splitlines()[0] and "production" in out
    code, out, err = cli(capsys, "registry", "rollback", "student", "--home", str(home.root))
    assert code == 2 and out == "" and err.count("\n") == 1 and "nothing to roll back to" in err


# --- pruning the registry's copies


def promoted_stream(home, scores, first_block=0):
    """One version a block, each proposed through the gate; returns the versions."""
    versions = [add(home, score, block=block) for block, score in enumerate(scores, start=first_block)]
    for version in versions:
        registry.propose(home, "student", version.version)
    return versions


def test_prune_keeps_the_newest_the_aliased_and_the_rollback_targets(home):
    versions = promoted_stream(home, [0.30, 0.31, 0.32, 0.20, 0.33, 0.34])  # the gate keeps v4 back
    assert registry.aliases(home, "student") == {"production": 6, "candidate": 4}
    registry.register(home, "student", artifact(home, "late", b"late"), 6, "ccd", {METRIC: 0.1}, 10)  # v7, not proposed
    dry = registry.prune(home, "student", keep=1, dry_run=True)
    assert all((v.path(home)).exists() for v in versions)  # a dry run removes nothing
    result = registry.prune(home, "student", keep=1)
    # newest (v7, also not yet proposed), production (v6), one rollback from it (v5), candidate (v4)
    assert result.kept == dry.kept == [4, 5, 6, 7]
    assert [v.version for v in result.pruned] == [1, 2, 3] and result.freed_bytes == dry.freed_bytes > 0
    assert all(v.pruned_at is not None and not v.path(home).exists() for v in result.pruned)
    assert all(v.path(home).exists() for v in versions[3:])
    statuses = {v.version: (v.status, v.pruned_at is None) for v in registry.list_versions(home, "student")}
    assert statuses[3] == ("archived", False) and statuses[6] == ("production", True)  # records stay

    assert registry.prune(home, "student", keep=1).pruned == []  # idempotent
    assert registry.rollback(home, "student").version == 5  # one rollback still works...
    with pytest.raises(ArtifactIntegrityError, match=r"v3: its artifact was pruned on .*register the same model again"):
        registry.rollback(home, "student")  # ...the next would load a pruned copy
    with pytest.raises(ArtifactIntegrityError, match="was pruned"):
        registry.promote(home, "student", 2, "by hand")

    restored = add(home, 0.31, block=1)  # the same bytes, block and method as v2
    assert restored.version == 2 and restored.pruned_at is None
    registry.verify_artifact(home, restored)
    same_bytes = registry.register(home, "student", artifact(home, "v1 again", b"student00.3"), 9, "ccd", {METRIC: 0.3}, 10)
    assert same_bytes.version == 8 and registry.get(home, "student", 1).pruned_at is None  # v1's copy is back too


def test_prune_keeps_a_copy_a_kept_version_shares_and_finishes_a_failed_prune(home, monkeypatch):
    same = b"same bytes"
    old = registry.register(home, "student", artifact(home, "a", same), 0, "ccd", {METRIC: 0.3}, 10)
    registry.propose(home, "student", old.version)
    promoted_stream(home, [0.31], first_block=1)  # v2
    new = registry.register(home, "student", artifact(home, "b", same), 2, "ccd", {METRIC: 0.32}, 10)  # v3: v1's bytes
    registry.propose(home, "student", new.version)
    result = registry.prune(home, "student", keep=1)
    assert [v.version for v in result.pruned] == [1] and result.freed_bytes == 0
    assert new.path(home) == old.path(home) and new.path(home).exists()  # v3 still loads it
    registry.verify_artifact(home, registry.get(home, "student"))

    # a prune that fails half way leaves no version marked (a copy it removed stays gone), and
    # a second run finishes it
    later = promoted_stream(home, [0.40, 0.41], first_block=3)  # v4, v5: now v2 and v3 go
    removed, real_remove = [], pruning.remove

    def remove_one_then_fail(path):
        if removed:
            raise OSError("disk says no")
        removed.append(path)
        real_remove(path)

    monkeypatch.setattr(pruning, "remove", remove_one_then_fail)
    with pytest.raises(OSError):
        registry.prune(home, "student", keep=1)
    assert len(removed) == 1 and not removed[0].exists()
    assert [v.pruned_at for v in registry.list_versions(home, "student")][1:3] == [None, None]
    monkeypatch.undo()
    again = registry.prune(home, "student", keep=1)
    assert [v.version for v in again.pruned] == [2, 3] and all(v.pruned_at for v in again.pruned)
    assert not old.path(home).exists() and all(v.path(home).exists() for v in later)


def test_prune_refuses_bad_input(home):
    with pytest.raises(RegistryError, match="'student' has no versions"):
        registry.prune(home, "student", keep=3)
    add(home, 0.3)
    for keep in (0, -1, True):
        with pytest.raises(BadInputError, match="--keep must be an integer >= 1"):
            registry.prune(home, "student", keep=keep)


def test_a_registry_made_before_prune_gets_its_table_on_first_read(home):
    add(home, 0.3)
    with store.connect(home, write=True) as con:  # as registries were made before `prune`
        con.execute("DROP TABLE pruned")
    assert registry.list_versions(home)[0].pruned_at is None  # a read adds the table
    with store.connect(home) as con:
        assert con.execute("SELECT count(*) FROM pruned").fetchone()[0] == 0


def test_cli_prune(home, capsys):
    promoted_stream(home, [0.30, 0.31, 0.32])
    base = ["--home", str(home.root)]
    code, out, _ = cli(capsys, "registry", "prune", "student", "--keep", "1", "--dry-run", *base, "--json")
    assert code == 0 and json.loads(out)["dry_run"] is True and [v["version"] for v in json.loads(out)["pruned"]] == [1]
    code, out, _ = cli(capsys, "registry", "prune", "student", "--keep", "1", *base)
    assert code == 0 and out.startswith("student: removed the copies of 1 version(s)") and "kept v2, v3" in out
    code, out, _ = cli(capsys, "registry", "list", *base)
    assert "pruned_at" in out.splitlines()[0]
    code, out, err = cli(capsys, "registry", "prune", "student", "--keep", "0", *base)
    assert code == 2 and out == "" and err.count("\n") == 1 and "--keep must be" in err
