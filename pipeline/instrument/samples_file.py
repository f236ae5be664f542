"""Reading and validating a sample file for `ganpipe evaluate --samples FILE.npz`.

Accepted: an .npz with `images` shaped (N, 28, 28), (N, 1, 28, 28) or (N, 784), either uint8 in
[0, 255] or float in [0, 1], and optionally `labels` (N,) with the digit each sample was asked to be.
Every accepted form loads to the same array: float32 (N, 28, 28) in [0, 1]. uint8 is divided by 255,
which gives, for all 256 values, the very float32 numbers the evaluator computes from uint8 itself, so
the metrics do not depend on the form a file was saved in. Anything else is refused, before anything heavy is
loaded, with a one-paragraph message naming the problem and the expected form.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from pipeline.common.errors import GanpipeError
from pipeline.instrument.sample_count import MAX_SAMPLES

EXPECTED = (
    "Expected an .npz holding `images` shaped (N, 28, 28), (N, 1, 28, 28) or (N, 784), uint8 in [0, 255] "
    "or float in [0, 1], and optionally `labels` (N,) of digits 0-9; e.g. "
    "np.savez('samples.npz', images=images, labels=labels)."
)
SHAPES = ((28, 28), (1, 28, 28), (784,))
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_NPY_MAGIC = b"\x93NUMPY"
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


def _bad(path: Path, problem: str) -> GanpipeError:
    return GanpipeError(f"{path}: {problem}. {EXPECTED}")


def load(path: str | Path, max_samples: int = MAX_SAMPLES) -> tuple[np.ndarray, np.ndarray | None]:
    """Images as (N, 28, 28) float32 in [0, 1], and labels (N,) int64 or None. N above `max_samples`
    is refused from the archive's headers, before anything is decompressed."""
    path = Path(path)
    images, labels = _read_arrays(path, max_samples)
    images = _check_images(path, images)
    return images, _check_labels(path, labels, len(images))


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_container(path: Path) -> None:
    """Refuse anything that is not a zip archive (which is what an .npz is) by its first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head:
        raise _bad(path, "is an empty file (0 bytes), not an .npz archive; was it written completely?")
    if head.startswith(_NPY_MAGIC):
        raise _bad(
            path,
            "is a single .npy array, not an .npz archive with named arrays; save it with "
            "np.savez(path, images=array) instead of np.save",
        )
    if head.startswith(_EMPTY_ZIP_MAGIC):
        raise _bad(path, "is an empty .npz archive with no arrays in it")
    if not head.startswith(_ZIP_MAGIC):
        try:
            head.decode("utf-8")
            kind = "a text file"
        except UnicodeDecodeError:
            kind = "a binary file of another format"
        raise _bad(path, f"is not an .npz archive (it looks like {kind})")


def _declared_arrays(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each array in the archive, from the .npy headers alone (a few hundred bytes
    decompressed per array): a small file that inflates to gigabytes is judged before it is read."""
    out = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    major, _ = np.lib.format.read_magic(member)
                    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read_header(member)
                out[info.filename[: -len(".npy")]] = (tuple(shape), dtype)
    except _READ_ERRORS:
        return {}  # unreadable headers: np.load below names the damage
    return out


def _check_declared_size(path: Path, max_samples: int, check_shape: bool = True) -> None:
    """Refuse from the archive's headers alone, before reading: a wrong shape or more images than the cap.
    Stacked MNIST files check their own shapes after loading (check_shape=False)."""
    declared = _declared_arrays(path)
    if "images" not in declared:
        return
    shape, dtype = declared["images"]
    if not shape or dtype.hasobject:
        return  # a single value or Python objects: refused with their own messages once read
    if check_shape and shape[1:] not in SHAPES:
        raise _bad(path, f"`images` has shape {shape}, which is not one of the accepted shapes{_shape_hint(shape)}")
    n = shape[0]
    if n > max_samples:
        need_gib = n * 784 * (dtype.itemsize + 4) / 2**30  # the file's array plus its float32 copy
        raise GanpipeError(
            f"{path} holds {n:,} images, more than the cap of {max_samples:,} samples (reading and measuring "
            f"them needs at least {need_gib:.1f} GiB of memory, and time that grows with the count). Evaluate "
            f"a random subset of at most {max_samples:,} (e.g. images[np.random.default_rng(0).choice(len(images), "
            f"{max_samples}, replace=False)]), or raise the cap with --max-samples {n} if this machine has the memory."
        )


