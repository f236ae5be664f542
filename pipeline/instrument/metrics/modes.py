"""Stacked MNIST mode counting (VEEGAN, Srivastava et al. 2017, Section 5; PacGAN, Lin et al. 2018, Section 5).

The evaluator classifies each of a sample's three channels; the three digits name one of 1,000 modes.
A mode is captured when at least one sample lands in it, and the KL divergence of the samples' mode
histogram from the uniform distribution over the 1,000 modes measures how evenly they are covered.
"""

from __future__ import annotations

import numpy as np
from scipy.special import rel_entr

from pipeline.data.stacked_mnist import N_MODES, mode_ids


def mode_counts(channel_digits: np.ndarray) -> np.ndarray:
    """(N, 3) predicted digits per channel -> (1000,) samples per mode."""
    return np.bincount(mode_ids(channel_digits), minlength=N_MODES)


def modes_captured(counts: np.ndarray) -> int:
    """How many of the 1,000 modes hold at least one sample (the papers' 'modes' column)."""
    return int((np.asarray(counts) > 0).sum())


def mode_kl(counts: np.ndarray) -> float:
    """KL(sample mode histogram || uniform over 1,000 modes) in nats: 0 for perfectly even coverage,
    ln 1000 = 6.91 when every sample is one mode. Empty modes add nothing (0 log 0 = 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    shares = counts / counts.sum()
    return float(rel_entr(shares, np.full(N_MODES, 1.0 / N_MODES)).sum())
