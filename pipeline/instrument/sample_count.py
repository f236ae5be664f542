"""How many samples the instrument needs, and how many it takes at most.

The fewest: the verdict calls a digit missing when it holds less than `min_share_ratio` of its MNIST
share. In a small set even real MNIST digits fall under that line by chance (9 real digits cannot
hold all ten), so below some size the verdict could not tell collapse from luck, and calibration on
real subsets of that size refuses. The minimum is the smallest n at which a set of n real digits, drawn
in MNIST's proportions, puts some digit under the line with probability at most `RISK` (binomial
tail of each digit's count, summed over the digits).

The most: a stated cap on the sample count, so a file or a request that would need more memory than
the machine has is refused before anything is allocated; `--max-samples` raises it.
"""

from __future__ import annotations

import numpy as np

RISK = 1e-3
MAX_SAMPLES = 100_000  # the largest count benchmarks/evaluate_speed.py times; raise with --max-samples


def chance_real_set_looks_collapsed(n: int, class_shares: np.ndarray, min_share_ratio: float) -> float:
    """Upper bound on the probability that n real digits put some digit under the coverage line."""
    from scipy.stats import binom

    shares = np.asarray(class_shares, dtype=np.float64)
    below = np.floor(min_share_ratio * shares * n)  # count <= this is at most min_share_ratio of its share
    return float(np.minimum(binom.cdf(below, n, shares).sum(), 1.0))


def minimum_samples(class_shares: np.ndarray, min_share_ratio: float, nearest_k: int) -> int:
    """The smallest n whose real sets pass the coverage line with probability >= 1 - RISK (and that
    leaves each sample k nearest neighbours among the others)."""
    n = max(nearest_k + 2, 10)
    while chance_real_set_looks_collapsed(n, class_shares, min_share_ratio) > RISK:
        n += max(1, n // 50)
    return n
