"""Ingest: id mapping, split, lake files, catalog records, idempotency, order, bad input, crashes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ccd import stages
from ccd.cli import main
from ccd.config import LakeConfig
from ccd.home import Home
from ccd.errors import BadInputError, BlockOrderError, ValidationFailedError
from ccd.lake import catalog, ingest, store
from ccd.lake.ingest import ingest_block
from tests.conftest import make_block

CONFIG = LakeConfig()


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path


def lake_state(home) -> tuple:
    """Everything that must not change when an ingest fails."""
    files = sorted(str(p.relative_to(home.root)) for p in home.interactions.rglob("*") if p.is_file()) if home.interactions.exists() else []
    blocks = [b.to_dict() for b in catalog.list_blocks(home)]
    users, items = catalog.id_map(home, "user"), catalog.id_map(home, "item")
    return files, json.dumps(blocks, default=str), users.to_dict("list"), items.to_dict("list")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_ingest_each_format(home, tmp_path, suffix):
    frame = make_block()
    result = ingest_block(home, write(frame, tmp_path / f"b0{suffix}"), 0, CONFIG)
    assert result.status == "ingested"
    stored = store.read_block(home, 0)
    assert len(stored) == len(frame) == result.record.rows
    assert result.record.new_users == 30 and result.record.new_items == frame["item_id"].nunique()
    assert set(stored["split"]) == {"train", "valid", "test"}
    assert stored["timestamp"].min() == frame["timestamp"].min()


def test_ids_are_dense_and_stable_across_blocks(home, tmp_path):
    b0 = make_block(n_users=10, seed=0)
    b1 = make_block(n_users=15, seed=1, block=1)  # users u0..u9 return, u10..u14 are new
    ingest_block(home, write(b0, tmp_path / "b0.csv"), 0, CONFIG)
    users_before = catalog.id_map(home, "user").set_index("external_id")["internal_id"].to_dict()
    r1 = ingest_block(home, write(b1, tmp_path / "b1.csv"), 1, CONFIG)
    users_after = catalog.id_map(home, "user").set_index("external_id")["internal_id"].to_dict()
    assert all(users_after[k] == v for k, v in users_before.items())
    assert sorted(users_after.values()) == list(range(15))
    assert r1.record.new_users == 5 and r1.record.n_users == 15
    new_ids = {users_after[f"u{u}"] for u in range(10, 15)}
    assert new_ids == set(range(10, 15))
    data = store.load_block_data(home, 1)
    assert data.n_users == 15 and len(data.history) == r1.record.train_rows * 0 + (store.read_block(home, 0)["split"] == "train").sum()


def test_integer_and_string_ids_map_to_the_same_external_id(home, tmp_path):
    frame = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [10, 11, 10, 12], "timestamp": [1, 2, 3, 4]})
    ingest_block(home, write(frame, tmp_path / "b0.parquet"), 0, CONFIG)
    as_text = frame.assign(user_id=frame["user_id"].astype(str), item_id=frame["item_id"].astype(str))
    # Same content written as strings is recognised as the same block.
    assert ingest_block(home, write(as_text, tmp_path / "b0.jsonl"), 0, CONFIG).status == "unchanged"


def test_split_follows_ccd_protocol_and_is_deterministic(home, tmp_path):
    frame = make_block(n_users=20, per_user=20)
    ingest_block(home, write(frame, tmp_path / "b0.csv"), 0, CONFIG)
    stored = store.read_block(home, 0)
    counts = stored.groupby(["user", "split"]).size().unstack()
    assert (counts["test"] == 2).all() and (counts["valid"] == 2).all() and (counts["train"] == 16).all()
    shuffled_home = type(home).resolve(tmp_path / "other")
    ingest_block(shuffled_home, write(frame.sample(frac=1, random_state=3), tmp_path / "shuffled.csv"), 0, CONFIG)
    other = store.read_block(shuffled_home, 0)
    key = ["user", "item"]
    assert stored.sort_values(key)["split"].tolist() == other.sort_values(key)["split"].tolist()


def test_given_split_column_is_kept(home, tmp_path):
    frame = pd.DataFrame({"user_id": ["a", "a", "a", "b"], "item_id": ["x", "y", "z", "x"],
                          "split": ["train", "valid", "test", "train"]})
    ingest_block(home, write(frame, tmp_path / "b0.csv"), 0, CONFIG)
    stored = store.read_block(home, 0).sort_values(["user", "item"])
    assert stored["split"].tolist() == ["train", "valid", "test", "train"]
    assert stored["timestamp"].isna().all()


def test_same_block_twice_is_a_noop(home, tmp_path):
    path = write(make_block(), tmp_path / "b0.csv")
    first = ingest_block(home, path, 0, CONFIG)
    before = lake_state(home)
    second = ingest_block(home, path, 0, CONFIG)
    assert second.status == "unchanged" and second.record.ingested_at == first.record.ingested_at
    assert lake_state(home) == before


def test_different_content_for_existing_block_needs_replace(home, tmp_path):
    ingest_block(home, write(make_block(seed=0), tmp_path / "b0.csv"), 0, CONFIG)
    before = lake_state(home)
    other = write(make_block(seed=5), tmp_path / "b0b.csv")
    with pytest.raises(BlockOrderError, match="--replace"):
        ingest_block(home, other, 0, CONFIG)
    assert lake_state(home) == before
    replaced = ingest_block(home, other, 0, CONFIG, replace=True)
    assert replaced.status == "replaced"
    assert len(list(home.block_dir(0).glob("*.parquet"))) == 1  # the old part is gone


def test_only_the_last_block_can_be_replaced_and_its_stages_then_run_again(home, tmp_path):
    """Later blocks' ids follow the earlier ones', so a middle block is never replaced; replacing
    the last one clears what was trained on it (every run key), keeping only its ingest."""
    for k in range(2):
        ingest_block(home, write(make_block(seed=k, block=k), tmp_path / f"b{k}.csv"), k, CONFIG)
    for key in ("default", "r1"):
        for k in range(2):
            stages.run_stage(home, k, "ccd-distill", lambda: {"path": "x"}, key)
    stages.run_stage(home, 1, "ingest", lambda: {"status": "ingested"})
    before = lake_state(home)
    with pytest.raises(BlockOrderError, match=r"block 0 already holds different content .*, and it cannot be replaced: blocks 1\.\.1 came after it"):
        ingest_block(home, write(make_block(seed=7, block=0), tmp_path / "b0b.csv"), 0, CONFIG, replace=True)
    with pytest.raises(BlockOrderError, match=r"cannot be replaced: blocks 1\.\.1") as refused:  # nor suggested
        ingest_block(home, write(make_block(seed=7, block=0), tmp_path / "b0b.csv"), 0, CONFIG)
    assert "--replace" not in str(refused.value)
    assert lake_state(home) == before

    assert ingest_block(home, write(make_block(seed=8, block=1), tmp_path / "b1b.csv"), 1, CONFIG, replace=True).status == "replaced"
    assert {(r.block, r.stage, r.run_key) for r in stages.list_stages(home)} == {
        (0, "ccd-distill", "default"), (0, "ccd-distill", "r1"), (1, "ingest", "default")}


def test_a_block_is_not_replaced_under_a_running_stage(home, tmp_path):
    """A stage of the last block running now would finish on the data a replace swaps out (and
    its record, forgotten meanwhile, would vanish): the replace is refused, nothing changes."""
    for k in range(2):
        ingest_block(home, write(make_block(seed=k, block=k), tmp_path / f"b{k}.csv"), k, CONFIG)
    running, release = threading.Event(), threading.Event()

    def training():
        running.set()
        assert release.wait(30)
        return {"path": "x"}

    stage = threading.Thread(target=lambda: stages.run_stage(home, 1, "ccd-distill", training, "r1"))
    stage.start()
    assert running.wait(30)
    before = lake_state(home)
    try:
        with pytest.raises(stages.StageBusyError, match=r"block 1 is being trained now \(stage ccd-distill, run key r1\)"):
            ingest_block(home, write(make_block(seed=8, block=1), tmp_path / "b1b.csv"), 1, CONFIG, replace=True)
        assert lake_state(home) == before
    finally:
        release.set()
        stage.join(30)
    assert stages.get(home, 1, "ccd-distill", "r1").status == "done"
    assert ingest_block(home, write(make_block(seed=8, block=1), tmp_path / "b1b.csv"), 1, CONFIG, replace=True).status == "replaced"
    assert stages.get(home, 1, "ccd-distill", "r1") is None


def test_a_stage_forgotten_while_it_ran_is_not_marked_done(home, tmp_path):
    """A stage that started between a replace's check of the running stages and its commit
    finishes on the old data: its result is refused rather than recorded as done. (Here the
    replace runs inside the stage, whose own lock does not hold its thread back.)"""
    for k in range(2):
        ingest_block(home, write(make_block(seed=k, block=k), tmp_path / f"b{k}.csv"), k, CONFIG)

    def replaced_meanwhile():
        ingest_block(home, write(make_block(seed=8, block=1), tmp_path / "b1b.csv"), 1, CONFIG, replace=True)
        return {"path": "x"}

    with pytest.raises(stages.StageForgottenError, match="block 1 was replaced while stage ccd-distill"):
        stages.run_stage(home, 1, "ccd-distill", replaced_meanwhile)
    assert stages.get(home, 1, "ccd-distill") is None


def test_out_of_order_block_is_refused(home, tmp_path):
    with pytest.raises(BlockOrderError, match="next block to ingest is 0"):
        ingest_block(home, write(make_block(), tmp_path / "b.csv"), 1, CONFIG)
    ingest_block(home, write(make_block(), tmp_path / "b.csv"), 0, CONFIG)
    with pytest.raises(BlockOrderError, match="next block to ingest is 1"):
        ingest_block(home, write(make_block(seed=2, block=3), tmp_path / "b3.csv"), 3, CONFIG)


BAD_INPUTS = {
    "missing column": lambda f: f.drop(columns=["item_id"]),
    "float ids": lambda f: f.assign(user_id=np.linspace(0, 1, len(f))),
    "nulls": lambda f: f.assign(item_id=f["item_id"].where(f.index % 7 != 0, None)),
    "unknown split": lambda f: f.assign(split=["train", "valid", "bogus"] * (len(f) // 3) + ["train"] * (len(f) % 3)),
    "empty id": lambda f: f.assign(user_id=f["user_id"].where(f.index != 3, "  ")),
}


@pytest.fixture(scope="module")
def home_with_block0(tmp_path_factory):
    """One home for all rejection tests: a rejected block must leave it unchanged anyway."""
    root = tmp_path_factory.mktemp("rejections")
    home = Home.resolve(root / "home")
    ingest_block(home, write(make_block(), root / "b0.csv"), 0, CONFIG)
    return home


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_rejected_block_is_quarantined_and_changes_nothing(home_with_block0, tmp_path, name):
    home = home_with_block0
    before = lake_state(home)
    bad = write(BAD_INPUTS[name](make_block(seed=1, block=1)), tmp_path / "b1.parquet")
    with pytest.raises(ValidationFailedError, match="block 1 rejected") as info:
        ingest_block(home, bad, 1, CONFIG)
    assert lake_state(home) == before
    report = Path(str(info.value).rsplit("(report: ", 1)[1].rstrip(")"))
    assert report.is_file() and (report.parent / "input.parquet").is_file()
    assert catalog.list_validations(home, 1)[-1]["status"] == "rejected"
    assert ingest.remove_orphans(home) == 0


@pytest.mark.parametrize("content", [b"", b"PAR1\x00\x01garbage", b"user_id,item_id\n\"unterminated"])
def test_unreadable_files_give_bad_input(home, tmp_path, content):
    path = tmp_path / ("b0.parquet" if content.startswith(b"PAR1") else "b0.csv")
    path.write_bytes(content)
    with pytest.raises(BadInputError, match="file is empty|not a readable"):
        ingest_block(home, path, 0, CONFIG)
    assert catalog.list_blocks(home) == []


def test_truncated_parquet_is_rejected(home, tmp_path):
    good = write(make_block(), tmp_path / "good.parquet").read_bytes()
    truncated = tmp_path / "b0.parquet"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(BadInputError, match="not a readable parquet file"):
        ingest_block(home, truncated, 0, CONFIG)


def test_crash_between_parquet_write_and_catalog_commit(home, tmp_path, monkeypatch):
    ingest_block(home, write(make_block(), tmp_path / "b0.csv"), 0, CONFIG)
    before = lake_state(home)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash after the Parquet write")

    monkeypatch.setattr(catalog, "upsert_block", crash)
    b1 = write(make_block(seed=1, block=1, user_prefix="w"), tmp_path / "b1.csv")
    with pytest.raises(KeyboardInterrupt):
        ingest_block(home, b1, 1, CONFIG)
    # The partition file was written but the catalog transaction never committed.
    assert list(home.block_dir(1).glob("*.parquet"))
    assert [b.block for b in catalog.list_blocks(home)] == [0]
    assert len(catalog.id_map(home, "user")) == 30  # no id of block 1 leaked into the maps
    monkeypatch.undo()
    assert ingest.remove_orphans(home) == 1
    assert lake_state(home) == before
    assert ingest_block(home, b1, 1, CONFIG).status == "ingested"


def test_block_files_and_ingest_folder(home, tmp_path):
    folder = tmp_path / "landing"
    folder.mkdir()
    for k in range(3):
        write(make_block(seed=k, block=k), folder / f"block_{k}.csv")
    (folder / "notes.txt").write_text("ignored")
    results = ingest.ingest_folder(home, folder, CONFIG)
    assert [r.status for r in results] == ["ingested"] * 3
    assert [r.status for r in ingest.ingest_folder(home, folder, CONFIG)] == ["unchanged"] * 3


def test_ingest_folder_refuses_a_gap_before_ingesting_anything(home, tmp_path):
    for name, blocks in (("gap", (0, 2)), ("late", (1, 2))):
        folder = tmp_path / name
        folder.mkdir()
        for k in blocks:
            write(make_block(seed=k, block=k), folder / f"block_{k}.csv")
    before = lake_state(home)
    with pytest.raises(BlockOrderError, match=r"no file for block\(s\) 1,"):
        ingest.ingest_folder(home, tmp_path / "gap", CONFIG)
    with pytest.raises(BlockOrderError, match=r"no file for block\(s\) 0,"):  # the lake is empty: 0 comes first
        ingest.ingest_folder(home, tmp_path / "late", CONFIG)
    assert lake_state(home) == before


def test_cli_json_and_errors(home, tmp_path, capsys):
    path = write(make_block(), tmp_path / "b0.csv")
    assert main(["ingest", str(path), "--block", "0", "--home", str(home.root), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["status"] == "ingested" and payload["record"]["rows"] == 240
    assert main(["blocks", "--home", str(home.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["blocks"][0]["block"] == 0
    assert main(["ingest", str(tmp_path / "missing.csv"), "--block", "1", "--home", str(home.root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err


def test_cli_bad_input_prints_no_traceback(tmp_path):
    bad = tmp_path / "b0.csv"
    bad.write_text("user_id,item_id\n1,\n")
    proc = subprocess.run(
        [sys.executable, "-m", "ccd", "ingest", str(bad), "--block", "0", "--home", str(tmp_path / "h")],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "rejected" in proc.stderr
