"""Neighbour spread: how close each sample's nearest neighbour is, relative to how far apart samples
typically are, within the sample set itself and regardless of digit labels.

A generator that draws from a few prototypes puts every sample next to copies of its own prototype
(nearest-neighbour distance far below the typical distance), however the evaluator reads or misreads
those prototypes; so this judges intra-class collapse without trusting the predicted digit. Being a
ratio of two distances in the same space, it is blind to a global change of feature scale, so blurred
or noisy (but diverse) digits keep a real-like spread. Like any nearest-neighbour statistic it falls as
n grows, so it is only compared with real images at the same n (the calibration).
"""

from __future__ import annotations

import numpy as np

from pipeline.instrument.metrics.neighbours import kth_distances


def spread_parts(features: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(each sample's distance to its nearest other sample, its distance to one random other sample)."""
    n = len(features)
    nn = kth_distances(features, features, 1, exclude_self=True)
    rng = np.random.default_rng(seed)
    partner = (np.arange(n) + rng.integers(1, max(n, 2), size=n)) % max(n, 1)  # never itself
    f = features.astype(np.float32)
    return nn.astype(np.float64), np.linalg.norm(f - f[partner], axis=1).astype(np.float64)


def neighbour_spread(nn: np.ndarray, random_pair: np.ndarray) -> float:
    """median nearest-neighbour distance / median random-pair distance (0 when all samples coincide)."""
    typical = float(np.median(random_pair)) if len(random_pair) else 0.0
    return float(np.median(nn)) / typical if typical > 0 else 0.0


def spread_interval(nn: np.ndarray, random_pair: np.ndarray, draws: int, confidence: float, seed: int) -> list[float]:
    """Percentile bootstrap over samples (each sample's two distances kept together)."""
    if len(nn) < 2:
        return [0.0, 0.0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(nn), size=(draws, len(nn)))
    typical = np.median(random_pair[idx], axis=1)
    values = np.divide(np.median(nn[idx], axis=1), typical, out=np.zeros(draws), where=typical > 0)
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [round(float(lo), 6), round(float(hi), 6)]
