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


def pairwise_row_means(x: np.ndarray) -> np.ndarray:
    """Each point's mean distance to the other points (their mean is the mean pairwise distance)."""
    if len(x) < 2:
        return np.zeros(0)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return (torch.cdist(t, t).sum(1) / (len(t) - 1)).double().numpy()


def mean_pairwise_distance(x: np.ndarray) -> float:
    rows = pairwise_row_means(x)
    return float(rows.mean()) if len(rows) else float("nan")


def per_class_with_se(features: np.ndarray, predicted: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean pairwise distance inside each predicted class (NaN where a class has < 2 samples) and its
    standard error. The mean pairwise distance is a U-statistic of order 2, whose variance is about
    4 Var(row mean) / m (Hoeffding 1948), so the SE needs no resampling of the m x m distances."""
    rng = np.random.default_rng(seed)
    means, ses = np.full(N_CLASSES, np.nan), np.full(N_CLASSES, np.nan)
    for c in range(N_CLASSES):
        idx = np.flatnonzero(predicted == c)
        if len(idx) > MAX_PER_CLASS:
            idx = rng.choice(idx, MAX_PER_CLASS, replace=False)
        rows = pairwise_row_means(features[idx])
        if len(rows) >= 2:
            means[c], ses[c] = rows.mean(), 2.0 * rows.std(ddof=1) / np.sqrt(len(rows))
    return means, ses


def per_class(features: np.ndarray, predicted: np.ndarray, seed: int) -> np.ndarray:
    """Mean pairwise distance inside each predicted class (NaN where a class has < 2 samples)."""
    return per_class_with_se(features, predicted, seed)[0]


def diversity_ratio(per_class_samples: np.ndarray, per_class_real: np.ndarray, counts: np.ndarray) -> float:
    """Sample-weighted mean over classes of (sample diversity / real diversity)."""
    ok = ~np.isnan(per_class_samples) & (counts >= 2)
    if not ok.any():
        return 0.0
    ratios = per_class_samples[ok] / per_class_real[ok]
    return float(np.average(ratios, weights=counts[ok]))


def diversity_ratio_se(per_class_se: np.ndarray, per_class_real: np.ndarray, counts: np.ndarray) -> float:
    """Standard error of `diversity_ratio` (classes are disjoint samples, so their errors add in squares)."""
    ok = ~np.isnan(per_class_se) & (counts >= 2)
    if not ok.any():
        return 0.0
    w = counts[ok] / counts[ok].sum()
    return float(np.sqrt(np.sum((w * per_class_se[ok] / per_class_real[ok]) ** 2)))
