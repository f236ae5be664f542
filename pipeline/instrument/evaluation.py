"""The collapse instrument: every metric of a sample set, in the order `ganpipe evaluate` prints them.

`measure` works on evaluator embeddings, so the calibrate stage can run it on real subsets (whose
features are already in the reference) and `evaluate_images` on generated images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.instrument.evaluator import Embedding, MnistCNN, embed
from scipy.stats import binomtest, norm

from pipeline.common.errors import GanpipeError
from pipeline.instrument.metrics import (
    classes, diversity, duplicates, frechet, memorisation, ndb, prdc, spread, verdict,
)
from pipeline.instrument.metrics.neighbours import kth_distances
from pipeline.common.params import EvaluateParams
from pipeline.instrument.reference import Reference

def prdc_real_subset(ref: Reference, n: int, seed: int) -> np.ndarray:
    """Indices (into the training set) of the fixed reference subset that precision/recall/density/coverage
    compare against: reference images, never baseline-pool ones."""
    index = ref.reference_index
    return index[np.random.default_rng(seed).permutation(len(index))[: min(n, len(index))]]


def prdc_reference(ref: Reference, settings: EvaluateParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The real PRDC subset's features and their k-NN radii (computed once, reused for every sample set)."""
    real = ref.train_features[prdc_real_subset(ref, settings.n_samples, seed)]
    return real, kth_distances(real, real, settings.nearest_k, exclude_self=True)


def _wilson(successes: int, n: int, confidence: float) -> list[float]:
    if not n:
        return [0.0, 0.0]
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return [round(float(ci.low), 6), round(float(ci.high), 6)]


def _per_label(predicted: np.ndarray, requested: np.ndarray, conf: float) -> dict[str, Any]:
    """A conditional model's per-label accuracy (asked for digit k, how often does it draw k), the worst
    label with the Wilson interval of its accuracy, and the digit each label's samples mostly read as."""
    asked, hits, read_as = classes.per_label(predicted, np.asarray(requested, dtype=np.int64))
    accuracy = np.where(asked > 0, hits / np.maximum(asked, 1), np.nan)
    worst = int(np.nanargmin(accuracy))
    return {
        "label_accuracy_per_label": [None if np.isnan(a) else round(float(a), 6) for a in accuracy],
        "label_read_as": [int(d) if a else None for d, a in zip(read_as, asked)],
        "min_label_accuracy": float(accuracy[worst]),
        "min_label_accuracy_label": worst,
        "min_label_accuracy_interval": _wilson(int(hits[worst]), int(asked[worst]), conf),
    }


