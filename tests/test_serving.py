"""Serving: the FastAPI app (through its TestClient) and `ccd recommend`, on a tiny home with two
ingested blocks and BPR students trained for a couple of epochs."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import time

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from ccd import registry
from ccd.cli import main
from ccd.config import RunConfig, ServingConfig, TrainConfig
from ccd.home import Home
from ccd.lake import catalog
from ccd.lake.ingest import ingest_block
from ccd.lake.store import load_block_data, read_block
from ccd.models import BPRConfig, build_model, io
from ccd.serve.app import create_app
from ccd.serve.service import RecommendService
from ccd.train import train
from tests.conftest import make_block

FAST = TrainConfig(max_epochs=2, batch_size=256, device="cpu")
SERVING = ServingConfig(max_k=100, default_k=20, refresh_seconds=0.05, device="cpu")


def _train_student(home: Home, block: int, seed: int) -> str:
    """Train and save a tiny BPR student of `block`; return its folder."""
    data = load_block_data(home, block)
    model = build_model(BPRConfig(dim=8, seed=seed), data.n_users, data.n_items)
    train(model, data, FAST, progress=False)
    return io.save(model, home.model_dir(block, "student"))


def _register(home: Home, block: int, score: float = 0.1) -> int:
    folder = home.model_dir(block, "student")
    n_params = sum(t.numel() for t in io.load(folder).parameters())
    return registry.register(home, "student", folder, block, "ccd", {"h_recall@20": score, "recall@20": score}, n_params).version


@pytest.fixture(scope="module")
def lake_home(tmp_path_factory) -> Home:
    """Blocks 0 (users u*) and 1 (new users w*) ingested; students of both saved, none registered."""
    root = tmp_path_factory.mktemp("serving")
    home = Home.resolve(root / "home")
    for block, prefix in ((0, "u"), (1, "w")):
        path = root / f"block_{block}.csv"
        make_block(block=block, seed=block, user_prefix=prefix).to_csv(path, index=False)
        ingest_block(home, path, block, RunConfig().lake)
    for block in (0, 1):
        _train_student(home, block, seed=block)
    return home


@pytest.fixture
def fresh(lake_home, tmp_path) -> Home:
    """A private copy of the lake home, so a test may change its registry."""
    return Home.resolve(shutil.copytree(lake_home.root, tmp_path / "home"))


@pytest.fixture
def served(fresh) -> Home:
    """A private home whose production student is v1, trained on block 0."""
    registry.promote(fresh, "student", _register(fresh, 0), "test")
    return fresh


def _client(home: Home, config: ServingConfig = SERVING) -> TestClient:
    return TestClient(create_app(home, config))


def _external_seen(home: Home, user: str, upto: int) -> set[str]:
    users = catalog.id_map(home, "user").set_index("external_id")["internal_id"]
    items = catalog.id_map(home, "item")["external_id"].to_numpy(object)
    frame = pd.concat([read_block(home, k) for k in range(upto + 1)])
    return set(items[frame.loc[frame["user"] == users[user], "item"]])


def _wait_for(client: TestClient, version: int, seconds: float = 15.0) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = client.get("/model")
        if answer.status_code == 200 and answer.json()["version"] == version:
            return answer.json()
        time.sleep(0.05)
    raise AssertionError(f"the server did not switch to v{version} within {seconds} s")


def test_known_user_gets_the_models_top_k_unseen_items(served):
    with _client(served) as client:
        answer = client.get("/recommend", params={"user": "u3", "k": 10})
    assert answer.status_code == 200
    body = answer.json()
    assert body["fallback"] is None and body["k"] == 10 and body["model"] == {"name": "student", "version": 1, "block": 0}
    assert not set(body["items"]) & _external_seen(served, "u3", upto=0)
    assert body["scores"] == sorted(body["scores"], reverse=True)

    # Same list as ranking the model's scores by hand over the unseen items, ids mapped back.
    model = io.load(registry.load_artifact_path(served, "student"))
    internal = int(catalog.id_map(served, "user").set_index("external_id").loc["u3", "internal_id"])
    item_ids = catalog.id_map(served, "item")["external_id"].to_numpy(object)
    scores = model.score(torch.tensor([internal]))[0].detach().numpy()
    seen = _external_seen(served, "u3", upto=0)
    ranked = [item_ids[i] for i in np.argsort(-scores, kind="stable") if item_ids[i] not in seen]
    assert body["items"] == ranked[:10]


def test_a_list_longer_than_the_unseen_items_stops_before_seen_ones(served):
    with _client(served) as client:
        body = client.get("/recommend", params={"user": "u3", "k": 100}).json()
    n_items = io.load(registry.load_artifact_path(served, "student")).n_items
    seen = _external_seen(served, "u3", upto=0)
    assert len(body["items"]) == body["k"] == n_items - len(seen)
    assert not set(body["items"]) & seen and len(set(body["items"])) == len(body["items"])


def test_unknown_users_get_the_most_popular_items_flagged(served):
    frame = read_block(served, 0)
    counts = frame.loc[frame["split"] == "train", "item"].value_counts()
    order = sorted(counts.index, key=lambda i: (-counts[i], i))[:5]
    item_ids = catalog.id_map(served, "item")["external_id"].to_numpy(object)
    with _client(served) as client:
        # "w1" is in the lake (block 1) but newer than the block-0 model; "nobody" is nowhere.
        for user in ("nobody", "w1"):
            body = client.get("/recommend", params={"user": user, "k": 5}).json()
            assert body["fallback"] == "popular"
            assert body["items"] == list(item_ids[order])
            assert body["scores"] == [float(counts[i]) for i in order]


@pytest.mark.parametrize("params", [
    {"user": "u3", "k": 0}, {"user": "u3", "k": 101}, {"user": "u3", "k": "ten"}, {"k": 5}, {"user": ""},
    {"user": "x" * 257}, {"user": "u3", "k": -5}, {"user": "u3", "k": 10**30}, {"user": "u3", "k": 2.5},
])
def test_bad_parameters_are_refused_with_422(served, params):
    with _client(served) as client:
        answer = client.get("/recommend", params=params)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"][0] == "query"


def test_user_ids_are_looked_up_never_used_as_paths(served):
    """Traversal strings, NUL, RTL marks and emoji are just unknown users: popular items, 200."""
    with _client(served) as client:
        for user in ("../../etc/passwd", "/etc/passwd", "a\x00b", "\u202eu3", "😀", "u3/../u4"):
            answer = client.get("/recommend", params={"user": user, "k": 3})
            assert answer.status_code == 200, user
            assert answer.json()["fallback"] == "popular" and answer.json()["user"] == user


def test_k_is_capped_by_config_and_defaults_to_default_k(served):
    config = dataclasses.replace(SERVING, max_k=7, default_k=3)
    with _client(served, config) as client:
        assert len(client.get("/recommend", params={"user": "u3"}).json()["items"]) == 3
        assert len(client.get("/recommend", params={"user": "u3", "k": 7}).json()["items"]) == 7
        assert client.get("/recommend", params={"user": "u3", "k": 8}).status_code == 422
        assert len(client.get("/recommend", params={"user": "nobody", "k": 7}).json()["items"]) == 7


def test_health_and_model_describe_the_production_version(served):
    expected = registry.get(served, "student", "production")
    with _client(served) as client:
        health = client.get("/health")
        model = client.get("/model").json()
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["model"]["version"] == 1
    assert (model["name"], model["version"], model["block"], model["method"]) == ("student", 1, 0, "ccd")
    assert model["sha256"] == expected.sha256 and model["metrics"] == expected.metrics
    assert model["n_params"] == expected.n_params == model["n_users"] * 8 + model["n_items"] * 8
    assert model["kind"] == "bpr" and "config" not in model


def test_a_newly_promoted_version_is_served_without_restart(served):
    with _client(served) as client:
        assert client.get("/recommend", params={"user": "w1"}).json()["fallback"] == "popular"
        registry.promote(served, "student", _register(served, 1), "newer block")
        described = _wait_for(client, 2)
        assert described["block"] == 1 and described["sha256"] == registry.get(served, "student", 2).sha256
        body = client.get("/recommend", params={"user": "w1", "k": 5}).json()
        assert body["fallback"] is None and body["model"]["version"] == 2  # block 1's users are known now
        assert not set(body["items"]) & _external_seen(served, "w1", upto=1)

        registry.rollback(served, "student")
        _wait_for(client, 1)


def test_503_until_a_model_is_promoted_then_served(fresh):
    with _client(fresh) as client:
        for path in ("/recommend?user=u3", "/model", "/health"):
            answer = client.get(path)
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1", path
        detail = client.get("/recommend", params={"user": "u3"})
        assert "no production student" in detail.json()["detail"]
        assert detail.headers["retry-after"] == "1"
        registry.promote(fresh, "student", _register(fresh, 0), "first")
        _wait_for(client, 1)
        assert client.get("/health").status_code == 200


def test_a_tampered_new_version_is_refused_and_the_old_one_keeps_serving(served):
    service = RecommendService(served, SERVING)
    assert service.refresh() and service.require().version.version == 1
    version = _register(served, 1)
    registry.promote(served, "student", version, "to be tampered")
    weights = registry.get(served, "student", version).path(served) / io.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert not service.refresh()
    assert service.require().version.version == 1
    assert "does not match its registered sha256" in service.health()["problem"]


def test_recommend_cli_json_and_errors(served, tmp_path, capsys):
    assert main(["recommend", "--home", str(served.root), "--user", "u3", "-k", "4", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["k"] == 4 and body["fallback"] is None and body["model"]["version"] == 1

    assert main(["recommend", "--home", str(served.root), "--user", "nobody", "-k", "2"]) == 0
    assert "unknown user, most popular items" in capsys.readouterr().out

    assert main(["recommend", "--home", str(served.root), "--user", "u3", "-k", "101"]) == 2
    assert "-k must be in [1, serving.max_k=100]" in capsys.readouterr().err
    for user in ("", "u" * 257):  # the HTTP API's rule for ids
        assert main(["recommend", "--home", str(served.root), "--user", user]) == 2
        assert f"--user must be 1..256 characters, got {len(user)}" in capsys.readouterr().err

    assert main(["recommend", "--home", str(tmp_path / "empty"), "--user", "u3"]) == 2
    err = capsys.readouterr().err
    assert "no production student" in err and err.count("\n") == 1


def test_serve_on_a_port_in_use_is_one_line(served, capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--home", str(served.root), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ccd serve: error: cannot listen on 127.0.0.1:{port}") and err.count("\n") == 1