def _read_member(path: Path, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise _bad(
                path,
                f"`{key}` holds Python objects (dtype object), which are refused because loading them "
                "would run pickled code; save a numeric array, e.g. np.asarray(images, dtype=np.uint8)",
            ) from None
        raise _bad(path, f"`{key}` cannot be read: the archive is damaged ({_reason(exc)}); write it again") from None
    except _READ_ERRORS as exc:
        raise _bad(path, f"`{key}` cannot be read: the archive is damaged ({_reason(exc)}); write it again") from None


def _shape_hint(shape: tuple) -> str:
    if shape in SHAPES:
        return " (a single image? add a batch axis: images[None])"
    if len(shape) == 4 and shape[1:] == (28, 28, 1):
        return " (channels-last? drop the channel axis: images[..., 0])"
    if len(shape) == 4 and shape[2:] == (28, 28):
        return f" ({shape[1]} channels; MNIST samples have one)"
    if len(shape) >= 2 and shape[-2:] == (32, 32):
        return " (padded to 32x32? crop to the 28x28 centre: images[..., 2:30, 2:30])"
    return ""


def _check_images(path: Path, images: np.ndarray) -> np.ndarray:
    shape = tuple(images.shape)
    if images.ndim == 0:
        raise _bad(path, f"`images` is a single value ({images!r}), not an array of images")
    if shape[0] == 0:
        raise _bad(path, f"`images` is empty (shape {shape}): there are no samples to evaluate")
    if shape[1:] not in SHAPES:
        raise _bad(path, f"`images` has shape {shape}, which is not one of the accepted shapes{_shape_hint(shape)}")
    images = images.reshape(shape[0], 28, 28)
    if images.dtype == np.uint8:
        return (images.astype(np.float64) / 255.0).astype(np.float32)
    if images.dtype.kind != "f":
        raise _bad(
            path,
            f"`images` has dtype {images.dtype}, which is not accepted; convert it to uint8 in [0, 255] "
            "(e.g. images.astype(np.uint8)) or to float32 in [0, 1]",
        )
    finite = np.isfinite(images)
    if not finite.all():
        n_nan = int(np.isnan(images).sum())
        n_inf = int(images.size - finite.sum() - n_nan)
        raise _bad(
            path,
            f"`images` holds {n_nan} NaN and {n_inf} infinite values, in {int((~finite).any(axis=(1, 2)).sum())} "
            "of the samples; a generator that produced them has diverged, so regenerate them",
        )
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        if low >= 0.0 and high <= 255.0:
            hint = " (values up to 255 look like uint8 pixels stored as floats: divide by 255)"
        elif low >= -1.0 and high <= 1.0:
            hint = " (values in [-1, 1] look like tanh outputs: rescale with (images + 1) / 2)"
        else:
            hint = ""
        raise _bad(path, f"float `images` range from {low:g} to {high:g}, outside [0, 1]{hint}")
    return images.astype(np.float32)


def _check_labels(path: Path, labels: np.ndarray | None, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    if labels.shape != (n,):
        raise _bad(
            path,
            f"`labels` has shape {tuple(labels.shape)}, but it must be ({n},): one digit per image in `images`",
        )
    if labels.dtype.kind in "iu":
        values = labels
    elif labels.dtype.kind == "f" and np.isfinite(labels).all() and (labels == np.round(labels)).all():
        values = labels  # whole numbers stored as floats are accepted
    else:
        raise _bad(path, f"`labels` has dtype {labels.dtype} and must hold whole numbers, the digits 0-9")
    low, high = values.min(), values.max()
    if low < 0 or high > 9:
        n_bad = int(((values < 0) | (values > 9)).sum())
        raise _bad(
            path,
            f"`labels` range from {int(low)} to {int(high)}: {n_bad} of them are outside the digits 0-9",
        )
    return values.astype(np.int64)


STACKED_EXPECTED = (
    "Expected (for --dataset stacked-mnist) an .npz holding `images` shaped (N, 3, 28, 28): three MNIST "
    "digits as the channels of each sample, uint8 in [0, 255] or float in [0, 1]; e.g. "
    "np.savez('samples.npz', images=images)."
)


def load_stacked(path: str | Path, max_samples: int = MAX_SAMPLES) -> np.ndarray:
    """Stacked MNIST samples as (N, 3, 28, 28) float32 in [0, 1]; refused like `load` otherwise."""
    path = Path(path)
    try:
        images, labels = _read_arrays(path, max_samples, check_shape=False)
    except GanpipeError as exc:
        raise GanpipeError(str(exc).replace(EXPECTED, STACKED_EXPECTED)) from None
    bad = lambda problem: GanpipeError(f"{path}: {problem}. {STACKED_EXPECTED}")  # noqa: E731
    shape = tuple(images.shape)
    if labels is not None:
        raise bad("it holds `labels`, but Stacked MNIST samples are unconditional; drop the `labels` array")
    if images.ndim == 0 or shape[0] == 0 or shape[1:] != (3, 28, 28):
        hint = ""
        if shape[1:] == (28, 28, 3):
            hint = " (channels-last? move the channel axis: images.transpose(0, 3, 1, 2))"
        elif shape[1:] in SHAPES:
            hint = " (one channel: these look like plain MNIST samples; drop --dataset stacked-mnist)"
        raise bad(f"`images` has shape {shape}, not (N, 3, 28, 28){hint}")
    try:
        flat = _check_images(path, images.reshape(shape[0] * 3, 28, 28))
    except GanpipeError as exc:
        raise GanpipeError(str(exc).replace(EXPECTED, STACKED_EXPECTED)) from None
    return flat.reshape(shape[0], 3, 28, 28)


def _read_arrays(path: Path, max_samples: int, check_shape: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """The raw `images` (and `labels`) arrays of an .npz, after the checks that need no decompression:
    the path is a file, the container is a zip, and the headers declare at most `max_samples` images (and,
    with `check_shape`, an accepted MNIST shape)."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise GanpipeError(f"{path} {what}. Pass the path of an .npz sample file. {EXPECTED}")
    _check_container(path)
    _check_declared_size(path, max_samples, check_shape)
    try:
        archive = np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise _bad(
            path, f"is a damaged or incomplete .npz archive that cannot be opened ({_reason(exc)}); write it again"
        ) from None
    with archive:
        if "images" not in archive.files:
            held = ", ".join(f"`{k}`" for k in archive.files) or "no arrays at all"
            raise _bad(path, f"has no `images` array (it holds {held})")
        images = _read_member(path, archive, "images")
        labels = _read_member(path, archive, "labels") if "labels" in archive.files else None
    return images, labels
