"""Exact nearest-neighbour distances in feature space, computed in chunks with matrix products.

Brute force is the right tool here: 128-d features, at most ~10^4 x 6x10^4 pairs, and a matmul is
faster than any tree at this dimension. Chunking bounds memory to `chunk` rows at a time.
"""

from __future__ import annotations

import numpy as np
import torch


def _sq_dists(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1, keepdim=True) + b_sq[None, :] - 2.0 * (a @ b.T)
    return d.clamp_min_(0.0)


def kth_distances(queries: np.ndarray, base: np.ndarray, k: int, *, exclude_self: bool = False, chunk: int = 1024) -> np.ndarray:
    """Distance from each query to its k-th nearest point of `base` (k >= 1). With `exclude_self`,
    queries are `base` itself and each point's zero distance to itself is skipped."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    b = torch.from_numpy(np.ascontiguousarray(base, dtype=np.float32))
    b_sq = (b * b).sum(1)
    kk = k + 1 if exclude_self else k
    out = []
    for start in range(0, len(q), chunk):
        d = _sq_dists(q[start : start + chunk], b, b_sq)
        if exclude_self:
            rows = torch.arange(len(d))
            d[rows, rows + start] = -1.0  # sorts first, then dropped
        vals = torch.topk(d, kk, dim=1, largest=False).values[:, -1]
        out.append(vals.sqrt())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def count_within(queries: np.ndarray, base: np.ndarray, radii_of_base: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """For each query, how many base points b have ||query - b|| <= radius[b]."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    b = torch.from_numpy(np.ascontiguousarray(base, dtype=np.float32))
    r2 = torch.from_numpy(np.ascontiguousarray(radii_of_base, dtype=np.float32)) ** 2
    b_sq = (b * b).sum(1)
    out = [(_sq_dists(q[s : s + chunk], b, b_sq) <= r2[None, :]).sum(1) for s in range(0, len(q), chunk)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def nearest_within_radius(queries: np.ndarray, base: np.ndarray, radii_of_queries: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """For each query q: is some base point within radius[q] of it?"""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    b = torch.from_numpy(np.ascontiguousarray(base, dtype=np.float32))
    r2 = torch.from_numpy(np.ascontiguousarray(radii_of_queries, dtype=np.float32)) ** 2
    b_sq = (b * b).sum(1)
    out = [
        _sq_dists(q[s : s + chunk], b, b_sq).min(1).values <= r2[s : s + chunk] for s in range(0, len(q), chunk)
    ]
    return torch.cat(out).numpy() if out else np.zeros(0, bool)


def pairs_within(x: np.ndarray, threshold: float, chunk: int = 1024) -> int:
    """Number of unordered pairs (i < j) of rows of x closer than `threshold`."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    t_sq = (t * t).sum(1)
    total = 0
    for start in range(0, len(t), chunk):
        d = _sq_dists(t[start : start + chunk], t, t_sq)
        cols = torch.arange(len(t))[None, :]
        rows = torch.arange(start, start + len(d))[:, None]
        total += int(((d < threshold**2) & (cols > rows)).sum())
    return total
