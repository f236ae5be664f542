"""Calibrating the collapse verdict on real data the instrument never saw.

Many random subsets of the evaluation size are drawn from the baseline pool (MNIST's test set plus the
training images held out from the evaluator and the reference, see reference.py) and measured exactly
like generated samples. Their spread says what "as good as unseen real data" looks like at that size;
every verdict threshold is set beyond the worst real subset, so real data is never called collapsed.

Subsets of n from a pool of N overlap (on average by n/N), which shrinks their spread by the
finite-population factor sqrt(1 - n/N); the reported std is corrected for it. n may be at most N/2, so
two subsets share at most half their images; beyond that the pool cannot honestly say how real data
varies at n, and calibration refuses.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from pipeline.common.errors import GanpipeError
from pipeline.common.params import EvaluateParams
from pipeline.instrument.evaluation import measure, prdc_reference
from pipeline.instrument.evaluator import Embedding
from pipeline.instrument.metrics import duplicates
from pipeline.instrument.reference import Reference

CALIBRATED = (
    "fld", "kid", "class_kl", "mnist_score", "mean_confidence", "precision", "recall", "density",
    "coverage", "ndb", "ndb_js", "duplicate_rate", "intra_class_diversity", "min_share_ratio",
    "neighbour_spread",
)


def _summary(values: list[float], fpc: float) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std() / fpc), "min": float(a.min()), "max": float(a.max())}


def check_pool(ref: Reference, n: int) -> None:
    """Refuse an n the baseline pool cannot calibrate honestly (before any expensive work)."""
    if 2 * n > ref.n_pool:
        raise GanpipeError(
            f"the verdict cannot be calibrated for {n} samples: real baselines come from {ref.n_pool} real images "
            f"neither the evaluator nor the reference used (MNIST's test set plus {int(ref.heldout.sum())} held-out "
            f"training images), and honest subsets may hold at most half of them ({ref.n_pool // 2}). Evaluate at "
            "most that many samples (evaluate.n_samples, or fewer images in the sample file), or raise "
            "evaluator.holdout in params.yaml and run `dvc repro evaluator`."
        )


def real_subsets(ref: Reference, n: int, count: int, seed: int) -> list[np.ndarray]:
    """Random subsets of size n, as indices into `ref.baseline_pool()`."""
    check_pool(ref, n)
    rng = np.random.default_rng(seed + 1)
    return [rng.choice(ref.n_pool, n, replace=False) for _ in range(count)]


def calibrate(
    ref: Reference,
    settings: EvaluateParams,
    seed: int,
    on_subset: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Real-data distribution of every metric at n = settings.n_samples, and the verdict thresholds."""
    n = settings.n_samples
    subsets = real_subsets(ref, n, settings.calibration_subsets, seed)
    pool_features, pool_probs = ref.baseline_pool()
    nearest = np.concatenate([duplicates.nearest_distances(pool_features[s]) for s in subsets])
    duplicate_distance = float(np.quantile(nearest, settings.duplicate_quantile))
    per_metric: dict[str, list[float]] = {k: [] for k in CALIBRATED}
    prdc_real = prdc_reference(ref, settings, seed)
    for i, s in enumerate(subsets):
        m = measure(
            Embedding(pool_features[s], pool_probs[s]), None, ref, settings,
            duplicate_threshold=duplicate_distance,
            share_ratio_threshold=settings.verdict.min_share_ratio,
            seed=seed + i,
            # Held-out pool images are GAN training images (distance 0 to themselves): no memorisation baseline.
            with_memorisation=False,
            prdc_real=prdc_real,
        )
        for k in CALIBRATED:
            per_metric[k].append(m[k])
        if on_subset:
            on_subset(i + 1)
    fpc = float(np.sqrt(1.0 - n / ref.n_pool))
    real = {k: _summary(v, fpc) for k, v in per_metric.items()}
    v = settings.verdict
    if real["min_share_ratio"]["min"] <= v.min_share_ratio:
        raise GanpipeError(
            f"evaluate.verdict.min_share_ratio = {v.min_share_ratio} would call real data collapsed: a real "
            f"subset of {n} images has a digit at {real['min_share_ratio']['min']:.2f} of its MNIST share. "
            "Lower min_share_ratio or raise evaluate.n_samples in params.yaml."
        )
    thresholds = {
        "share_ratio": v.min_share_ratio,
        "missing_share_ratio": v.missing_share_ratio,
        "imbalance_share_ratio": v.imbalance_share_ratio,
        "label_accuracy": v.label_accuracy,
        "class_kl": real["class_kl"]["max"] + v.class_kl_margin,
        "intra_class_diversity": v.diversity_factor * real["intra_class_diversity"]["min"],
        "duplicate_rate": real["duplicate_rate"]["max"] + v.duplicate_rate_margin,
        "neighbour_spread": v.spread_factor * real["neighbour_spread"]["min"],
    }
    return {
        "n_samples": n,
        "subsets": len(subsets),
        "baseline": {
            "pool": f"MNIST test set ({len(ref.test_features)}) + training images held out from the evaluator "
                    f"and the reference ({int(ref.heldout.sum())})",
            "pool_size": ref.n_pool,
            "mean_overlap": round(n / ref.n_pool, 4),
            "std_correction": f"std = spread across subsets / sqrt(1 - n/pool) = / {fpc:.3f} (finite-population)",
        },
        "duplicate_quantile": settings.duplicate_quantile,
        "duplicate_distance": duplicate_distance,
        "real": real,
        "thresholds": thresholds,
    }