def measure(
    emb: Embedding,
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
    """All metrics of one sample set, each with its uncertainty (without the verdict).
    `prdc_real` is `prdc_reference(...)`, passed in by callers that measure many sets."""
    n = len(emb.features)
    conf, draws = settings.interval_confidence, settings.bootstrap_draws
    hist = classes.histogram(emb.predicted)
    counts = np.bincount(emb.predicted, minlength=classes.N_CLASSES)
    ratios = classes.share_ratios(hist, ref.class_hist)
    low = int(ratios.argmin())
    kl = classes.class_kl(hist, ref.class_hist)
    boot_hists = classes.bootstrap_counts(counts, draws, seed)
    real_prdc, real_radii = prdc_real or prdc_reference(ref, settings, seed)
    div_mean, div_se = diversity.per_class_with_se(emb.features, emb.predicted, seed)
    div_ratio = diversity.diversity_ratio(div_mean, ref.diversity_per_class, counts)
    div_half = norm.ppf(0.5 + conf / 2) * diversity.diversity_ratio_se(div_se, ref.diversity_per_class, counts)
    has_duplicate, pairs = duplicates.duplicate_stats(emb.features, duplicate_threshold)
    nn, random_pair = spread.spread_parts(emb.features, seed)
    kid_mean, kid_std = frechet.kid(
        emb.features, ref.reference_features,
        subsets=settings.kid_subsets, subset_size=settings.kid_subset_size, seed=seed,
    )
    out: dict[str, Any] = {
        "n_samples": n,
        "fld": frechet.fld(emb.features, ref.mu, ref.cov),
        "kid": kid_mean,
        "kid_std": kid_std,
        "class_coverage": classes.class_coverage(hist, ref.class_hist, share_ratio_threshold),
        "class_kl": kl,
        "class_kl_interval": classes.interval(classes.class_kl_many(boot_hists, ref.class_hist), conf, kl),
        "min_share_ratio": float(ratios.min()),
        # The interval of the smallest digit's own ratio: the bootstrap of a minimum is biased low.
        "min_share_ratio_interval": classes.interval(boot_hists[:, low] / ref.class_hist[low], conf),
        "mnist_score": classes.mnist_score(emb.probs),
        "mean_confidence": classes.mean_confidence(emb.probs),
        **prdc.prdc(real_prdc, emb.features, settings.nearest_k, real_radii),
        **ndb.ndb(ndb.assign(emb.features, ref.ndb_centres), ref.ndb_shares, ref.n_reference, settings.ndb_alpha),
        "duplicate_rate": float(has_duplicate.mean()) if n else 0.0,
        "duplicate_rate_interval": _wilson(int(has_duplicate.sum()), n, conf),
        "support_size": duplicates.support_size(n, pairs, conf),
        "intra_class_diversity": div_ratio,
        "intra_class_diversity_interval": [
            round(max(div_ratio - div_half, 0.0), 6), round(div_ratio + div_half, 6),
        ],
        "neighbour_spread": spread.neighbour_spread(nn, random_pair),
        "neighbour_spread_interval": spread.spread_interval(nn, random_pair, draws, conf, seed),
        "label_accuracy": None if requested is None else classes.label_accuracy(emb.predicted, requested),
        "memorisation_ratio": None,
        "class_shares": hist.round(6).tolist(),
        "class_share_ratios": ratios.round(6).tolist(),
        "intra_class_diversity_per_class": [
            None if np.isnan(s) else round(float(s / r), 6) for s, r in zip(div_mean, ref.diversity_per_class)
        ],
    }
    if requested is not None:
        out.update(_per_label(emb.predicted, requested, conf))
    if with_memorisation:
        nn_train = memorisation.nearest_train_distances(emb.features, ref.train_features)
        out["memorisation_ratio"] = memorisation.memorisation_ratio(nn_train, ref.test_nn_train)
    return out


def measure_calibrated(
    emb: Embedding,
    requested: np.ndarray | None,
    ref: Reference,
    calibration: dict[str, Any],
    settings: EvaluateParams,
    seed: int,
) -> dict[str, Any]:
    """`measure` with the two thresholds the calibration fixes (near-duplicate distance, coverage share)."""
    return measure(
        emb,
        requested,
        ref,
        settings,
        duplicate_threshold=calibration["duplicate_distance"],
        share_ratio_threshold=calibration["thresholds"]["share_ratio"],
        seed=seed,
    )


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
    return evaluate_embedding(embed(model, images), requested, ref, calibration, settings, seed)


def evaluate_embedding(
    emb: Embedding,
    requested: np.ndarray | None,
    ref: Reference,
    calibration: dict[str, Any],
    settings: EvaluateParams,
    seed: int,
) -> dict[str, Any]:
    """`evaluate_images` for images already embedded (the tests' ladder reuses one embedding many times)."""
    if calibration["n_samples"] != len(emb.features):
        raise GanpipeError(
            f"the verdict was calibrated for {calibration['n_samples']} samples but {len(emb.features)} were given; "
            "thresholds depend on n. Evaluate exactly evaluate.n_samples images, or let `ganpipe evaluate` "
            "calibrate for this count (it does so when the counts differ)."
        )
    metrics = measure_calibrated(emb, requested, ref, calibration, settings, seed)
    real_fld = calibration["real"]["fld"]
    metrics["fld_real_at_n"] = {"mean": real_fld["mean"], "std": real_fld["std"]}  # FLD's own small-n bias
    metrics["collapse"] = verdict.judge(metrics, calibration)
    metrics["verdict_samples"] = len(emb.features)
    return metrics


def evaluate_beyond_pool(
    images: np.ndarray,
    requested: np.ndarray | None,
    model: MnistCNN,
    ref: Reference,
    calibration: dict[str, Any],
    settings: EvaluateParams,
    seed: int,
    phase=lambda text: None,
) -> dict[str, Any]:
    """More images than real data can calibrate (calibration is for the largest honest size, half the
    unseen pool): every metric on all images, the verdict on a seeded random subset of the calibrated size.

    Why not judge all of them: near-duplicate rate and neighbour spread move with n (more samples, closer
    neighbours), so thresholds from real sets of 10,000 would misjudge 50,000, and there are no 50,000 unseen
    real images to measure instead. `verdict_samples` says how many the verdict saw; FLD's real value at n
    (`fld_real_at_n`) is null for the same reason. `phase` receives a line per step (progress for the CLI)."""
    cap = calibration["n_samples"]
    phase(f"embedding {len(images)} samples")
    emb = embed(model, images)
    n = len(emb.features)
    if n <= cap:
        raise ValueError(f"{n} samples fit the calibration ({cap}); use evaluate_images")
    phase(f"measuring all {n} samples")
    metrics = measure_calibrated(emb, requested, ref, calibration, settings.model_copy(update={"n_samples": n}), seed)
    phase(f"judging a random {cap} of them against real sets of {cap}")
    pick = np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))
    judged = evaluate_embedding(
        Embedding(emb.features[pick], emb.probs[pick]),
        None if requested is None else requested[pick],
        ref,
        calibration,
        settings.model_copy(update={"n_samples": cap}),
        seed,
    )
    metrics["fld_real_at_n"] = None
    metrics["collapse"] = judged["collapse"]
    metrics["verdict_samples"] = cap
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


