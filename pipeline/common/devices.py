"""Choosing the training device and moving the prepared data onto it once."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.common import cpu_kernels
from pipeline.common.errors import GanpipeError


def resolve(name: str) -> torch.device:
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GanpipeError(
            f"train.device is {name!r} but PyTorch sees no CUDA device on this machine. Set "
            "train.device: auto (or cpu) in params.yaml, or install a CUDA build of torch."
        )
    if device.type == "cuda" and cpu_kernels.in_force().get("mode") == "portable":
        # Run-to-run equal bytes on one GPU model (cuBLAS's workspace is fixed by cpu_kernels.pin); a GPU's
        # results still differ from the CPU's and between GPU models. Not yet verified on a GPU.
        torch.use_deterministic_algorithms(True)
    return device


def images_to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 784) in [0, 1], resident on `device`."""
    flat = torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1))
    return flat.to(device).float().div_(255.0)
