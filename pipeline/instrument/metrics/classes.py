"""Metrics from the evaluator's class predictions: which digits the samples show, and how clearly."""

from __future__ import annotations

import numpy as np

N_CLASSES = 10


def histogram(predicted: np.ndarray) -> np.ndarray:
    """Share of samples predicted as each digit, (10,) summing to 1."""
    counts = np.bincount(predicted, minlength=N_CLASSES).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def share_ratios(hist: np.ndarray, real_hist: np.ndarray) -> np.ndarray:
    """Each digit's share of the samples divided by its share of real MNIST (1.0 = as in MNIST)."""
    return hist / real_hist


def class_coverage(hist: np.ndarray, real_hist: np.ndarray, min_share_ratio: float) -> int:
    """How many digits hold a real share: at least `min_share_ratio` of their share in MNIST."""
    return int((share_ratios(hist, real_hist) >= min_share_ratio).sum())


def class_kl(hist: np.ndarray, real_hist: np.ndarray) -> float:
    """KL(samples || real) of the digit histograms, in nats. 0 = MNIST's proportions; always finite
    because every digit has a real share; one digit only = about ln 10 = 2.3."""
    present = hist > 0
    return float(np.sum(hist[present] * np.log(hist[present] / real_hist[present])))


def mnist_score(probs: np.ndarray) -> float:
    """The Inception Score with the MNIST evaluator: exp E[KL(p(y|x) || p(y))], between 1 and 10.
    High when each sample is a confident digit and the digits are varied."""
    if len(probs) == 0:
        return float("nan")
    p = probs.astype(np.float64)
    marginal = p.mean(0, keepdims=True)
    kl = np.sum(p * (np.log(p + 1e-12) - np.log(marginal + 1e-12)), axis=1)
    return float(np.exp(kl.mean()))


def mean_confidence(probs: np.ndarray) -> float:
    """Mean top-class probability: how much samples look like some digit (real MNIST: about 0.99)."""
    return float(probs.max(1).mean()) if len(probs) else float("nan")


def label_accuracy(predicted: np.ndarray, requested: np.ndarray) -> float:
    """Share of conditional samples that the evaluator reads as the digit they were asked to be."""
    return float((predicted == requested).mean())


def per_label(predicted: np.ndarray, requested: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per requested digit k: how many samples were asked to be k, how many of them read as k, and the
    digit they most often read as (k itself when it is followed). A label never requested has count 0."""
    asked = np.bincount(requested, minlength=N_CLASSES)
    confusion = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)  # [requested, predicted]
    np.add.at(confusion, (requested, predicted), 1)
    return asked, np.diag(confusion).copy(), confusion.argmax(1)


def bootstrap_counts(counts: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """Digit histograms (draws, 10) of sample sets resampled with replacement from these counts: the
    multinomial bootstrap over samples, which needs no per-sample data."""
    n = int(counts.sum())
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, counts / max(n, 1), size=draws) / max(n, 1)


def interval(values: np.ndarray, confidence: float, estimate: float | None = None) -> list[float]:
    """The percentile interval of bootstrap values. Given the estimate, the interval is first shifted by
    the bootstrap's bias (mean of values - estimate) and kept >= 0: class KL's plug-in estimate is biased
    upwards, and its bootstrap twice so, which would put the interval wholly above a near-zero value."""
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    if estimate is not None:
        bias = float(np.mean(values)) - estimate
        lo, hi = max(lo - bias, 0.0), max(hi - bias, 0.0)
    return [round(float(lo), 6), round(float(hi), 6)]


def class_kl_many(hists: np.ndarray, real_hist: np.ndarray) -> np.ndarray:
    """class_kl of each row of (B, 10) histograms."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(hists > 0, hists * np.log(hists / real_hist), 0.0)
    return terms.sum(1)
