"""Near-duplicates among samples, and a birthday-paradox estimate of how many distinct images the
generator can produce (Arora & Zhang, 2017).

"Near-duplicate" means closer in feature space than `threshold`, which the calibrate stage sets at a
low quantile of the nearest-neighbour distances inside real subsets of the same size, so real data has
a known, tiny duplicate rate."""

from __future__ import annotations

import numpy as np

from pipeline.metrics.neighbours import kth_distances, pairs_within


def nearest_distances(features: np.ndarray) -> np.ndarray:
    """Each sample's distance to its nearest other sample."""
    return kth_distances(features, features, 1, exclude_self=True)


def duplicate_rate(features: np.ndarray, threshold: float) -> float:
    """Share of samples with a near-duplicate among the others."""
    return float((nearest_distances(features) < threshold).mean()) if len(features) > 1 else 0.0


def support_size(features: np.ndarray, threshold: float) -> float | None:
    """If samples were drawn uniformly from S distinct images, n samples would hold about
    n(n-1)/(2S) duplicate pairs; invert that. None when no pair is a duplicate (S too large to tell)."""
    n = len(features)
    pairs = pairs_within(features, threshold)
    return float(n * (n - 1) / (2 * pairs)) if pairs else None
