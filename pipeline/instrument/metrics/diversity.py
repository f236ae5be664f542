"""Intra-class diversity: how varied the samples of each digit are, relative to real MNIST.

A model can produce all ten digits (no inter-class collapse) yet draw each from a handful of
prototypes; the mean pairwise feature distance within each predicted class then drops far below the
real value. Reported as a ratio to real data: 1.0 = as diverse as MNIST.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.instrument.metrics.classes import N_CLASSES

MAX_PER_CLASS = 1000  # pairwise distances of 1000 points estimate the mean well and stay cheap


def mean_pairwise_distance(x: np.ndarray) -> float:
    if len(x) < 2:
        return float("nan")
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    d = torch.cdist(t, t)
    n = len(t)
    return float(d.sum() / (n * (n - 1)))


def per_class(features: np.ndarray, predicted: np.ndarray, seed: int) -> np.ndarray:
    """Mean pairwise distance inside each predicted class (NaN where a class has < 2 samples)."""
    rng = np.random.default_rng(seed)
    out = np.full(N_CLASSES, np.nan)
    for c in range(N_CLASSES):
        idx = np.flatnonzero(predicted == c)
        if len(idx) > MAX_PER_CLASS:
            idx = rng.choice(idx, MAX_PER_CLASS, replace=False)
        out[c] = mean_pairwise_distance(features[idx])
    return out


def diversity_ratio(per_class_samples: np.ndarray, per_class_real: np.ndarray, counts: np.ndarray) -> float:
    """Sample-weighted mean over classes of (sample diversity / real diversity)."""
    ok = ~np.isnan(per_class_samples) & (counts >= 2)
    if not ok.any():
        return 0.0
    ratios = per_class_samples[ok] / per_class_real[ok]
    return float(np.average(ratios, weights=counts[ok]))
