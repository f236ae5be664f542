"""Drawing images from a trained generator: reproducible, batched, with chosen labels for CGAN."""

from __future__ import annotations

import copy

import numpy as np
import torch

from pipeline.common.params import VariantParams
from pipeline.gan.networks import N_CLASSES, Generator

GRID_ROWS = GRID_COLS = 10
GRID_SEED_OFFSET = 1_000_003  # the fixed-noise grid uses its own stream, apart from training draws


@torch.inference_mode()
def sample(
    generator: Generator,
    n: int,
    *,
    seed: int,
    labels: np.ndarray | None = None,
    batch_size: int = 2048,
    batch_stats: bool = False,
) -> np.ndarray:
    """n images as float32 (n, 28, 28) in [0, 1], or (n, C, 28, 28) for a generator of C > 1 channels
    (Stacked MNIST). `labels` (n,) chooses the digits of a CGAN.

    G's batch norm normalises with its running statistics (evaluation mode), or with `batch_stats` with the
    statistics of each batch of `batch_size` samples, as PacGAN's released sampler does (its batch_norm's
    `train` flag left at True). Then each sample depends on the other samples of its batch, so the batch size
    is part of the protocol. The generator's own running statistics are left as they were."""
    device = next(generator.parameters()).device
    rng = torch.Generator(device=device)
    rng.manual_seed(seed)
    # train mode updates the running statistics: a copy takes the updates, and is thrown away
    net = copy.deepcopy(generator).train() if batch_stats else generator
    was_training = net.training
    net.train(batch_stats)
    out = []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        z = torch.randn(m, generator.z_dim, device=device, generator=rng)
        y = None
        if generator.n_classes:
            if labels is None:
                raise ValueError("a conditional generator needs labels")
            y_idx = torch.as_tensor(labels[start : start + m], device=device, dtype=torch.long)
            y = torch.nn.functional.one_hot(y_idx, N_CLASSES).float()
        out.append(to_unit_interval(generator, net(z, y).float()).cpu())
    net.train(was_training)
    rows = torch.cat(out)
    channels = rows.shape[1] // (28 * 28)
    return rows.reshape((n, 28, 28) if channels == 1 else (n, channels, 28, 28)).numpy()


def way_of_sampling(variant: VariantParams, how: str) -> dict[str, object]:
    """`sample`'s keywords for a Stacked MNIST count's sampling (pipeline/instrument/stacked.py SAMPLINGS):
    running-stats, evaluation mode; batch-stats, G's batch norm on each batch of the size it normalised in
    training (128 for every PacGAN Table 3 preset, their sampler's batch)."""
    if how == "batch-stats":
        return {"batch_stats": True, "batch_size": variant.generator_norm_batch}
    if how == "running-stats":
        return {}
    raise ValueError(f"unknown sampling {how!r}: running-stats or batch-stats")


def to_unit_interval(generator: Generator, pixels: torch.Tensor) -> torch.Tensor:
    """G's output as [0, 1] pixels: a tanh generator draws on [-1, 1] (PacGAN's Table 3 presets,
    `output_activation: tanh`); every other ends in a sigmoid, already [0, 1]."""
    if getattr(generator, "output_activation", "sigmoid") == "tanh":
        return pixels.add(1.0).mul_(0.5)
    return pixels


def grid_labels(generator: Generator) -> np.ndarray | None:
    """A CGAN's grid has one row per digit; an unconditional generator's grid has no labels."""
    return np.repeat(np.arange(N_CLASSES), GRID_COLS) if generator.n_classes else None


def sample_grid(generator: Generator, seed: int) -> np.ndarray:
    """The fixed-noise 10x10 grid as one uint8 image (row r of a CGAN grid is digit r)."""
    images = sample(generator, GRID_ROWS * GRID_COLS, seed=seed, labels=grid_labels(generator))
    return tile(images, GRID_ROWS, GRID_COLS)


def tile(images: np.ndarray, rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """Tile float [0, 1] images (rows*cols, 28, 28) into one uint8 picture with a dark gutter; colour
    images (rows*cols, 3, 28, 28), Stacked MNIST's, give an (H, W, 3) picture."""
    if images.ndim == 4:
        images = images.transpose(0, 2, 3, 1)  # channels last, as pictures store them
    n, h, w = images.shape[:3]
    canvas = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, *images.shape[3:]), dtype=np.uint8)
    pixels = to_uint8(images)
    for i in range(min(n, rows * cols)):
        r, c = divmod(i, cols)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = pixels[i]
    return canvas


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
