"""Pictures: PNG encoding of sample grids and the matplotlib figures of the reports."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pipeline import atomic


def png_bytes(image: np.ndarray, scale: int = 2) -> bytes:
    """A grey uint8 image (H, W) as PNG bytes, each pixel enlarged scale x scale for legibility."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    big = np.kron(image, np.ones((scale, scale), dtype=np.uint8)) if scale > 1 else image
    buf = io.BytesIO()
    plt.imsave(buf, big, cmap="gray", vmin=0, vmax=255, format="png")
    return buf.getvalue()


def save_png(path: Path, image: np.ndarray, scale: int = 2) -> None:
    atomic.write_bytes(path, png_bytes(image, scale))
