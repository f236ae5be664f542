"""Resumable training: checkpoints keyed by a fingerprint of everything that determines the result.

Checkpoints live in `<repo root>/.ganpipe/checkpoints/`, outside DVC's outputs: a DVC output marked
`persist: true` would disable DVC's run cache for the train stage (dvc/stage/cache.py refuses to cache
stages with persistent outputs), and experiments would then retrain models DVC already has. Anchoring at
the repo root also lets a queued experiment, whose working copy is temporary, resume after a crash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from pipeline.common import atomic
from pipeline.common.params import Params


def fingerprint(params: Params, device: torch.device) -> str:
    """Hash of the params that shape a training run (variant, seed, replicas, train section) and the device type."""
    key = {
        "model": params.model,
        "variant": params.variant.model_dump(mode="json"),
        "seed": params.seed,
        "dataset": params.dataset,
        "stacked_mnist": params.stacked_mnist.model_dump(mode="json") if params.dataset == "stacked-mnist" else None,
        "replicas": params.replicas,
        "train": params.train.model_dump(mode="json"),
        "device": device.type,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def path_for(root: Path, params: Params, fp: str) -> Path:
    return root / ".ganpipe" / "checkpoints" / f"{params.model}-{fp}.pt"


def load(path: Path, fp: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if it belongs to this configuration; else None (start afresh)."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state if state.get("fingerprint") == fp else None


def save(path: Path, state: dict[str, Any]) -> None:
    atomic.save_torch(path, state)
