"""Fixed CPU thread counts for torch, because the count changes results.

PyTorch splits a large sum (a convolution, a reduction, a distance matrix) across its threads, and the
partial sums add up in a different order with a different count. Measured on this project's 2-core CPU,
1 against 2 threads: the evaluator's embedding of the same images, a DCGAN training step and a
single-replica MLP training step all differ in their last bits, and a GAN's training amplifies such
differences into a different model (only stacked MLP replicas came out bit-identical). torch's default
count follows the machine (its cores, or OMP_NUM_THREADS), so every count is a param instead:
`evaluator.threads` for the instrument's work, `train.threads` for the training loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def use(n: int) -> None:
    """Run this process's torch CPU work on `n` threads from now on."""
    torch.set_num_threads(n)


@contextlib.contextmanager
def scoped(n: int) -> Iterator[None]:
    """`n` threads inside the block, the previous count after it (the training's collapse checks)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
