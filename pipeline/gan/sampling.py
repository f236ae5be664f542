"""Drawing images from a trained generator: reproducible, batched, with chosen labels for CGAN."""

from __future__ import annotations

import numpy as np
import torch

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
) -> np.ndarray:
    """n images as float32 (n, 28, 28) in [0, 1], or (n, C, 28, 28) for a generator of C > 1 channels
    (Stacked MNIST). `labels` (n,) chooses the digits of a CGAN."""
    device = next(generator.parameters()).device
    rng = torch.Generator(device=device)
    rng.manual_seed(seed)
    was_training = generator.training
    generator.eval()
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
        out.append(generator(z, y).float().cpu())
    generator.train(was_training)
    rows = torch.cat(out)
    channels = rows.shape[1] // (28 * 28)
    return rows.reshape((n, 28, 28) if channels == 1 else (n, channels, 28, 28)).numpy()


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
