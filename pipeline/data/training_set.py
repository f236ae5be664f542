"""The training set named by the `dataset` param, as rows on the training device.

MNIST is 784-pixel rows; Stacked MNIST is 3 x 784-pixel rows gathered from those same MNIST rows by the
`stack` stage's index triples (pipeline/data/stacked_mnist.py), so no stacked pixels are ever stored.
"""

from __future__ import annotations

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


def training_rows(data: MNIST, device: torch.device, stacked: stacked_mnist.StackedMNIST | None = None,
                  real_triples: str = "fixed-set"):
    """(rows, labels) for the trainer: rows index like an (N, C*784) float tensor in [0, 1] on `device`.
    MNIST without `stacked`; with it, Stacked MNIST, whose labels (N,) are all zero (no single label): the
    `stack` stage's triples, or with real_triples "fresh" (the preset's field) new triples for every batch."""
    mnist_rows = devices.images_to_device(data.x_train, device)
    labels = torch.from_numpy(data.y_train.astype(np.int64)).to(device)
    if stacked is None:
        return mnist_rows, labels
    if real_triples == "fresh":
        return stacked_mnist.FreshStackedRows(mnist_rows), torch.zeros(len(mnist_rows), dtype=torch.int64, device=device)
    if len(stacked) and int(stacked.indices.max()) >= len(mnist_rows):
        raise GanpipeError(
            f"the Stacked MNIST index file points past the {len(mnist_rows)} prepared MNIST training images; it was built from "
            "another dataset. Run `dvc repro stack` to rebuild it."
        )
    return stacked_mnist.StackedRows(mnist_rows, stacked.indices), torch.zeros(len(stacked), dtype=torch.int64, device=device)
