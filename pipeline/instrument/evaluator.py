"""The evaluator: a small MNIST CNN whose penultimate 128-d features are the metrics' feature space.

Trained once by the `evaluator` stage and cached by DVC, so every experiment is measured with the same
instrument. Training is seeded and, on CPU, deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from pipeline.common.errors import GanpipeError

FEATURE_DIM = 128


class MnistCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 32 x 14 x 14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 64 x 7 x 7
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(FEATURE_DIM, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _as_batch(images: np.ndarray) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images (N, 28, 28) -> float tensor (N, 1, 28, 28) in [0, 1]."""
    t = torch.tensor(images)  # a copy: inputs may be read-only (np.load) and are converted anyway
    t = t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()
    return t.reshape(-1, 1, 28, 28)


def train_classifier(
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    on_step: Callable[[int, int], None] | None = None,
) -> MnistCNN:
    """Train on CPU-friendly budgets; seeded shuffles and init make the result reproducible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MnistCNN()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        images, labels = _as_batch(x), torch.from_numpy(y.astype(np.int64))
        steps_per_epoch = (len(images) + batch_size - 1) // batch_size
        # Cosine decay to zero: the last epochs fine-tune at small steps, worth ~0.2-0.3 points of
        # test accuracy over a constant rate at the same budget.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        model.train()
        for epoch in range(epochs):
            order = torch.randperm(len(images), generator=gen)
            for i in range(steps_per_epoch):
                idx = order[i * batch_size : (i + 1) * batch_size]
                loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
                if on_step:
                    on_step(epoch * steps_per_epoch + i + 1, epochs * steps_per_epoch)
    model.eval()
    return model


@dataclass
class Embedding:
    """What the metrics need from the evaluator for a set of images."""

    features: np.ndarray  # (N, 128) float32
    probs: np.ndarray  # (N, 10) float32 softmax

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(1)


@torch.inference_mode()
def embed(model: MnistCNN, images: np.ndarray, batch_size: int = 2000) -> Embedding:
    model.eval()
    feats, probs = [], []
    for start in range(0, len(images), batch_size):
        f = model.features(_as_batch(images[start : start + batch_size]))
        feats.append(f.numpy())
        probs.append(torch.softmax(model.head(f), dim=1).numpy())
    if not feats:
        return Embedding(np.zeros((0, FEATURE_DIM), np.float32), np.zeros((0, 10), np.float32))
    return Embedding(np.concatenate(feats), np.concatenate(probs))


def accuracy(model: MnistCNN, x: np.ndarray, y: np.ndarray) -> float:
    return float((embed(model, x).predicted == y).mean())


def save(model: MnistCNN, path: Path) -> None:
    from pipeline.common import atomic

    atomic.save_torch(path, model.state_dict())


def load(path: Path) -> MnistCNN:
    if not Path(path).is_file():
        raise GanpipeError(
            f"the evaluator classifier {path} does not exist yet. Train it with `dvc repro evaluator` "
            "(run from the ganpipe repository root), then run this command again."
        )
    model = MnistCNN()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval()
    return model
