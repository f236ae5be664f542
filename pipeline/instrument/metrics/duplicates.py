"""Near-duplicates among samples, and a birthday-paradox estimate of how many distinct images the
generator can produce (Arora & Zhang, 2017).

"Near-duplicate" means closer in feature space than `threshold`, which the calibrate stage sets at a
low quantile of the nearest-neighbour distances inside real subsets of the same size, so real data has
a known, tiny duplicate rate."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import stats

from pipeline.instrument.metrics.neighbours import kth_distances, sq_distance_chunks

MIN_PAIRS_FOR_ESTIMATE = 10


def nearest_distances(features: np.ndarray) -> np.ndarray:
    """Each sample's distance to its nearest other sample."""
    return kth_distances(features, features, 1, exclude_self=True)


def duplicate_stats(features: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """(per-sample flag "has a near-duplicate among the others", number of near-duplicate pairs), from
    one chunked pass over the pairwise distances. The duplicate rate is the flags' mean."""
    n = len(features)
    has_duplicate = torch.zeros(n, dtype=torch.bool)
    if n < 2:
        return has_duplicate.numpy(), 0
    t2 = threshold**2
    pairs = 0
    for start, d in sq_distance_chunks(features, features):
        rows = torch.arange(len(d))
        d[rows, rows + start] = float("inf")
        close = d < t2
        has_duplicate[start : start + len(d)] = close.any(1)
        pairs += int(close.sum())
    return has_duplicate.numpy(), pairs // 2  # each pair was seen from both ends


def support_size(n: int, pairs: int, confidence: float) -> dict[str, Any]:
    """How many distinct images the generator draws from, by inverting the birthday paradox: n samples
    drawn uniformly from S images hold Poisson(n(n-1)/(2S)) duplicate pairs. The exact Poisson interval
    for the pair count gives S's interval; with no pair only a lower bound exists. One pair gives an
    interval spanning two orders of magnitude, so the point estimate is only given from 10 pairs on."""
    all_pairs = n * (n - 1) / 2
    alpha = 1.0 - confidence
    if pairs == 0:
        upper_rate = -np.log(alpha)  # one-sided: P(0 pairs | rate) = alpha
        low = all_pairs / upper_rate
        return {
            "pairs": 0, "estimate": None, "low": round(low), "high": None,
            "text": f"> {low:,.0f} distinct images at {confidence:.0%}",
        }
    rate_low = stats.chi2.ppf(alpha / 2, 2 * pairs) / 2
    rate_high = stats.chi2.ppf(1 - alpha / 2, 2 * pairs + 2) / 2
    low, high = all_pairs / rate_high, all_pairs / rate_low
    estimate = all_pairs / pairs if pairs >= MIN_PAIRS_FOR_ESTIMATE else None
    return {
        "pairs": pairs, "estimate": None if estimate is None else round(estimate), "low": round(low),
        "high": round(high), "text": f"{low:,.0f} - {high:,.0f} distinct images ({confidence:.0%}, {pairs} pairs)",
    }
