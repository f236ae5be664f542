"""What each headline metric means, and how both reports print numbers."""

from __future__ import annotations

import math
from typing import Any

from pipeline.reports.document import MISSING

# The headline metrics, in the order the reports list them, with one line on how to read each.
METRICS: dict[str, str] = {
    "fld": "Fréchet distance to MNIST in the evaluator classifier's features (FID's formula, not Inception's features, not the Feature Likelihood Divergence); lower is closer",
    "kid": "kernel (MMD²) distance to MNIST in evaluator features; about 0 for real data",
    "class_coverage": "digits holding a real share of the samples (of 10)",
    "class_kl": "KL of the digit histogram from MNIST's, nats; 0 = MNIST's proportions",
    "mnist_score": "Inception Score with the evaluator (1–10): confident and varied digits score high",
    "precision": "share of samples inside real data's k-NN manifold (fidelity)",
    "recall": "share of real images inside the samples' manifold (diversity)",
    "density": "how crowded samples sit among real neighbours; about 1 for real data",
    "coverage": "share of real images with a sample among their nearest neighbours",
    "ndb": "share of pixel-space bins whose sample share differs from MNIST's",
    "ndb_js": "Jensen–Shannon divergence of the bin histograms (0–1)",
    "duplicate_rate": "share of samples with a near-duplicate among the samples",
    "intra_class_diversity": "within-digit spread relative to MNIST's (1 = as varied)",
    "label_accuracy": "conditional models: share of samples read as the digit asked for",
    "memorisation_ratio": "sample→training distance over real test→training distance (≪ 1 = copying)",
}

# Metrics whose real-data value follows from the definition rather than from calibration.
REAL_BY_DEFINITION = {"class_coverage": 10, "memorisation_ratio": 1.0}


def fmt(value: Any) -> str:
    """Four significant digits, thousands separated; absent or NaN values as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == int(value) and abs(value) < 1e6:
            return f"{int(value):,}"
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def mean_std(mean: Any, std: Any) -> str:
    """"mean ± std"; the spread to two significant digits, which is all a standard deviation carries."""
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return fmt(mean)
    std = float(std)
    return f"{fmt(mean)} ± {std:.2g}" if abs(std) < 100 else f"{fmt(mean)} ± {std:,.0f}"


def pct(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1%}"
