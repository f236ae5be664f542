"""Replica seeds: each replica of a training is an independent draw of the same recipe.

Replica r's seed comes from numpy's SeedSequence([seed, r]), whose hashing keeps the streams of
different (seed, r) pairs apart: experiments with different `seed` values never share a replica seed,
and replica r's seed does not depend on how many replicas are trained next to it.
"""

from __future__ import annotations

import numpy as np


def replica_seed(seed: int, r: int) -> int:
    """A 31-bit seed for replica r of an experiment seeded with `seed` (fits torch and numpy seeds)."""
    if seed < 0 or r < 0:
        raise ValueError(f"seed and replica index must be >= 0, got seed={seed}, r={r}")
    return int(np.random.SeedSequence([seed, r]).generate_state(1, dtype=np.uint32)[0] >> 1)


def replica_seeds(seed: int, replicas: int) -> list[int]:
    return [replica_seed(seed, r) for r in range(replicas)]
