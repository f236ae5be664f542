"""The collapse verdict: inter-class (a digit missing or nearly so), intra-class (samples drawn from a few
prototypes), both, or none; plus an imbalance report for skewed but complete digit shares, a severity, a
borderline flag and every check with its value, interval, threshold and margin.

Margins are signed towards safety: positive = on the no-collapse side of the threshold, by that much.
A check is borderline when its interval straddles its threshold, i.e. resampling the same generator's
samples could flip it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Below this share of the threshold (or, for a rate, beyond twice it) a crossed intra-class check is severe.
SEVERE_DUPLICATE_RATE = 0.5
# What crossing a check means, by role.
CROSSING = {"inter-class": "collapse", "intra-class": "collapse", "imbalance": "imbalance", "diagnostic": "low"}


@dataclass
class Check:
    name: str
    role: str  # "inter-class", "intra-class" (decide collapse); "imbalance" or "diagnostic" (reported, never collapse)
    value: float
    interval: list[float]
    op: str  # "<" or ">": the side on which the check is crossed
    threshold: float
    real: str  # what real images score on it at this n

    @property
    def crossed(self) -> bool:
        return self.value < self.threshold if self.op == "<" else self.value > self.threshold

    @property
    def margin(self) -> float:
        return self.value - self.threshold if self.op == "<" else self.threshold - self.value

    @property
    def borderline(self) -> bool:
        lo, hi = self.interval
        return lo < self.threshold < hi

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self), "value": round(float(self.value), 6), "threshold": round(float(self.threshold), 6),
            "margin": round(float(self.margin), 6), "crossed": bool(self.crossed), "borderline": bool(self.borderline),
        }

    def sentence(self) -> str:
        state = "CROSSED" if self.crossed else "ok"
        if self.borderline:
            state += ", borderline"
        lo, hi = self.interval
        return (
            f"[{state}] {self.name} ({self.role}): {self.value:.4g} (95% interval {lo:.4g} - {hi:.4g}); "
            f"{CROSSING[self.role]} when {self.op} {self.threshold:.4g}, "
            f"margin {self.margin:+.4g}; real images at this n: {self.real}"
        )


def _range(real: dict[str, float]) -> str:
    return f"{real['min']:.4g} - {real['max']:.4g}"


def conditional(m: dict[str, Any]) -> bool:
    """Samples drawn for requested digits (a conditional model): measured with per-label accuracy."""
    return m.get("min_label_accuracy") is not None


def _inter_class(m: dict[str, Any], t: dict[str, float], share_real: str, low_digit: int) -> list[Check]:
    """An unconditional model loses a mode when a digit's share falls far below MNIST's. A conditional
    model's shares are set by the digits requested, so there the share only shows (diagnostic) and a mode
    is lost when the samples asked to be a digit are mostly read as another one (per-label accuracy)."""
    share = Check(
        f"smallest digit share / MNIST share (digit {low_digit})", "inter-class", m["min_share_ratio"],
        m["min_share_ratio_interval"], "<", t["share_ratio"], share_real,
    )
    if not conditional(m):
        return [share]
    share.role, share.name = "diagnostic", share.name + ", set by the requested digits"
    return [Check(
        f"smallest per-label accuracy (label {m['min_label_accuracy_label']})", "inter-class",
        m["min_label_accuracy"], m["min_label_accuracy_interval"], "<", t["label_accuracy"],
        "the evaluator's accuracy on real digits (metrics/evaluator.json test_accuracy)",
    ), share]


def checks(m: dict[str, Any], calibration: dict[str, Any]) -> list[Check]:
    t, real = calibration["thresholds"], calibration["real"]
    ratios = m["class_share_ratios"]
    low_digit = min(range(len(ratios)), key=ratios.__getitem__)
    share_real = _range(real["min_share_ratio"])
    return [
        *_inter_class(m, t, share_real, low_digit),
        Check(
            f"smallest digit share / MNIST share (digit {low_digit})", "imbalance", m["min_share_ratio"],
            m["min_share_ratio_interval"], "<", t["imbalance_share_ratio"], share_real,
        ),
        Check("class KL (nats)", "imbalance", m["class_kl"], m["class_kl_interval"], ">", t["class_kl"],
              _range(real["class_kl"])),
        # Per predicted digit, so misread prototypes pool into one class and inflate it, and blur shrinks
        # every feature distance (sigma 1.5 gives ~0.6 on diverse digits): shown, but it does not decide.
        Check("intra-class diversity", "diagnostic", m["intra_class_diversity"], m["intra_class_diversity_interval"],
              "<", t["intra_class_diversity"], _range(real["intra_class_diversity"])),
        Check("near-duplicate rate", "intra-class", m["duplicate_rate"], m["duplicate_rate_interval"], ">",
              t["duplicate_rate"], _range(real["duplicate_rate"])),
        Check("neighbour spread", "intra-class", m["neighbour_spread"], m["neighbour_spread_interval"], "<",
              t["neighbour_spread"], _range(real["neighbour_spread"])),
    ]


def _severity(crossed: list[Check], m: dict[str, Any], t: dict[str, float]) -> str:
    if not crossed:
        return "none"
    severe = (
        m["min_share_ratio"] < t["missing_share_ratio"]
        or m["duplicate_rate"] > SEVERE_DUPLICATE_RATE
        # Intra-class checks, and a conditional model's per-label accuracy (its only inter-class check).
        or any(c.op == "<" and c.value < c.threshold / 2 for c in crossed
               if c.role == "intra-class" or conditional(m))
    )
    return "severe" if severe else "moderate"


def _lost_labels(m: dict[str, Any], t: dict[str, float]) -> list[str]:
    if not conditional(m):
        return []
    return [
        f"{k} (read as {k} in {acc:.0%}, mostly as {m['label_read_as'][k]})"
        for k, acc in enumerate(m["label_accuracy_per_label"]) if acc is not None and acc < t["label_accuracy"]
    ]


def judge(m: dict[str, Any], calibration: dict[str, Any]) -> dict[str, Any]:
    """`m` holds the metrics and their intervals (evaluation.measure); `calibration` the thresholds."""
    t = calibration["thresholds"]
    all_checks = checks(m, calibration)
    deciding = [c for c in all_checks if c.role in ("inter-class", "intra-class")]
    crossed = [c for c in deciding if c.crossed]
    inter = any(c.role == "inter-class" for c in crossed)
    intra = any(c.role == "intra-class" for c in crossed)
    kinds = {(False, False): "none", (True, False): "inter-class", (False, True): "intra-class"}
    kind = kinds.get((inter, intra), "both")
    ratios = m["class_share_ratios"]
    low, high = (min(range(10), key=ratios.__getitem__), max(range(10), key=ratios.__getitem__))
    imbalance_checks = [c for c in all_checks if c.role == "imbalance"]
    weak = [d for d, r in enumerate(ratios) if r < t["share_ratio"]]
    evidence = [c.sentence() for c in all_checks]
    if weak:
        listed = ", ".join(
            f"{d} ({m['class_shares'][d]:.1%} of samples, {ratios[d]:.2f} x its MNIST share)" for d in weak
        )
        evidence.insert(0, f"{len(weak)} of 10 digits are missing or far under-represented: {listed}")
    lost = _lost_labels(m, t)
    if lost:
        evidence.insert(0, f"{len(lost)} of 10 requested digits are drawn as another digit: {', '.join(lost)}")
    evidence.append(f"support size: {m['support_size']['text']}")
    return {
        "detected": kind != "none",
        "kind": kind,
        "evidence": evidence,
        "severity": _severity(crossed, m, t),
        "borderline": bool(any(c.borderline for c in deciding)),
        "imbalance": {
            "detected": bool(any(c.crossed for c in imbalance_checks)),
            "smallest_share_ratio": round(ratios[low], 6),
            "smallest_digit": low,
            "largest_share_ratio": round(ratios[high], 6),
            "largest_digit": high,
            "class_kl": round(m["class_kl"], 6),
            "class_kl_interval": m["class_kl_interval"],
        },
        "checks": [c.as_dict() for c in all_checks],
        "conditional": conditional(m),
    }
