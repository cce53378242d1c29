"""The GPU path: what runs on CUDA when `train.device` picks it. Skipped on a machine without a
CUDA GPU (CI has none), so every test here is also covered on the CPU by the rest of the suite;
these only check that the device reaches every tensor and that a GPU-trained model is the same
model wherever it is loaded."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import numpy as np
import pytest
import torch

from ccd.cli import main
from ccd.config import TrainConfig
from ccd.evaluate import rank_metrics
from ccd.home import Home
from ccd.models import BPRConfig, LightGCNConfig, build_model
from ccd.models import io as model_io
from ccd.registry import load_artifact_path
from ccd.train import train
from planted import planted_block
from tests.test_continual_stream import SAMPLE, TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


@torch.no_grad()
def all_scores(model) -> np.ndarray:
    """Every user's score of every item, computed where the model is."""
    return model.score(torch.arange(model.n_users, device=model.device)).cpu().numpy()


@pytest.mark.parametrize("model_config", [BPRConfig(dim=16), LightGCNConfig(dim=16)], ids=["bpr", "lightgcn"])
def test_a_model_trained_on_the_gpu_ranks_alike_on_the_cpu(model_config, tmp_path):
    data = planted_block()
    model = build_model(model_config, data.n_users, data.n_items)
    config = dataclasses.replace(TrainConfig(), device="cuda", max_epochs=10, batch_size=256, min_epochs=0)
    result = train(model, data, config, progress=False)
    assert model.device.type == "cuda"
    assert result.best_metrics["recall@20"] > 0.5  # the planted groups are learnt on the GPU too
    on_gpu = rank_metrics(model.score, data.test, data.seen_train, data.n_items, ks=(20,), device=CUDA)
    model_io.save(model, tmp_path / "model", {})
    on_cpu = model_io.load(tmp_path / "model", "cpu")
    assert rank_metrics(on_cpu.score, data.test, data.seen_train, data.n_items, ks=(20,)) == pytest.approx(on_gpu, abs=1e-6)
    np.testing.assert_allclose(all_scores(on_cpu), all_scores(model), atol=1e-4)


def test_the_stream_runs_on_the_gpu_and_its_students_load_anywhere(tmp_path):
    """`ccd stream` with every stage on CUDA (members, updates, LWC-KD, replay, ensemble,
    distillation, evaluation) over three sample blocks; the registered student then serves
    from the CPU with the scores it has on the GPU."""
    home = Home.resolve(tmp_path / "home")
    sets = [arg for item in [*TINY, "train.device=cuda"] for arg in ("--set", item)]  # the last value wins
    for method in ("ccd", "kd", "finetune", "lwckd-student", "retrain"):
        torch.cuda.reset_peak_memory_stats()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["stream", "--data", str(SAMPLE), "--method", method, "--blocks", "3",
                         "--home", str(home.root), "--json", *sets])
        assert code == 0, method
        result = json.loads(out.getvalue())
        h = result["student"]["blocks"][-1]["summary"]["recall@20"]["H"]
        assert 0 < h <= 1, method
        assert torch.cuda.max_memory_allocated() > 0, method  # the stages trained on the GPU
    student = model_io.load(load_artifact_path(home, "student"), "cpu")
    on_gpu = model_io.load(load_artifact_path(home, "student"), "cuda")
    np.testing.assert_allclose(all_scores(student), all_scores(on_gpu), atol=1e-4)
