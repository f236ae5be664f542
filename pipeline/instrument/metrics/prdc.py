"""Precision, recall, density and coverage (Kynkäänniemi et al. 2019; Naeem et al. 2020) with k-NN
balls in evaluator feature space. Precision/density: are samples realistic? Recall/coverage: do samples
reach all of the real data? A collapsed model keeps precision but loses recall and coverage."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.instrument.metrics.neighbours import kth_distances, sq_distance_chunks


def prdc(real: np.ndarray, fake: np.ndarray, k: int, real_radii: np.ndarray | None = None) -> dict[str, float]:
    """All four from one pass over the sample-to-real distances. `real_radii` (each real point's k-NN
    distance among the real points) may be passed in when the same real set is reused."""
    if real_radii is None:
        real_radii = kth_distances(real, real, k, exclude_self=True)
    fake_radii = kth_distances(fake, fake, k, exclude_self=True)
    real_r2 = torch.from_numpy(real_radii.astype(np.float32)) ** 2
    fake_r2 = torch.from_numpy(fake_radii.astype(np.float32)) ** 2
    balls_holding = torch.zeros(len(fake))  # per sample: how many real k-NN balls contain it
    real_ball_hit = torch.zeros(len(real), dtype=torch.bool)  # per real point: its ball holds a sample
    real_reached = torch.zeros(len(real), dtype=torch.bool)  # per real point: inside some sample's ball
    for start, d in sq_distance_chunks(fake, real):
        inside_real = d < real_r2[None, :]  # strict, as in Naeem et al.'s reference code
        balls_holding[start : start + len(d)] = inside_real.sum(1).float()
        real_ball_hit |= inside_real.any(0)
        real_reached |= (d < fake_r2[start : start + len(d), None]).any(0)
    return {
        "precision": float((balls_holding > 0).float().mean()),
        "recall": float(real_reached.float().mean()),
        "density": float(balls_holding.mean() / k),
        "coverage": float(real_ball_hit.float().mean()),
    }
