"""Stacked MNIST: three MNIST digits as the three channels of one 28x28 image, so 1,000 modes (digit triples).

The benchmark of VEEGAN (Srivastava et al. 2017, Section 5) and PacGAN (Lin et al. 2018, Section 5): each
channel is an independent, uniformly drawn MNIST training image, so the 1,000 triples are (nearly) equally
likely. The set is stored compactly as index triples into the prepared MNIST training images plus the
digit triple of each image: 128,000 images are ~1.9 MB this way against ~300 MB as pixels. `materialise`
turns indices into pixels, on the training device if asked, only where images are needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.common.errors import GanpipeError

CHANNELS = 3
N_MODES = 10**CHANNELS


@dataclass(frozen=True)
class StackedMNIST:
    """`indices` (N, 3) int32 into the source images; `digits` (N, 3) uint8, the label of each channel."""

    indices: np.ndarray
    digits: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def modes(self) -> np.ndarray:
        """Each image's mode id 0-999: its digit triple read as a three-digit number (channel 0 first)."""
        return mode_ids(self.digits)


def mode_ids(digits: np.ndarray) -> np.ndarray:
    """(N, 3) digits -> (N,) mode ids 0-999, e.g. (4, 0, 7) -> 407."""
    digits = np.asarray(digits, dtype=np.int64)
    return digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]


def build(labels: np.ndarray, size: int, seed: int) -> StackedMNIST:
    """Draw `size` images, each channel an independent uniform draw (with replacement) from the source.

    Deterministic in (labels, size, seed): the same prepared MNIST and params give the same set. The
    three channels come from three child streams of one SeedSequence, so channel c's draws do not
    depend on how many images the other channels get."""
    if size < 1:
        raise GanpipeError(f"stacked_mnist.size is {size}; it must be at least 1 (the papers use 128000).")
    streams = np.random.SeedSequence(seed).spawn(CHANNELS)
    indices = np.stack(
        [np.random.default_rng(s).integers(0, len(labels), size=size) for s in streams], axis=1
    ).astype(np.int32)
    return StackedMNIST(indices=indices, digits=np.asarray(labels, dtype=np.uint8)[indices])


def materialise(source_images, indices):
    """Pixels (N, 3, 28, 28) of the stacked images `indices` (N, 3) selects from `source_images` (M, 28, 28).

    Works on numpy arrays or on torch tensors (so a trainer can keep the 47 MB MNIST on the GPU and
    build each batch there); the result has the source's type, dtype and device."""
    return source_images[indices]


class StackedRows:
    """The stacked training set as the trainer sees it, without materialising it: indexing returns rows
    of 3 x 784 pixels, gathered from the MNIST rows already on the training device.

    It answers what the trainer asks of its image tensor (`shape[0]`, `device`, `rows[idx]` for an
    index tensor of any shape), so a trainer written for MNIST trains on Stacked MNIST unchanged.
    128,000 images as float32 would be 1.2 GB; this keeps 188 MB of MNIST plus 1.5 MB of indices."""

    index_shape = ()  # an image is one row number into the triples

    def __init__(self, mnist_rows, indices):
        import torch

        self.mnist_rows = mnist_rows  # (60000, 784) float in [0, 1] on the training device
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=mnist_rows.device)
        self.shape = (len(self.indices), CHANNELS * mnist_rows.shape[1])
        self.device = mnist_rows.device

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx):
        picked = self.indices[idx]  # (..., 3) MNIST rows per stacked image
        return self.mnist_rows[picked].reshape(*picked.shape[:-1], self.shape[1])


class FreshStackedRows:
    """Stacked MNIST drawn afresh for every batch, as PacGAN's released Table 3 code draws it (model.py,
    generate_stacked_mnist: each channel of each image a uniform draw from all 60,000 training digits): an image's
    index is its three MNIST row numbers, so the trainer's seeded on-device `randint` over (n, 3) draws the batch,
    with no fixed set and no host round trip. `rows[idx]` for idx (..., 3) gives (..., 3 x 784) pixels."""

    index_shape = (CHANNELS,)

    def __init__(self, mnist_rows):
        self.mnist_rows = mnist_rows  # (60000, 784) float in [0, 1] on the training device
        self.shape = (len(mnist_rows), CHANNELS * mnist_rows.shape[1])  # shape[0]: the digits each channel draws from
        self.device = mnist_rows.device

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx):
        return self.mnist_rows[idx].reshape(*idx.shape[:-1], self.shape[1])


def save(path: str | Path, stacked: StackedMNIST) -> None:
    from pipeline.common import atomic

    atomic.save_npz(path, indices=stacked.indices, digits=stacked.digits)


def load(path: str | Path) -> StackedMNIST:
    path = Path(path)
    if not path.is_file():
        raise GanpipeError(f"{path} not found. Run `dvc repro stack` to build the Stacked MNIST index file.")
    with np.load(path) as f:
        return StackedMNIST(indices=f["indices"], digits=f["digits"])
