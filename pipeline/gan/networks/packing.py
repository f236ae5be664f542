"""PacGAN's packing (Lin et al. 2018): the discriminator judges m samples at once, as one input.

The trainer hands D a batch whose consecutive rows are of one kind (all real or all fake), so one
reshape turns every m consecutive rows into one row of m samples side by side. For a conv net the packed
row, read as an image, has m·C channels: sample i's channels follow sample i-1's, which is the
channel-wise concatenation PacGAN uses for convolutional discriminators.
"""

from __future__ import annotations

import torch


def pack_rows(rows: torch.Tensor, m: int) -> torch.Tensor:
    """(N, F) -> (N / m, m·F): rows k·m ... k·m + m - 1 become packed row k."""
    if m == 1:
        return rows
    return rows.reshape(rows.shape[0] // m, m * rows.shape[1])
