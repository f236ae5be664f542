"""Choosing the training device and moving the prepared data onto it once."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.common.errors import GanpipeError


def resolve(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GanpipeError(
            f"train.device is {name!r} but PyTorch sees no CUDA device on this machine. Set "
            "train.device: auto (or cpu) in params.yaml, or install a CUDA build of torch."
        )
    return device


def images_to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 784) in [0, 1], resident on `device`."""
    flat = torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1))
    return flat.to(device).float().div_(255.0)
