"""The collapse instrument: every metric of a sample set, in the order `ganpipe evaluate` prints them.

`measure` works on evaluator embeddings, so the calibrate stage can run it on real subsets (whose
features are already in the reference) and `evaluate_images` on generated images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.instrument.evaluator import Embedding, MnistCNN, embed
from pipeline.instrument.metrics import classes, diversity, duplicates, frechet, memorisation, ndb, prdc, verdict
from pipeline.instrument.metrics.neighbours import kth_distances
from pipeline.common.params import EvaluateParams
from pipeline.instrument.reference import Reference

def prdc_real_subset(ref: Reference, n: int, seed: int) -> np.ndarray:
    """Indices of the fixed real subset that precision/recall/density/coverage compare against."""
    return np.random.default_rng(seed).permutation(ref.n_train)[: min(n, ref.n_train)]


def prdc_reference(ref: Reference, settings: EvaluateParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The real PRDC subset's features and their k-NN radii (computed once, reused for every sample set)."""
    real = ref.train_features[prdc_real_subset(ref, settings.n_samples, seed)]
    return real, kth_distances(real, real, settings.nearest_k, exclude_self=True)


def measure(
    emb: Embedding,
    pixels: np.ndarray,
    requested: np.ndarray | None,
    ref: Reference,
    settings: EvaluateParams,
    *,
    duplicate_threshold: float,
    share_ratio_threshold: float,
    seed: int,
    with_memorisation: bool = True,
    prdc_real: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """All metrics of one sample set (without the verdict). `pixels` are float [0, 1] rows (N, 784).
    `prdc_real` is `prdc_reference(...)`, passed in by callers that measure many sets."""
    n = len(emb.features)
    hist = classes.histogram(emb.predicted)
    counts = np.bincount(emb.predicted, minlength=classes.N_CLASSES)
    real_prdc, real_radii = prdc_real or prdc_reference(ref, settings, seed)
    div_per_class = diversity.per_class(emb.features, emb.predicted, seed)
    dup_rate, support = duplicates.duplicate_stats(emb.features, duplicate_threshold)
    out: dict[str, Any] = {
        "n_samples": n,
        "fld": frechet.fld(emb.features, ref.mu, ref.cov),
        "kid": frechet.kid(
            emb.features,
            ref.train_features,
            subsets=settings.kid_subsets,
            subset_size=settings.kid_subset_size,
            seed=seed,
        ),
        "class_coverage": classes.class_coverage(hist, ref.class_hist, share_ratio_threshold),
        "class_kl": classes.class_kl(hist, ref.class_hist),
        "mnist_score": classes.mnist_score(emb.probs),
        "mean_confidence": classes.mean_confidence(emb.probs),
        **prdc.prdc(real_prdc, emb.features, settings.nearest_k, real_radii),
        **ndb.ndb(ndb.assign(pixels, ref.ndb_centres), ref.ndb_shares, ref.n_train, settings.ndb_alpha),
        "duplicate_rate": dup_rate,
        "support_size": support,
        "intra_class_diversity": diversity.diversity_ratio(div_per_class, ref.diversity_per_class, counts),
        "label_accuracy": None if requested is None else classes.label_accuracy(emb.predicted, requested),
        "memorisation_ratio": None,
        "class_shares": hist.round(6).tolist(),
        "class_share_ratios": classes.share_ratios(hist, ref.class_hist).round(6).tolist(),
        "intra_class_diversity_per_class": [
            None if np.isnan(s) else round(float(s / r), 6) for s, r in zip(div_per_class, ref.diversity_per_class)
        ],
    }
    if with_memorisation:
        nn = memorisation.nearest_train_distances(emb.features, ref.train_features)
        out["memorisation_ratio"] = memorisation.memorisation_ratio(nn, ref.test_nn_train)
    return out


def evaluate_images(
    images: np.ndarray,
    requested: np.ndarray | None,
    model: MnistCNN,
    ref: Reference,
    calibration: dict[str, Any],
    settings: EvaluateParams,
    seed: int,
) -> dict[str, Any]:
    """Embed images (N, 28, 28; uint8 or float in [0, 1]), measure them and judge collapse."""
    pixels = images.reshape(len(images), -1).astype(np.float32)
    if images.dtype == np.uint8:
        pixels /= 255.0
    emb = embed(model, images)
    thresholds = calibration["thresholds"]
    metrics = measure(
        emb,
        pixels,
        requested,
        ref,
        settings,
        duplicate_threshold=calibration["duplicate_distance"],
        share_ratio_threshold=thresholds["share_ratio"],
        seed=seed,
    )
    metrics["collapse"] = verdict.judge(metrics, calibration)
    return metrics


def quick_metrics(images: np.ndarray, model: MnistCNN, ref: Reference, share_ratio_threshold: float) -> dict[str, float]:
    """The cheap subset tracked during training: class coverage, class KL and FLD."""
    emb = embed(model, images)
    hist = classes.histogram(emb.predicted)
    return {
        "class_coverage": classes.class_coverage(hist, ref.class_hist, share_ratio_threshold),
        "class_kl": classes.class_kl(hist, ref.class_hist),
        "fld": frechet.fld(emb.features, ref.mu, ref.cov),
    }


def requested_labels(n: int, seed: int, ref: Reference) -> np.ndarray:
    """Digits to ask a conditional generator for, in MNIST's proportions (so class KL stays fair)."""
    return np.random.default_rng(seed).choice(10, size=n, p=ref.class_hist).astype(np.int64)


def first_collapse_step(curve) -> int | None:
    """The training iteration at which inter-class collapse first appeared in the in-training checks.

    Collapse means losing digits the model had: the first check with class_coverage < 10 after one
    with all ten. A model that never reached all ten digits never had them, so its first check is
    returned. None when the last check still covers all ten and none lost a digit after full cover.
    """
    if curve is None or len(curve) == 0 or "class_coverage" not in curve:
        return None
    covered = (curve["class_coverage"] >= 10).to_numpy()
    steps = curve["step"].to_numpy()
    if not covered.any():
        return int(steps[0])
    after_full = np.arange(len(covered)) > np.argmax(covered)
    lost = np.flatnonzero(after_full & ~covered)
    return int(steps[lost[0]]) if len(lost) else None


SCALARS = (
    "n_samples", "fld", "kid", "class_coverage", "class_kl", "mnist_score", "mean_confidence", "precision",
    "recall", "density", "coverage", "ndb", "ndb_js", "duplicate_rate", "intra_class_diversity",
    "label_accuracy", "memorisation_ratio",
)


def metrics_for_dvc(result: dict[str, Any]) -> dict[str, Any]:
    """Numbers only (DVC's metrics views and MLflow metrics take numbers): scalars plus the verdict."""
    out = {k: round(float(result[k]), 6) for k in SCALARS if result.get(k) is not None}
    out["collapse_detected"] = int(result["collapse"]["detected"])
    for key in ("modes_captured", "mode_kl"):  # Stacked MNIST results (pipeline/instrument/stacked.py)
        if result.get(key) is not None:
            out[key] = round(float(result[key]), 6)
    if result.get("first_collapse_iteration") is not None:
        out["first_collapse_iteration"] = result["first_collapse_iteration"]
    return out
