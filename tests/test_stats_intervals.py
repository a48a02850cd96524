"""The scipy-based Student-t quantile and intervals against values known in closed form.

lab.stats.intervals replaced a hand-written incomplete beta function and Newton/bisection
quantile search by scipy.stats.t; these reference values show the replacement is right.
"""

from __future__ import annotations

import math

import pytest

from lab.stats import diff_ci, mean_ci, t_quantile, welch_df


@pytest.mark.parametrize("p", [0.6, 0.9, 0.95, 0.975, 0.995, 0.999])
def test_t_quantile_closed_forms(p):
    # df = 1 is the Cauchy distribution: t = tan(pi (p - 1/2)).
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-13)
    # df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so t = (2p - 1) / sqrt(2 p (1 - p)).
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-13)
    # Symmetry.
    assert t_quantile(1 - p, 3.7) == pytest.approx(-t_quantile(p, 3.7), rel=1e-12)


def test_t_quantile_known_values():
    # t(0.975, 2) = 0.95 / sqrt(0.04875) = 4.302652729749464 (exact to 16 digits; the
    # rounded textbook value is 4.303).
    assert t_quantile(0.975, 2) == pytest.approx(4.302652729749464, abs=1e-12)
    # t(0.975, 1) = tan(0.475 pi) = 12.706204736174705 (mpmath, 40 digits).
    assert t_quantile(0.975, 1) == pytest.approx(12.706204736174705, abs=1e-12)
    # Welch's df of [1, 2, 3] vs [2, 4, 6, 8] is 216/53; mpmath inverts the t CDF there at
    # 2.7562848743595723.
    assert t_quantile(0.975, 216 / 53) == pytest.approx(2.7562848743595723, abs=1e-12)
    # df = inf is the normal quantile; p = 1/2 is the median.
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959963984540054, abs=1e-12)
    assert t_quantile(0.5, 5) == 0.0


def test_t_quantile_bad_input():
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)
    with pytest.raises(ValueError):
        t_quantile(0.975, -1.5)
    with pytest.raises(ValueError):
        t_quantile(1.5, 3)
    assert t_quantile(1.0, 3) == math.inf and t_quantile(0.0, 3) == -math.inf


def test_welch_df_known_pair():
    # va = 1/3, vb = 5/3: df = 2^2 / ((1/3)^2 / 2 + (5/3)^2 / 3) = 216/53.
    assert welch_df([1, 2, 3], [2, 4, 6, 8]) == pytest.approx(216 / 53, rel=1e-14)
    # Equal sizes and variances: df = 2 (n - 1).
    assert welch_df([0, 1, 2, 3], [10, 11, 12, 13]) == pytest.approx(6.0, rel=1e-14)
    assert math.isnan(welch_df([1.0], [2.0, 3.0]))
    assert math.isnan(welch_df([1.0, 1.0], [2.0, 2.0]))


def test_mean_ci_two_seeds_uses_cauchy_quantile():
    # n = 2: half-width = t(0.975, 1) * s / sqrt(2), with s = |x1 - x2| / sqrt(2).
    mean, std, low, high = mean_ci([0.3, 0.5])
    half = math.tan(0.475 * math.pi) * 0.1
    assert mean == pytest.approx(0.4) and std == pytest.approx(0.2 / math.sqrt(2))
    assert (low, high) == pytest.approx((0.4 - half, 0.4 + half), rel=1e-13)


def test_diff_ci_other_confidence():
    # 90%: t(0.95, 216/53) = 2.1205541665 (mpmath), se = sqrt(2).
    diff, low, high = diff_ci([1, 2, 3], [2, 4, 6, 8], confidence=0.9)
    assert diff == 3.0
    assert high - diff == pytest.approx(t_quantile(0.95, 216 / 53) * math.sqrt(2), rel=1e-14)
    assert t_quantile(0.95, 216 / 53) == pytest.approx(2.1205541665, abs=1e-9)
