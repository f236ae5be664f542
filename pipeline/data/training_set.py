"""The training set named by the `dataset` param, as rows on the training device.

MNIST is 784-pixel rows; Stacked MNIST is 3 x 784-pixel rows gathered from those same MNIST rows by the
`stack` stage's index triples (pipeline/data/stacked_mnist.py), so no stacked pixels are ever stored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.common import devices
from pipeline.common.errors import GanpipeError
from pipeline.data import stacked_mnist
from pipeline.data.mnist import MNIST

CHANNELS = {"mnist": 1, "stacked-mnist": stacked_mnist.CHANNELS}


def check(dataset: str, model: str, conditional: bool) -> None:
    """Refuse, before any work, a combination the pipeline cannot train."""
    if dataset == "stacked-mnist" and conditional:
        raise GanpipeError(
            f"model {model} is conditional, but Stacked MNIST images have three digits and no single label "
            "to condition on. Pick an unconditional preset (e.g. `-S model=dcgan`) or set dataset: mnist."
        )


def training_rows(dataset: str, data: MNIST, stacked_path: Path, device: torch.device):
    """(rows, labels) for the trainer: rows index like an (N, C*784) float tensor in [0, 1] on `device`;
    labels (N,) int64 (all zero for Stacked MNIST, which has no single label)."""
    mnist_rows = devices.images_to_device(data.x_train, device)
    labels = torch.from_numpy(data.y_train.astype(np.int64)).to(device)
    if dataset == "mnist":
        return mnist_rows, labels
    stacked = stacked_mnist.load(stacked_path)
    if len(stacked) and int(stacked.indices.max()) >= len(mnist_rows):
        raise GanpipeError(
            f"{stacked_path} points past the {len(mnist_rows)} prepared MNIST training images; it was built from "
            "another dataset. Run `dvc repro stack` to rebuild it."
        )
    return stacked_mnist.StackedRows(mnist_rows, stacked.indices), torch.zeros(len(stacked), dtype=torch.int64, device=device)