def first_full_coverage_step(curve) -> int | None:
    """The first in-training check at which all ten digits held their share (class_coverage = 10);
    None when no check ever covered all ten."""
    if curve is None or len(curve) == 0 or "class_coverage" not in curve:
        return None
    covered = (curve["class_coverage"] >= 10).to_numpy()
    return int(curve["step"].to_numpy()[np.argmax(covered)]) if covered.any() else None


def first_collapse_step(curve) -> int | None:
    """The training iteration at which inter-class collapse first appeared in the in-training checks.

    Collapse means losing digits the model had: the first check with class_coverage < 10 after the
    first full cover (`first_full_coverage_step`). None when the model never covered all ten digits
    (it never had them to lose; see first_full_coverage_iteration) or never lost one afterwards.
    """
    full = first_full_coverage_step(curve)
    if full is None:
        return None
    steps = curve["step"].to_numpy()
    lost = np.flatnonzero((steps > full) & (curve["class_coverage"] < 10).to_numpy())
    return int(steps[lost[0]]) if len(lost) else None


SCALARS = (
    "n_samples", "fld", "kid", "class_coverage", "class_kl", "mnist_score", "mean_confidence", "precision",
    "recall", "density", "coverage", "ndb", "ndb_js", "duplicate_rate", "intra_class_diversity",
    "label_accuracy", "memorisation_ratio", "kid_std", "min_share_ratio", "neighbour_spread", "min_label_accuracy",
)


def metrics_for_dvc(result: dict[str, Any]) -> dict[str, Any]:
    """Numbers only (DVC's metrics views and MLflow metrics take numbers): scalars plus the verdict."""
    out = {k: round(float(result[k]), 6) for k in SCALARS if result.get(k) is not None}
    out["collapse_detected"] = int(result["collapse"]["detected"])
    out["collapse_borderline"] = int(result["collapse"]["borderline"])
    for key in ("modes_captured", "mode_kl"):  # Stacked MNIST results (pipeline/instrument/stacked.py)
        if result.get(key) is not None:
            out[key] = round(float(result[key]), 6)
    out.update(flat_mode_counts(result))
    for key in ("first_full_coverage_iteration", "first_collapse_iteration"):
        if result.get(key) is not None:
            out[key] = result[key]
    return out


def flat_mode_counts(result: dict[str, Any]) -> dict[str, float]:
    """A Stacked MNIST result's four ways of counting (pipeline/instrument/stacked.py count_ways) as flat numbers
    for DVC's metrics and MLflow: modes_captured_<way>, mode_kl_<way> and counter_agreement_<sampling>."""
    counted = result.get("mode_count_ways") or {"ways": {}, "agreement": {}}
    out = {f"{key}_{name}": round(float(value), 6) for name, count in counted["ways"].items() for key, value in count.items()}
    out.update({f"counter_agreement_{sampling}": round(float(rate), 6) for sampling, rate in counted["agreement"].items()})
    return out
