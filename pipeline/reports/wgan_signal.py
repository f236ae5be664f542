"""The seed's WGAN claim as a number: does the critic's W-estimate track sample quality?

Quality is FLD from the in-training collapse check (lower is closer to MNIST). If the W-estimate is the
interpretable signal the post says it is, the two fall together: a positive Spearman rank correlation
over training. Spearman, not Pearson, because the claim is about ordering, not about a linear law.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_POINTS = 3  # below this a rank correlation says nothing
EXACT_BELOW = 9  # 8! = 40,320 pairings still enumerate in a blink; from 9 points on, scipy's approximation
STRONG_RHO, ALPHA = 0.5, 0.05


@dataclass(frozen=True)
class SignalCorrelation:
    rho: float | None  # None when there are too few readings, or one series is constant
    p_value: float | None
    n_points: int

    @property
    def verdict(self) -> str:
        if self.rho is None:
            return "untestable"
        if self.rho >= STRONG_RHO and self.p_value is not None and self.p_value < ALPHA:
            return "supported"
        return "weak" if self.rho > 0 else "not supported"


def align(w_estimate: pd.DataFrame, fld: pd.DataFrame) -> pd.DataFrame:
    """(step, w_estimate, fld) on the steps both series have; a repeated step keeps its last reading
    (a resumed run can log a step twice)."""
    w = w_estimate[["step", "w_estimate"]].drop_duplicates("step", keep="last")
    f = fld[["step", "fld"]].drop_duplicates("step", keep="last")
    return w.merge(f, on="step", how="inner").dropna().sort_values("step", ignore_index=True)


def _exact_p_value(w: np.ndarray, fld: np.ndarray) -> float:
    """Two-sided p-value of Spearman's rho from every re-pairing of the readings. scipy's spearmanr
    p-value is a t approximation that calls a perfect ranking of 3 points certain (p = 0); a short
    training run has few checks, so below EXACT_BELOW points the test enumerates all n! pairings."""
    from scipy.stats import permutation_test, rankdata

    y = rankdata(fld)
    y = y - y.mean()

    def rank_correlation(x: np.ndarray, axis: int = -1) -> np.ndarray:
        x = x - x.mean(axis=axis, keepdims=True)  # ranks, so Pearson's r on them is Spearman's rho
        return (x * y).sum(axis) / np.sqrt((x * x).sum(axis) * (y * y).sum())

    result = permutation_test((rankdata(w),), rank_correlation, permutation_type="pairings",
                              vectorized=True, n_resamples=np.inf)
    return float(result.pvalue)


def correlation(aligned: pd.DataFrame) -> SignalCorrelation:
    from scipy.stats import spearmanr

    n = len(aligned)
    if n < MIN_POINTS or aligned["w_estimate"].nunique() < 2 or aligned["fld"].nunique() < 2:
        return SignalCorrelation(None, None, n)
    w, fld = aligned["w_estimate"].to_numpy(), aligned["fld"].to_numpy()
    result = spearmanr(w, fld)
    rho = float(result.statistic)
    p = _exact_p_value(w, fld) if n < EXACT_BELOW else float(result.pvalue)
    return SignalCorrelation(None if math.isnan(rho) else rho, None if math.isnan(p) else p, n)


def describe(c: SignalCorrelation) -> str:
    """One sentence a reader can act on (the verdict itself is `c.verdict`)."""
    if c.rho is None:
        return (
            f"Only {c.n_points} training step(s) have both a W-estimate and an FLD reading (or one series is "
            f"constant); at least {MIN_POINTS} are needed. Train longer or check more often "
            "(`train.eval_every` in params.yaml)."
        )
    numbers = f"Spearman ρ = {c.rho:+.2f}, p = {c.p_value:.2g}, over {c.n_points} training checks"
    if c.verdict == "supported":
        return f"The critic's W-estimate falls as FLD falls ({numbers})."
    if c.verdict == "weak":
        return (
            f"The W-estimate and FLD move together only loosely ({numbers}); "
            f"the claim needs ρ ≥ {STRONG_RHO} with p < {ALPHA}."
        )
    return f"The W-estimate does not fall with FLD ({numbers})."
