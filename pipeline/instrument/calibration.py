"""Calibrating the collapse verdict on real data.

Many random real subsets of the evaluation size are measured exactly like generated samples. Their
spread says what "as good as real data" looks like at that size, and every verdict threshold is set
beyond the worst real subset, so real data is never called collapsed.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from pipeline.common.errors import GanpipeError
from pipeline.instrument.evaluation import measure, prdc_real_subset, prdc_reference
from pipeline.instrument.evaluator import Embedding
from pipeline.instrument.metrics import duplicates
from pipeline.common.params import EvaluateParams
from pipeline.instrument.reference import Reference

CALIBRATED = (
    "fld", "kid", "class_kl", "mnist_score", "mean_confidence", "precision", "recall", "density",
    "coverage", "ndb", "ndb_js", "duplicate_rate", "intra_class_diversity", "min_share_ratio",
)


def _summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max())}


def real_subsets(ref: Reference, n: int, count: int, seed: int) -> list[np.ndarray]:
    """Random real training subsets of size n, disjoint from the PRDC reference subset when possible."""
    rng = np.random.default_rng(seed + 1)
    pool = np.setdiff1d(np.arange(ref.n_train), prdc_real_subset(ref, n, seed))
    if len(pool) < n:
        pool = np.arange(ref.n_train)
    return [rng.choice(pool, min(n, len(pool)), replace=False) for _ in range(count)]


def calibrate(
    ref: Reference,
    train_pixels: np.ndarray,
    settings: EvaluateParams,
    seed: int,
    on_subset: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Real-data distribution of every metric at n = settings.n_samples, and the verdict thresholds."""
    n = settings.n_samples
    subsets = real_subsets(ref, n, settings.calibration_subsets, seed)
    nearest = np.concatenate([duplicates.nearest_distances(ref.train_features[s]) for s in subsets])
    duplicate_distance = float(np.quantile(nearest, settings.duplicate_quantile))
    per_metric: dict[str, list[float]] = {k: [] for k in CALIBRATED}
    prdc_real = prdc_reference(ref, settings, seed)
    for i, s in enumerate(subsets):
        emb = Embedding(ref.train_features[s], ref.train_probs[s])
        pixels = train_pixels[s].reshape(len(s), -1).astype(np.float32) / 255.0
        m = measure(
            emb, pixels, None, ref, settings,
            duplicate_threshold=duplicate_distance,
            share_ratio_threshold=settings.verdict.min_share_ratio,
            seed=seed,
            with_memorisation=False,  # real subsets are training images: distance to train is 0
            prdc_real=prdc_real,
        )
        m["min_share_ratio"] = min(m["class_share_ratios"])
        for k in CALIBRATED:
            per_metric[k].append(m[k])
        if on_subset:
            on_subset(i + 1)
    real = {k: _summary(v) for k, v in per_metric.items()}
    v = settings.verdict
    if real["min_share_ratio"]["min"] <= v.min_share_ratio:
        raise GanpipeError(
            f"evaluate.verdict.min_share_ratio = {v.min_share_ratio} would call real data collapsed: a real "
            f"subset of {n} images has a digit at {real['min_share_ratio']['min']:.2f} of its MNIST share. "
            "Lower min_share_ratio or raise evaluate.n_samples in params.yaml."
        )
    thresholds = {
        "share_ratio": v.min_share_ratio,
        "class_kl": real["class_kl"]["max"] + v.class_kl_margin,
        "intra_class_diversity": v.diversity_factor * real["intra_class_diversity"]["min"],
        "duplicate_rate": real["duplicate_rate"]["max"] + v.duplicate_rate_margin,
    }
    return {
        "n_samples": n,
        "subsets": len(subsets),
        "duplicate_quantile": settings.duplicate_quantile,
        "duplicate_distance": duplicate_distance,
        "real": real,
        "thresholds": thresholds,
    }
