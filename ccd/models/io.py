"""Save and load models without pickle.

A saved model is a folder of three files, each written atomically:

- `weights.safetensors`: the state dict (plus `interactions`, the (N, 2) pairs a LightGCN
  or Mult-VAE scores with), in the safetensors format, which holds tensors and nothing else;
- `weights.safetensors.sha256`: its SHA-256 in `sha256sum` format, so `sha256sum -c` works;
- `model.json`: kind, config, id-space size, the same hash and any caller metadata (training
  result, run config), written last (and removed first when a folder is saved over), so its
  presence means the folder is complete.

A save killed midway leaves a `.tmp-` file in the folder; the next save into the folder (the
re-run of the stage) removes it, since the registry checksums a model folder file by file.

`load` checks the hash before reading a byte of the weights, so a corrupted or tampered file is
an error (`ModelFileError`), never a silently different model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ccd.atomic import remove_temp_files, sha256_file, write_text, write_with
from ccd.errors import CcdError
from ccd.models import MODELS, Recommender, build_model, model_config

WEIGHTS = "weights.safetensors"
CHECKSUM = WEIGHTS + ".sha256"
META = "model.json"
FORMAT = 1


class ModelFileError(CcdError):
    """A saved model is missing, incomplete, or does not match its checksum."""


def save(model: Recommender, folder: Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write `model` (and JSON-ready `metadata`) into `folder`; return the folder."""
    folder = Path(folder)
    remove_temp_files(folder)  # a killed earlier save's leftovers; one writer per folder (its stage's lock)
    # An overwrite first drops the old model.json, whose presence says the folder is complete:
    # killed halfway, it leaves no model (saved again by the re-run), never old metadata over new weights.
    (folder / META).unlink(missing_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    if model.uses_interactions:
        tensors["interactions"] = torch.as_tensor(model.interactions)
    write_with(folder / WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    digest = sha256_file(folder / WEIGHTS)
    write_text(folder / CHECKSUM, f"{digest}  {WEIGHTS}\n")
    meta = {
        "format": FORMAT,
        "kind": model.kind,
        "config": dataclasses.asdict(model.config),
        "n_users": model.n_users,
        "n_items": model.n_items,
        "weights_sha256": digest,
        "metadata": metadata or {},
    }
    write_text(folder / META, json.dumps(meta, indent=2, default=str) + "\n")
    return folder


def read_metadata(folder: Path) -> dict[str, Any]:
    """The `model.json` of a saved model, as written by `save`."""
    path = Path(folder) / META
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"no saved model in {folder} ({META} missing)") from None
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path} is not valid JSON: {exc}") from None


def load(folder: Path, device: torch.device | str = "cpu") -> Recommender:
    """The model saved in `folder`, on `device`, after verifying its checksum."""
    folder = Path(folder)
    meta = read_metadata(folder)
    if meta.get("format") != FORMAT or meta.get("kind") not in MODELS:
        raise ModelFileError(f"{folder / META}: unsupported format {meta.get('format')!r} or kind {meta.get('kind')!r}")
    weights = folder / WEIGHTS
    if not weights.exists():
        raise ModelFileError(f"{weights} is missing")
    digest = sha256_file(weights)
    sidecar = (folder / CHECKSUM).read_text().split()[0] if (folder / CHECKSUM).exists() else None
    if digest != meta["weights_sha256"] or digest != sidecar:
        raise ModelFileError(f"{weights} does not match its recorded SHA-256: corrupted or modified, retrain or restore it")
    tensors = load_file(str(weights), device="cpu")
    model = build_model(model_config(meta["kind"], meta["config"]), meta["n_users"], meta["n_items"])
    interactions = tensors.pop("interactions", None)
    model.load_state_dict(tensors, strict=True)
    model.to(device)
    if interactions is not None:
        model.set_interactions(interactions.numpy().astype(np.int64))
    return model.eval()
