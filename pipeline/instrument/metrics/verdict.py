"""The collapse verdict: inter-class (digits missing or far under-represented), intra-class (each digit
drawn from a few prototypes), both, or none; with evidence a user can read."""

from __future__ import annotations

from typing import Any


def judge(m: dict[str, Any], calibration: dict[str, Any]) -> dict[str, Any]:
    t, real, n = calibration["thresholds"], calibration["real"], calibration["n_samples"]
    inter: list[str] = []
    intra: list[str] = []
    shares, ratios = m["class_shares"], m["class_share_ratios"]
    weak = [d for d, r in enumerate(ratios) if r < t["share_ratio"]]
    if weak:
        listed = ", ".join(f"{d} ({shares[d]:.1%})" for d in weak)
        inter.append(
            f"{len(weak)} of 10 digits are missing or far under-represented: {listed}; a digit needs at least "
            f"{t['share_ratio']:.2f} x its MNIST share (real subsets of {n} never fall below "
            f"{real['min_share_ratio']['min']:.2f} x)"
        )
    if m["class_kl"] > t["class_kl"]:
        inter.append(
            f"the digit histogram is far from MNIST's: class KL {m['class_kl']:.3f} nats > threshold "
            f"{t['class_kl']:.3f} (real subsets: at most {real['class_kl']['max']:.4f})"
        )
    if m["intra_class_diversity"] < t["intra_class_diversity"]:
        intra.append(
            f"samples of the same digit are too alike: intra-class diversity {m['intra_class_diversity']:.2f} x "
            f"MNIST's < threshold {t['intra_class_diversity']:.2f} (real subsets: at least "
            f"{real['intra_class_diversity']['min']:.2f})"
        )
    if m["duplicate_rate"] > t["duplicate_rate"]:
        support = m.get("support_size")
        support_txt = f"; birthday-paradox support estimate about {support:,.0f} distinct images" if support else ""
        intra.append(
            f"{m['duplicate_rate']:.1%} of samples have a near-duplicate > threshold {t['duplicate_rate']:.1%} "
            f"(real subsets: at most {real['duplicate_rate']['max']:.2%}){support_txt}"
        )
    kind = {(False, False): "none", (True, False): "inter-class", (False, True): "intra-class"}.get(
        (bool(inter), bool(intra)), "both"
    )
    return {"detected": kind != "none", "kind": kind, "evidence": inter + intra}
