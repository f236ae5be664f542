"""MNIST files: names, checksums, IDX parsing and the prepared dataset.

The four files are verified by the MD5 of their *decompressed* payload, so a mirror that re-compressed
them is accepted while a damaged copy never is.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.common.errors import GanpipeError

# name -> MD5 of the decompressed IDX payload (see ../shared/mnist/README.md)
FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}

IMAGE_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABEL_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
SPLIT_SIZES = {"train": 60000, "t10k": 10000}


def payload_md5(gz_bytes: bytes) -> str:
    """MD5 of the decompressed payload; raises ValueError for a truncated or corrupt gzip stream."""
    try:
        return hashlib.md5(gzip.decompress(gz_bytes)).hexdigest()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"not a complete gzip file ({exc})") from None


def _read_idx(path: Path, magic: int, count: int, item_shape: tuple[int, ...]) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    header_len = 4 * (1 + 1 + len(item_shape))
    if len(data) < header_len:
        raise GanpipeError(f"{path} is too short to be an IDX file. Delete it and run `dvc repro download`.")
    header = np.frombuffer(data, dtype=">u4", count=1 + 1 + len(item_shape))
    found_magic, found_count, *found_shape = (int(v) for v in header)
    if found_magic != magic:
        raise GanpipeError(
            f"{path} has IDX magic number {found_magic}, expected {magic}. The file is not the MNIST "
            "file its name says; delete data/raw and run `dvc repro download`."
        )
    if found_count != count or tuple(found_shape) != item_shape:
        raise GanpipeError(
            f"{path} holds {found_count} items of shape {tuple(found_shape)}, expected {count} of "
            f"{item_shape}. Delete data/raw and run `dvc repro download`."
        )
    body = np.frombuffer(data, dtype=np.uint8, offset=header_len)
    if body.size != count * int(np.prod(item_shape, dtype=np.int64)):
        raise GanpipeError(f"{path} is truncated. Delete data/raw and run `dvc repro download`.")
    return body.reshape((count, *item_shape))


def read_split(raw_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of one split ("train" or "t10k")."""
    count = SPLIT_SIZES[split]
    images = _read_idx(raw_dir / f"{split}-images-idx3-ubyte.gz", IMAGE_MAGIC, count, (28, 28))
    labels = _read_idx(raw_dir / f"{split}-labels-idx1-ubyte.gz", LABEL_MAGIC, count, ())
    if labels.max() > 9:
        raise GanpipeError(f"{raw_dir}/{split}-labels holds a label above 9; the file is damaged.")
    return images, labels


@dataclass(frozen=True)
class MNIST:
    """The prepared dataset: uint8 images (N, 28, 28) and labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_prepared(path: str | Path) -> MNIST:
    path = Path(path)
    if not path.is_file():
        raise GanpipeError(f"{path} not found. Run `dvc repro prepare` to create it.")
    with np.load(path) as f:
        return MNIST(f["x_train"], f["y_train"], f["x_test"], f["y_test"])
