"""Memorisation guard: are samples closer to training images than real held-out images are?

A generator that copies its training set scores perfectly on every distribution metric; this compares
the median distance from each sample to its nearest training image with the same median for the real
test images. A ratio well below 1 means samples sit on top of training images."""

from __future__ import annotations

import numpy as np

from pipeline.instrument.metrics.neighbours import kth_distances


def nearest_train_distances(features: np.ndarray, train_features: np.ndarray) -> np.ndarray:
    return kth_distances(features, train_features, 1)


def memorisation_ratio(sample_nn: np.ndarray, test_nn: np.ndarray) -> float:
    return float(np.median(sample_nn) / np.median(test_nn))
