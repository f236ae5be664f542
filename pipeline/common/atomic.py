"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A reader (or a later DVC stage) therefore sees either the old file or the complete new one, never a
half-written file, even if the process is killed mid-write.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pipeline.common.errors import GanpipeError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _cannot_write(target: Path, exc: OSError) -> GanpipeError:
    reason = exc.strerror or type(exc).__name__
    where = Path(exc.filename) if getattr(exc, "filename", None) else target.parent
    return GanpipeError(
        f"cannot write {target}: {where} is not writable ({reason}). Choose a folder you can write to, "
        f"or fix its permissions (e.g. `chmod u+w {where}`) and run again."
    )


def check_writable(target: str | os.PathLike) -> None:
    """Refuse, before any work, a target whose folder cannot be created or written: the error names the
    folder, instead of a PermissionError traceback after the work is done."""
    target = Path(target)
    folder = target.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise GanpipeError(f"cannot write {target}: {existing} is a file, not a folder. Choose another path.")
    if not os.access(existing, os.W_OK | os.X_OK) or (target.exists() and target.is_dir()):
        if target.is_dir():
            raise GanpipeError(f"cannot write {target}: it is a folder. Give a file name.")
        raise _cannot_write(target, PermissionError(13, "permission denied", str(existing)))


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; move it onto `target` on success."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except (PermissionError, FileExistsError, NotADirectoryError, OSError) as exc:
        raise _cannot_write(target, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def save_torch(target: str | os.PathLike, obj: Any) -> None:
    import torch

    with atomic_path(target) as tmp:
        # Through a file object: given a path, torch.save names the archive's inner folder after the file,
        # here the random temporary name, so equal weights would give different bytes (and DVC hashes)
        # every time and no downstream stage could be restored from DVC's run cache.
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)


def save_npz(target: str | os.PathLike, **arrays: Any) -> None:
    import numpy as np

    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:  # a file object stops numpy from appending ".npz" to the name
            np.savez(fh, **arrays)
