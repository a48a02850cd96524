"""Student-t interval of a mean and Welch's t-interval of a difference of means.

Quantiles come from ``scipy.stats.t`` (df may be fractional, as Welch's df is; df = inf gives
the normal quantile).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy.stats import t as student_t

NAN = float("nan")

Values = Sequence[float] | np.ndarray


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution with df > 0 degrees of freedom."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    if not df > 0:
        raise ValueError(f"df must be positive, got {df}")
    return float(student_t.ppf(p, df))


def _array(values: Values) -> np.ndarray:
    return np.asarray(list(values), dtype=float)


def _var(x: np.ndarray) -> float:
    """Sample variance (ddof=1), exactly 0 for identical values (numpy leaves ~1e-33 there,
    which would turn a point interval into a spurious one)."""
    if np.all(x == x[0]):
        return 0.0
    return float(x.var(ddof=1))


def _two_sided(confidence: float) -> float:
    return 1.0 - (1.0 - confidence) / 2.0


def mean_ci(values: Values, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, std (ddof=1), low, high): Student-t interval of the mean; nan where n < 2."""
    x = _array(values)
    n = x.size
    if n == 0:
        return NAN, NAN, NAN, NAN
    mean = float(x.mean())
    if n < 2:
        return mean, NAN, NAN, NAN
    std = math.sqrt(_var(x))
    if std == 0.0:
        return mean, std, mean, mean
    half = t_quantile(_two_sided(confidence), n - 1) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def welch_df(a: Values, b: Values) -> float:
    """Welch-Satterthwaite degrees of freedom (nan when undefined)."""
    xa, xb = _array(a), _array(b)
    if xa.size < 2 or xb.size < 2:
        return NAN
    va = _var(xa) / xa.size
    vb = _var(xb) / xb.size
    denom = va * va / (xa.size - 1) + vb * vb / (xb.size - 1)
    if denom == 0.0:
        return NAN
    return (va + vb) ** 2 / denom


def diff_ci(a: Values, b: Values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean(b) - mean(a), low, high) with Welch's t-interval; all nan if either n < 2."""
    xa, xb = _array(a), _array(b)
    if xa.size < 2 or xb.size < 2:
        return NAN, NAN, NAN
    diff = float(xb.mean() - xa.mean())
    se2 = _var(xa) / xa.size + _var(xb) / xb.size
    if se2 == 0.0:
        return diff, diff, diff
    half = t_quantile(_two_sided(confidence), welch_df(xa, xb)) * math.sqrt(se2)
    return diff, diff - half, diff + half


def clip_interval(low: float, high: float, bounds: tuple[float, float] | None
                  ) -> tuple[float, float, bool]:
    """The interval cut to the metric's range, and whether it was cut (t-intervals of bounded
    metrics such as accuracies can leave [0, 1] on small, spread-out samples)."""
    if bounds is None or not (math.isfinite(low) and math.isfinite(high)):
        return low, high, False
    lo, hi = max(low, bounds[0]), min(high, bounds[1])
    return lo, hi, (lo, hi) != (low, high)


def proportion_ci(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) interval of a success rate k / n."""
    from scipy.stats import binomtest

    if n == 0:
        return NAN, NAN
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def fisher_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test that two success rates are equal."""
    from scipy.stats import fisher_exact

    return float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


def ratio_ci(a: Values, b: Values, confidence: float = 0.95) -> tuple[float, float, float] | None:
    """(ratio, low, high) of paired positive measurements a over b (e.g. latencies timed in
    the same rounds): the geometric mean of the per-pair ratios with a t-interval on their
    logarithms. None with fewer than 2 pairs."""
    xa, xb = _array(a), _array(b)
    if xa.size != xb.size or xa.size < 2 or np.any(xa <= 0) or np.any(xb <= 0):
        return None
    m, _, lo, hi = mean_ci(np.log(xa / xb), confidence)
    return math.exp(m), math.exp(lo), math.exp(hi)
