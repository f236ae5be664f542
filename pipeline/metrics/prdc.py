"""Precision, recall, density and coverage (Kynkäänniemi et al. 2019; Naeem et al. 2020) with k-NN
balls in evaluator feature space. Precision/density: are samples realistic? Recall/coverage: do samples
reach all of the real data? A collapsed model keeps precision but loses recall and coverage."""

from __future__ import annotations

import numpy as np

from pipeline.metrics.neighbours import count_within, kth_distances, nearest_within_radius


def prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    real_radii = kth_distances(real, real, k, exclude_self=True)
    fake_radii = kth_distances(fake, fake, k, exclude_self=True)
    # How many real balls contain each sample.
    inside_real = count_within(fake, real, real_radii)
    precision = float((inside_real > 0).mean())
    density = float(inside_real.mean() / k)
    # Recall: share of real points inside some sample's ball.
    recall = float((count_within(real, fake, fake_radii) > 0).mean())
    # Coverage: share of real balls that hold at least one sample.
    coverage = float(nearest_within_radius(real, fake, real_radii).mean())
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}
