"""The collapse instrument on Stacked MNIST samples (N, 3, 28, 28): modes over the joint digit triple,
and the MNIST instrument on each channel.

The joint measure is the papers' (modes_captured, mode_kl over 1,000 triples). Each channel on its own
should look like MNIST, so each channel also gets the full MNIST measurement and verdict; the top-level
MNIST scalars are the mean over the three channels, so a stacked result holds every key an MNIST result
does. A channel verdict sees only that channel's marginal: a generator can pass all three while
covering few triples, which is what the mode count catches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from torch import nn

from pipeline.data.stacked_mnist import CHANNELS, N_MODES, build, mode_ids
from pipeline.instrument.evaluation import SCALARS, evaluate_images, flat_mode_counts
from pipeline.instrument.evaluator import MnistCNN, embed
from pipeline.instrument.metrics import modes
from pipeline.instrument.reference import Reference
from pipeline.common.params import EvaluateParams

# The real-data yardstick draws its triples from a fixed stream, apart from any sampling seed.
REAL_TRIPLES_SEED = 12

# The four ways a Stacked MNIST mode count is made (the preset's mode_count_classifier and mode_count_sampling
# name its headline): which classifier reads each channel (the evaluator, or PacGAN's released counter,
# pipeline/instrument/mode_counter.py), and how G's batch norm normalises while sampling (running statistics,
# or each batch's own, as PacGAN's released sampler does).
CLASSIFIERS = ("evaluator", "released-cnn")
SAMPLINGS = ("running-stats", "batch-stats")


def way(classifier: str, sampling: str) -> str:
    """The name of one way of counting, e.g. released-cnn_batch-stats (a key in metrics and MLflow)."""
    return f"{classifier}_{sampling}"


def channel_digits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """(N, 3, 28, 28) images -> (N, 3) digit the classifier (the evaluator, or the released counter) reads in
    each channel."""
    n = len(images)
    return embed(model, images.reshape(n * CHANNELS, 28, 28)).predicted.reshape(n, CHANNELS)


def quick_modes(model: nn.Module, images: np.ndarray) -> dict[str, float]:
    """The in-training check for Stacked MNIST: modes_captured and mode_kl of a sample batch."""
    counts = modes.mode_counts(channel_digits(model, images))
    return {"modes_captured": modes.modes_captured(counts), "mode_kl": modes.mode_kl(counts)}


def count_ways(draw: Callable[[str], np.ndarray], classifiers: dict[str, nn.Module]) -> dict[str, Any]:
    """Every (classifier, sampling) mode count of one generator: `draw(sampling)` gives its samples drawn that
    way, `classifiers` maps names in CLASSIFIERS to models. Returns {"ways": {way: {modes_captured, mode_kl}},
    "agreement": {sampling: share of samples both classifiers read as the same triple}}."""
    out: dict[str, Any] = {"ways": {}, "agreement": {}}
    for sampling in SAMPLINGS:
        images = draw(sampling)
        read = {}
        for name, model in classifiers.items():
            digits = channel_digits(model, images)
            counts = modes.mode_counts(digits)
            out["ways"][way(name, sampling)] = {"modes_captured": modes.modes_captured(counts),
                                                "mode_kl": round(modes.mode_kl(counts), 6)}
            read[name] = mode_ids(digits)
        if len(read) == 2:
            first, second = read.values()
            out["agreement"][sampling] = round(float(np.mean(first == second)), 6)
    return out


def real_counts_by_classifier(test_predicted: dict[str, np.ndarray], n: int,
                              test_labels: np.ndarray | None = None) -> dict[str, Any]:
    """How each classifier counts n real stacked test images (the papers' protocol at n samples): modes and KL
    per classifier, the share of triples both read alike, and with `test_labels` the share each reads right.
    `test_predicted` maps a classifier's name to its (10000,) digit for every MNIST test image."""
    any_predicted = next(iter(test_predicted.values()))
    triples = build(any_predicted, n, REAL_TRIPLES_SEED).indices
    out: dict[str, Any] = {"n_samples": n}
    read = {}
    for name, predicted in test_predicted.items():
        digits = predicted[triples]
        counts = modes.mode_counts(digits)
        out[name] = {"modes_captured": modes.modes_captured(counts), "mode_kl": round(modes.mode_kl(counts), 6)}
        read[name] = mode_ids(digits)
        if test_labels is not None:
            out[name]["triples_read_right"] = round(float(np.mean(read[name] == mode_ids(test_labels[triples]))), 6)
    if len(read) == 2:
        first, second = read.values()
        out["agreement"] = round(float(np.mean(first == second)), 6)
    return out


@dataclass(frozen=True)
class ModeClassifier:
    """A classifier that reads Stacked MNIST channels for the mode count, with its reading of every MNIST test
    image (the real-data yardstick at the same sample count)."""

    name: str  # one of CLASSIFIERS
    model: nn.Module
    test_predicted: np.ndarray  # (10000,)


def real_mode_baseline(test_predicted: np.ndarray, n: int) -> dict[str, float]:
    """modes_captured and mode_kl of n real stacked test images as a classifier reads them (`test_predicted`:
    its digit for every MNIST test image): what a perfect generator would score at this sample count
    (classifier errors included)."""
    triples = test_predicted[build(test_predicted, n, REAL_TRIPLES_SEED).indices]
    counts = modes.mode_counts(triples)
    return {"modes_captured": modes.modes_captured(counts), "mode_kl": modes.mode_kl(counts)}


def evaluate_stacked(
    images: np.ndarray,
    model: MnistCNN,
    ref: Reference,
    calibration: dict[str, Any],
    settings: EvaluateParams,
    seed: int,
    counter: ModeClassifier | None = None,
) -> dict[str, Any]:
    """Modes over all N samples, read by `counter` (default: the evaluator `model`); the MNIST instrument on
    each channel of the first settings.n_samples samples (the size the verdict is calibrated for)."""
    counter = counter or ModeClassifier("evaluator", model, ref.test_predicted)
    counts = modes.mode_counts(channel_digits(counter.model, images))
    n_channel = min(len(images), settings.n_samples)
    channels = [
        evaluate_images(np.ascontiguousarray(images[:n_channel, c]), None, model, ref, calibration, settings, seed)
        for c in range(CHANNELS)
    ]
    real = real_mode_baseline(counter.test_predicted, len(images))
    result: dict[str, Any] = {
        "dataset": "stacked-mnist",
        "n_samples": len(images),
        "modes_captured": modes.modes_captured(counts),
        "mode_kl": modes.mode_kl(counts),
        "mode_classifier": counter.name,
        "real_modes_captured": real["modes_captured"],
        "real_mode_kl": real["mode_kl"],
        "channel_samples": n_channel,
    }
    for key in SCALARS:
        values = [ch[key] for ch in channels if ch.get(key) is not None]
        if key != "n_samples":
            result[key] = float(np.mean(values)) if values else None
    for key in ("class_shares", "class_share_ratios"):  # digit histograms pooled over the channels
        result[key] = np.mean([ch[key] for ch in channels], axis=0).round(6).tolist()
    result["collapse"] = _combined_verdict(channels)
    result["channels"] = channels
    result["mode_counts"] = counts.tolist()
    assert len(result["mode_counts"]) == N_MODES
    return result


def _combined_verdict(channels: list[dict[str, Any]]) -> dict[str, Any]:
    """Collapse in any channel is collapse of the stacked generator; evidence names the channel."""
    kinds = {ch["collapse"]["kind"] for ch in channels} - {"none"}
    kind = "none" if not kinds else kinds.pop() if len(kinds) == 1 else "both"
    evidence = [f"channel {c}: {e}" for c, ch in enumerate(channels) for e in ch["collapse"]["evidence"]]
    order = ["none", "moderate", "severe"]
    severity = max((ch["collapse"].get("severity", "none") for ch in channels), key=order.index)
    borderline = any(ch["collapse"].get("borderline", False) for ch in channels)
    return {"detected": kind != "none", "kind": kind, "evidence": evidence, "severity": severity, "borderline": borderline}


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """What evaluate.json adds for Stacked MNIST: the median and IQR over replicas of the mode count
    and KL, and the real-data values at the same sample count."""
    out: dict[str, Any] = {}
    for key in ("modes_captured", "mode_kl"):
        values = [r[key] for r in results]
        if values:
            q1, median, q3 = np.percentile(values, [25, 50, 75])
            out[key], out[f"{key}_iqr"] = round(float(median), 6), round(float(q3 - q1), 6)
    if results:
        out["real_modes_captured"] = results[0]["real_modes_captured"]
        out["real_mode_kl"] = round(results[0]["real_mode_kl"], 6)
    # each way of counting (count_ways), its median over replicas
    flat = [flat_mode_counts(r) for r in results]
    out.update({key: round(float(np.median([f[key] for f in flat])), 6) for key in (flat[0] if flat else {})})
    return out


def histogram_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-mode histogram for `dvc plots`: one row per mode (000-999) with the mean share over
    replicas, each replica's share, and the uniform share 0.001."""
    shares = [np.asarray(r["mode_counts"], dtype=np.float64) / max(sum(r["mode_counts"]), 1) for r in results]
    rows = []
    for m in range(N_MODES):
        row = {"mode": m, "samples": round(float(np.mean([s[m] for s in shares])), 6), "uniform": 1.0 / N_MODES}
        row.update({f"replica_{i}": round(float(s[m]), 6) for i, s in enumerate(shares)})
        rows.append(row)
    return rows
