"""NDB, the number of statistically different bins (Richardson & Weiss, 2018).

Reference images are clustered by k-means in the evaluator's feature space; a sample set is binned by
nearest centre and each bin's share is compared with the real share by a two-proportion z-test. A
collapsed model over-fills a few bins and empties many, so NDB/K rises towards 1 (real data: about
alpha). The paper bins pixels; in pixel space every imperfect generator (stroke width, speckle) moves
mass between bins, so NDB was near 1 for all of them. Feature bins group images by what the evaluator
sees (digit and style), which is what mode coverage is about.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import norm
from sklearn.cluster import KMeans



def fit_bins(pixels: np.ndarray, n_bins: int, seed: int) -> np.ndarray:
    """k-means centres (K, d) of real feature rows."""
    km = KMeans(n_clusters=n_bins, n_init=1, random_state=seed, max_iter=100)
    km.fit(pixels.astype(np.float32))
    return km.cluster_centers_.astype(np.float32)


def assign(pixels: np.ndarray, centres: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Index of the nearest centre for each row."""
    c_sq = (centres**2).sum(1)
    out = []
    for s in range(0, len(pixels), chunk):
        x = pixels[s : s + chunk].astype(np.float32)
        out.append(np.argmin(c_sq[None, :] - 2.0 * x @ centres.T, axis=1))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def bin_shares(bins: np.ndarray, n_bins: int) -> np.ndarray:
    return np.bincount(bins, minlength=n_bins) / max(len(bins), 1)


def ndb(sample_bins: np.ndarray, real_shares: np.ndarray, n_real: int, alpha: float) -> dict[str, float]:
    """NDB/K (share of bins whose sample share differs from the real share at level alpha) and the
    Jensen-Shannon divergence (base 2, in [0, 1]) between the two bin histograms."""
    k = len(real_shares)
    n = len(sample_bins)
    p_s = bin_shares(sample_bins, k)
    pooled = (p_s * n + real_shares * n_real) / (n + n_real)
    se = np.sqrt(pooled * (1 - pooled) * (1.0 / n + 1.0 / n_real))
    z = np.divide(p_s - real_shares, se, out=np.zeros(k), where=se > 0)
    different = np.abs(z) > norm.ppf(1 - alpha / 2)
    return {
        "ndb": float(different.mean()),
        "ndb_count": int(different.sum()),
        "ndb_js": float(jensenshannon(p_s, real_shares, base=2) ** 2),
    }
