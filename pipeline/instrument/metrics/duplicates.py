"""Near-duplicates among samples, and a birthday-paradox estimate of how many distinct images the
generator can produce (Arora & Zhang, 2017).

"Near-duplicate" means closer in feature space than `threshold`, which the calibrate stage sets at a
low quantile of the nearest-neighbour distances inside real subsets of the same size, so real data has
a known, tiny duplicate rate."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.instrument.metrics.neighbours import kth_distances, sq_distance_chunks


def nearest_distances(features: np.ndarray) -> np.ndarray:
    """Each sample's distance to its nearest other sample."""
    return kth_distances(features, features, 1, exclude_self=True)


def duplicate_stats(features: np.ndarray, threshold: float) -> tuple[float, float | None]:
    """(duplicate rate, support size) from one pass over the pairwise distances.

    The rate is the share of samples with a near-duplicate among the others. The support size inverts
    the birthday paradox: n samples drawn uniformly from S distinct images hold about n(n-1)/(2S)
    duplicate pairs. None when no pair is a duplicate (S too large to tell at this n)."""
    n = len(features)
    if n < 2:
        return 0.0, None
    t2 = threshold**2
    has_duplicate = torch.zeros(n, dtype=torch.bool)
    pairs = 0
    for start, d in sq_distance_chunks(features, features):
        rows = torch.arange(len(d))
        d[rows, rows + start] = float("inf")
        close = d < t2
        has_duplicate[start : start + len(d)] = close.any(1)
        pairs += int(close.sum())
    pairs //= 2  # each pair was seen from both ends
    return float(has_duplicate.float().mean()), (n * (n - 1) / (2 * pairs) if pairs else None)
