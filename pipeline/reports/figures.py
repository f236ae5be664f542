"""Pictures: PNG encoding of sample grids and the matplotlib figures of the reports."""

from __future__ import annotations

import base64
import io
import struct
from pathlib import Path

import numpy as np

from pipeline.common import atomic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 100  # figure sizes are given in inches; at 100 dpi an 8-inch chart is 800 px wide


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (stages run headless, often with no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(image: np.ndarray, scale: int = 2) -> bytes:
    """A grey (H, W) or colour (H, W, 3) uint8 image as PNG bytes, each pixel enlarged scale x scale."""
    plt = pyplot()
    big = image.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else image
    buf = io.BytesIO()
    plt.imsave(buf, big, cmap="gray", vmin=0, vmax=255, format="png")
    return buf.getvalue()


def save_png(path: Path, image: np.ndarray, scale: int = 2) -> None:
    atomic.write_bytes(path, png_bytes(image, scale))


def figure_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and free it (pyplot keeps every open figure alive)."""
    plt = pyplot()
    buf = io.BytesIO()
    try:
        # No metadata: the PNG then depends only on the data, so an unchanged report is byte-identical.
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    finally:
        plt.close(fig)
    return buf.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, which the format requires to come first."""
    if png[:8] != PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
