"""Replica arithmetic on known answers: Wilson intervals, medians and IQRs, and when a report may call
one variant better than another."""

from __future__ import annotations

import math

import pytest

from pipeline.instrument.rates import (
    Rate, compare_sentence, intervals_separate, median_iqr, rate_of, wilson_interval,
)


def _wilson_closed_form(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson (1927)'s score interval written out, as an independent check of the library call."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


# Published 95% Wilson intervals for n = 8 (e.g. R's binom::binom.confint(x, 8, methods = "wilson"),
# and Newcombe 1998, Statistics in Medicine 17, the score method): 0/8 -> [0, 0.3244],
# 6/8 -> [0.4093, 0.9285], 8/8 -> [0.6756, 1].
@pytest.mark.parametrize("k, lo, hi", [(0, 0.0, 0.3244), (6, 0.4093, 0.9285), (8, 0.6756, 1.0)])
def test_wilson_interval_matches_published_values_for_eight_replicas(k, lo, hi):
    got = wilson_interval(k, 8)
    assert got == pytest.approx((lo, hi), abs=5e-5)
    assert got == pytest.approx(_wilson_closed_form(k, 8), abs=1e-12)


def test_wilson_interval_of_no_replicas_is_none_and_bad_counts_are_refused():
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_rate_counts_diverged_replicas_apart_from_collapsed_and_clean():
    rate = rate_of([True, False, None, True, False, False])
    assert (rate.collapsed, rate.evaluated, rate.diverged) == (2, 5, 1)
    assert rate.value == pytest.approx(0.4)
    assert rate.interval == pytest.approx(_wilson_closed_form(2, 5), abs=1e-12)
    assert rate.describe() == "2/5 [0.12, 0.77], 1 diverged"
    all_diverged = rate_of([None, None])
    assert (all_diverged.value, all_diverged.interval) == (None, None)
    assert all_diverged.describe() == "no replica evaluated, 2 diverged"


def test_median_and_iqr_on_known_answers():
    # numpy's default (linear) quantiles: Q1 = 2, Q3 = 4 for 1..5; Q1 = 1.75, Q3 = 3.25 for 1..4.
    assert median_iqr([5.0, 1.0, 3.0, 2.0, 4.0]) == (3.0, 2.0)
    assert median_iqr([1.0, 2.0, 3.0, 4.0]) == (2.5, 1.5)
    assert median_iqr([7.0]) == (7.0, 0.0)
    assert median_iqr([None, 2.0, float("nan"), 4.0]) == (3.0, 1.0)  # absent values are left out
    assert median_iqr([]) == (None, None)


def test_one_variant_beats_another_only_when_intervals_separate():
    wgan, vanilla = Rate(0, 8), Rate(6, 8)
    assert intervals_separate(wgan, vanilla)
    assert compare_sentence("wgan-gp", wgan, "vanilla", vanilla) == (
        "wgan-gp collapsed in 0/8 replicas [0.00, 0.32], vanilla in 6/8 [0.41, 0.93]: the intervals do not "
        "overlap, so wgan-gp collapses less often than vanilla."
    )
    # 1/3 against 3/3 looks like a big gap, but three replicas cannot establish it.
    few_a, few_b = Rate(1, 3), Rate(3, 3)
    assert not intervals_separate(few_a, few_b)
    sentence = compare_sentence("wgan", few_a, "vanilla", few_b)
    assert sentence.startswith("wgan collapsed in 1/3 replicas [0.06, 0.79], vanilla in 3/3 [0.44, 1.00]")
    assert "not established" in sentence
    assert not intervals_separate(Rate(0, 0, diverged=3), vanilla)
    assert "nothing to compare" in compare_sentence("a", Rate(0, 0, diverged=3), "b", vanilla)
