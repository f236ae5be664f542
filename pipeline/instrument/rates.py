"""Replica arithmetic: collapse rates with their 95% Wilson interval, medians and IQRs, and the sentence
that says whether one variant's rate is established as different from another's.

Pure functions on plain numbers, so the evaluate stage, the run report and `ganpipe compare` all state a
rate the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy.stats import binomtest

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Rate:
    """k of n replicas collapsed (diverged replicas are not in n), with the Wilson interval of k/n."""

    collapsed: int
    evaluated: int
    diverged: int = 0

    @property
    def value(self) -> float | None:
        return self.collapsed / self.evaluated if self.evaluated else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.collapsed, self.evaluated)

    def describe(self) -> str:
        """'6/8 [0.41, 0.93]', with the diverged replicas named apart."""
        if not self.evaluated:
            text = "no replica evaluated"
        else:
            lo, hi = self.interval
            text = f"{self.collapsed}/{self.evaluated} [{lo:.2f}, {hi:.2f}]"
        return text + (f", {self.diverged} diverged" if self.diverged else "")


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial proportion k/n (Wilson 1927); None when n = 0.

    Wilson rather than the normal (Wald) interval: with a handful of replicas and rates near 0 or 1 the
    Wald interval collapses to a point, while Wilson's stays inside [0, 1] and keeps its coverage
    (Brown, Cai & DasGupta 2001, Statistical Science 16(2), section 4).
    """
    if n == 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, n], got k={k}, n={n}")
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def rate_of(verdicts: Iterable[bool | None]) -> Rate:
    """The collapse rate of replicas whose verdict is True (collapsed), False (clean) or None (diverged)."""
    verdicts = list(verdicts)
    evaluated = [v for v in verdicts if v is not None]
    return Rate(collapsed=sum(bool(v) for v in evaluated), evaluated=len(evaluated),
                diverged=len(verdicts) - len(evaluated))


def median_iqr(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Median and interquartile range (numpy's linear interpolation between order statistics) of the
    values that are present; (None, None) when none is. One value has IQR 0."""
    present = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if present.size == 0:
        return None, None
    q1, median, q3 = np.percentile(present, [25, 50, 75])
    return float(median), float(q3 - q1)


def intervals_separate(a: Rate, b: Rate) -> bool:
    """True when both intervals exist and do not overlap: the only case in which a report may say one
    variant collapses more often than the other (a deliberately conservative test; overlapping 95%
    intervals can still hide a real difference, which more replicas would show)."""
    if a.interval is None or b.interval is None:
        return False
    (a_lo, a_hi), (b_lo, b_hi) = a.interval, b.interval
    return a_hi < b_lo or b_hi < a_lo


def compare_sentence(name_a: str, a: Rate, name_b: str, b: Rate) -> str:
    """'wgan collapsed in 0/8 replicas [0.00, 0.32], vanilla in 6/8 [0.41, 0.93]: the intervals do not
    overlap, so wgan collapses less often.' or the same saying the difference is not established."""
    head = f"{name_a} collapsed in {_with_replicas(a)}, {name_b} in {b.describe()}"
    if not a.evaluated or not b.evaluated:
        return head + ": nothing to compare."
    if intervals_separate(a, b):
        lower, higher = (name_a, name_b) if a.value < b.value else (name_b, name_a)
        return head + f": the intervals do not overlap, so {lower} collapses less often than {higher}."
    return head + (
        ": the intervals overlap, so a difference is not established (more replicas would narrow them)."
    )


def _with_replicas(rate: Rate) -> str:
    if not rate.evaluated:
        return rate.describe()
    lo, hi = rate.interval
    tail = f", {rate.diverged} diverged" if rate.diverged else ""
    return f"{rate.collapsed}/{rate.evaluated} replicas [{lo:.2f}, {hi:.2f}]{tail}"
