"""Reading and validating a sample file for `ganpipe evaluate --samples FILE.npz`.

Accepted: an .npz with `images` shaped (N, 28, 28), (N, 1, 28, 28) or (N, 784), either uint8 in
[0, 255] or float in [0, 1], and optionally `labels` (N,) with the digit each sample was asked to be.
Anything else is refused with a message naming the problem and the expected form.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from pipeline.errors import GanpipeError

EXPECTED = (
    "Expected an .npz holding `images` shaped (N, 28, 28), (N, 1, 28, 28) or (N, 784), uint8 in [0, 255] "
    "or float in [0, 1], and optionally `labels` (N,) of digits 0-9; e.g. "
    "np.savez('samples.npz', images=images, labels=labels)."
)


def _bad(path: Path, problem: str) -> GanpipeError:
    return GanpipeError(f"{path}: {problem}. {EXPECTED}")


def load(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Images as (N, 28, 28) uint8 or float32 in [0, 1], and labels (N,) int64 or None."""
    path = Path(path)
    if not path.is_file():
        raise GanpipeError(f"{path} does not exist. Pass the path of an .npz sample file. {EXPECTED}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _bad(path, f"not a readable .npz file ({type(exc).__name__})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _bad(path, "holds a single array (.npy), not an .npz archive")
    with archive:
        if "images" not in archive.files:
            raise _bad(path, f"has no `images` array (it holds: {', '.join(archive.files) or 'nothing'})")
        try:
            images = archive["images"]
            labels = archive["labels"] if "labels" in archive.files else None
        except ValueError as exc:  # object arrays need pickle, which is refused for safety
            raise _bad(path, f"holds an array that cannot be read safely ({exc})") from None
    return _check_images(path, images), _check_labels(path, labels, len(images))


def _check_images(path: Path, images: np.ndarray) -> np.ndarray:
    shape = images.shape
    if images.ndim == 0 or shape[0] == 0:
        raise _bad(path, f"`images` is empty (shape {shape})")
    if shape[1:] in ((28, 28), (1, 28, 28), (784,)):
        images = images.reshape(shape[0], 28, 28)
    else:
        raise _bad(path, f"`images` has shape {shape}")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise _bad(path, f"`images` has dtype {images.dtype}; use uint8 or a float type")
    if not np.isfinite(images).all():
        bad = int((~np.isfinite(images)).sum())
        raise _bad(path, f"`images` holds {bad} NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        hint = " (uint8-style values in a float array? divide by 255)" if high > 1.0 else ""
        raise _bad(path, f"float `images` range from {low:g} to {high:g}, outside [0, 1]{hint}")
    return images.astype(np.float32, copy=False)


def _check_labels(path: Path, labels: np.ndarray | None, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    if labels.shape != (n,):
        raise _bad(path, f"`labels` has shape {labels.shape}, expected ({n},) to match `images`")
    if not np.issubdtype(labels.dtype, np.integer):
        if not (np.issubdtype(labels.dtype, np.floating) and np.isfinite(labels).all() and (labels == np.round(labels)).all()):
            raise _bad(path, f"`labels` has dtype {labels.dtype} with non-integer values")
    if labels.min() < 0 or labels.max() > 9:
        raise _bad(path, f"`labels` range from {labels.min()} to {labels.max()}, outside the digits 0-9")
    return labels.astype(np.int64)
