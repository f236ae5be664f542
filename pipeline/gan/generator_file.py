"""outputs/train/generator.pt: every replica's trained generator, with the preset that built them.

Layout: {"variant": VariantParams as JSON, "replicas": [{"index", "seed", "state_dict" | None,
"diverged": None | reason}, ...]}. A diverged replica keeps its slot (state_dict None) so replica
indices stay stable and evaluation can count it separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.common import atomic
from pipeline.common.errors import GanpipeError
from pipeline.common.params import VariantParams
from pipeline.gan.networks import MNIST_CHANNELS
from pipeline.gan.variants import build_generator

_RETRAIN = "Train it with `dvc repro train` (run from the ganpipe repository root), then run this command again."


@dataclass
class ReplicaGenerator:
    index: int
    seed: int
    generator: nn.Module | None  # None when the replica diverged
    diverged: str | None


def save_generators(
    path: Path | str,
    generators: list[nn.Module | None],
    variant: VariantParams,
    seeds: list[int],
    diverged: list[str | None],
    channels: int = MNIST_CHANNELS,
) -> None:
    if not (len(generators) == len(seeds) == len(diverged)):
        raise ValueError("generators, seeds and diverged must have one entry per replica")
    replicas = []
    for r, (gen, seed, reason) in enumerate(zip(generators, seeds, diverged)):
        state = None
        if reason is None:
            if gen is None:
                raise ValueError(f"replica {r} has no generator but is not marked diverged")
            state = {k: v.detach().cpu() for k, v in gen.state_dict().items()}
        replicas.append({"index": r, "seed": int(seed), "state_dict": state, "diverged": reason})
    # `channels` (3 for Stacked MNIST) rebuilds the right network; files without it hold MNIST generators.
    document = {"variant": variant.model_dump(mode="json"), "replicas": replicas, "channels": channels}
    atomic.save_torch(Path(path), document)


def _read(path: Path) -> dict:
    if not path.is_file():
        raise GanpipeError(f"no trained generator at {path}. {_RETRAIN}")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or "variant" not in saved:
        raise GanpipeError(f"{path} is not a ganpipe generator file. {_RETRAIN}")
    if "replicas" not in saved:
        raise GanpipeError(
            f"{path} holds a single generator in the format ganpipe wrote before replicas existed. Retrain "
            f"to get one generator per replica: {_RETRAIN}"
        )
    return saved


def load_generators(path: Path | str) -> tuple[list[ReplicaGenerator], VariantParams]:
    saved = _read(Path(path))
    variant = VariantParams.model_validate(saved["variant"])
    out = []
    for entry in saved["replicas"]:
        gen = None
        if entry["diverged"] is None:
            gen = build_generator(variant, saved.get("channels", MNIST_CHANNELS))
            gen.load_state_dict(entry["state_dict"])
            gen.eval()
        out.append(ReplicaGenerator(entry["index"], entry["seed"], gen, entry["diverged"]))
    return out, variant


def load_generator(path: Path | str, replica: int = 0) -> tuple[nn.Module, VariantParams]:
    """One replica's generator (replica 0 by default), e.g. for `ganpipe sample`."""
    replicas, variant = load_generators(path)
    if not 0 <= replica < len(replicas):
        raise GanpipeError(
            f"replica {replica} does not exist: {path} holds replicas 0 to {len(replicas) - 1}. Pick one of those."
        )
    chosen = replicas[replica]
    if chosen.generator is None:
        ok = [r.index for r in replicas if r.generator is not None]
        raise GanpipeError(
            f"replica {replica} diverged during training ({chosen.diverged}), so it has no generator. "
            + (f"Pick a replica that finished: {ok}." if ok else "No replica finished; retrain with other settings.")
        )
    return chosen.generator, variant
