"""Comparisons as tests, and one family-wise error rate over the comparisons of a report.

A comparison is the improvement of setting B over setting A (positive = better, whatever the
direction of the objective): Welch's difference of means, its standard error and degrees of
freedom. Three claims can be made about it, each a one-sided Welch t-test at level alpha/2
(so that a single comparison at alpha = 0.05 decides exactly when its 95% interval does):

* **better**: B improves on A (H0: delta <= 0 rejected); a *worthwhile* gain when also
  delta > min_gain is shown;
* **worse**: B is worse than A (H0: delta >= 0 rejected); a worthwhile loss when
  delta < -min_gain is shown;
* **equivalent**: |delta| < min_gain, by two one-sided tests (TOST: H0 delta <= -min_gain and
  H0 delta >= min_gain both rejected). This is the only way a report may say "matches",
  "the same" or "levels off".

Whatever delta is, at most two of the three nulls (delta <= 0, delta >= 0, |delta| >= min_gain)
are true, so p = 2 * min(p_better, p_worse, p_equivalent) is a valid p-value for "this
comparison makes a false claim". **Holm's step-down procedure** over the p-values of all the
comparisons a report makes keeps the probability of any false claim in the report at or below
alpha (Holm 1979): sorted p_(1) <= ... <= p_(K), comparison (j) is decided while
p_(i) <= alpha / (K - i + 1) for every i <= j. A decided comparison's claims are those whose
one-sided p-values are at or below half its Holm level; an undecided one claims nothing, and
the report says what would decide it (:func:`seeds_for_power`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from scipy.special import stdtr
from scipy.stats import nct
from scipy.stats import t as student_t

from lab.stats.intervals import t_quantile


@dataclass(frozen=True)
class Comparison:
    """Improvement of `b` over `a` (labels), from per-seed values, oriented by `sign` (+1: higher
    is better)."""

    a: str
    b: str
    values_a: tuple[float, ...]
    values_b: tuple[float, ...]
    sign: float
    margin: float  # the minimum worthwhile gain, > 0
    key: str = ""  # names the comparison in a family (defaults to "a -> b")

    @property
    def name(self) -> str:
        return self.key or f"{self.a} -> {self.b}"

    @property
    def n(self) -> tuple[int, int]:
        return len(self.values_a), len(self.values_b)

    @cached_property
    def diff(self) -> float:
        if not self.values_a or not self.values_b:
            return math.nan
        return self.sign * (_mean(self.values_b) - _mean(self.values_a))

    @cached_property
    def se(self) -> float:
        na, nb = self.n
        if na < 2 or nb < 2:
            return math.nan
        return math.sqrt(_var(self.values_a) / na + _var(self.values_b) / nb)

    @cached_property
    def df(self) -> float:
        """Welch-Satterthwaite degrees of freedom (inf when both samples are constant: the
        difference is then a point, and any df gives the same decision)."""
        na, nb = self.n
        if na < 2 or nb < 2:
            return math.nan
        va, vb = _var(self.values_a) / na, _var(self.values_b) / nb
        denom = va * va / (na - 1) + vb * vb / (nb - 1)
        return (va + vb) ** 2 / denom if denom > 0 else math.inf

    @property
    def testable(self) -> bool:
        return math.isfinite(self.se)

    def p_above(self, x: float) -> float:
        """One-sided p-value of H0: delta <= x (small: delta > x is shown)."""
        return _p_tail(self.diff - x, self.se, self.df)

    def p_below(self, x: float) -> float:
        """One-sided p-value of H0: delta >= x (small: delta < x is shown)."""
        return _p_tail(x - self.diff, self.se, self.df)

    @cached_property
    def p_equivalent(self) -> float:
        """TOST p-value of H0: |delta| >= margin."""
        return max(self.p_above(-self.margin), self.p_below(self.margin))

    @cached_property
    def p(self) -> float:
        """The comparison's p-value for Holm: 2 x the smallest of its three claims' p-values."""
        if not self.testable:
            return 1.0
        return min(1.0, 2 * min(self.p_above(0.0), self.p_below(0.0), self.p_equivalent))

    def interval(self, confidence: float) -> tuple[float, float]:
        """Welch's two-sided interval of the improvement at `confidence`."""
        if not self.testable:
            return math.nan, math.nan
        if self.se == 0:
            return self.diff, self.diff
        half = t_quantile(1 - (1 - confidence) / 2, self.df) * self.se
        return self.diff - half, self.diff + half


@dataclass(frozen=True)
class Decision:
    """What a comparison shows at its level (alpha for a comparison on its own, its Holm level
    in a family). ``level`` is the two-sided level its claims were tested at (None: not
    decided, nothing is claimed)."""

    comparison: Comparison
    level: float | None
    better: bool = False
    worse: bool = False
    equivalent: bool = False
    worthwhile_gain: bool = False
    worthwhile_loss: bool = False

    @property
    def decided(self) -> bool:
        return self.level is not None

    @property
    def outcome(self) -> str:
        """"equivalent", "better", "worse" or "open" (equivalence first: a significant gain that
        is shown to be below the minimum gain is not worth having)."""
        if self.equivalent:
            return "equivalent"
        if self.better:
            return "better"
        if self.worse:
            return "worse"
        return "open"


def decide(c: Comparison, level: float | None) -> Decision:
    """The claims of `c` at the two-sided `level` (None: undecided)."""
    if level is None or not c.testable:
        return Decision(c, None)
    half = level / 2
    d = Decision(
        c, level,
        better=c.p_above(0.0) <= half,
        worse=c.p_below(0.0) <= half,
        equivalent=c.p_equivalent <= half,
        worthwhile_gain=c.p_above(c.margin) <= half,
        worthwhile_loss=c.p_below(-c.margin) <= half,
    )
    return d if (d.better or d.worse or d.equivalent) else Decision(c, None)


def holm_levels(pvalues: Sequence[float], alpha: float) -> list[float | None]:
    """Holm's step-down procedure: for each p-value, the level at which it is rejected
    (alpha / (K - rank + 1)), or None where it is not (nor any larger one)."""
    K = len(pvalues)
    order = sorted(range(K), key=lambda i: (pvalues[i], i))
    out: list[float | None] = [None] * K
    for rank, i in enumerate(order):
        level = alpha / (K - rank)
        if pvalues[i] > level:
            break
        out[i] = level
    return out


def holm_adjusted(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values: max over earlier ranks of (K - rank) * p, capped at 1."""
    K = len(pvalues)
    order = sorted(range(K), key=lambda i: (pvalues[i], i))
    out = [1.0] * K
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (K - rank) * pvalues[i]))
        out[i] = running
    return out


@dataclass
class Family:
    """The comparisons of one report, decided together under one family-wise error rate."""

    alpha: float = 0.05
    method: str = "holm"  # "holm" | "none" (each comparison at alpha on its own)
    comparisons: dict[str, Comparison] = field(default_factory=dict)

    def add(self, c: Comparison) -> Comparison:
        self.comparisons.setdefault(c.name, c)
        return self.comparisons[c.name]

    def decisions(self) -> dict[str, Decision]:
        names = [k for k, c in self.comparisons.items() if c.testable]
        if self.method == "none":
            levels: list[float | None] = [self.alpha] * len(names)
        else:
            levels = holm_levels([self.comparisons[k].p for k in names], self.alpha)
        out = {k: decide(self.comparisons[k], lv) for k, lv in zip(names, levels, strict=True)}
        for k, c in self.comparisons.items():
            out.setdefault(k, Decision(c, None))
        return out

    @property
    def size(self) -> int:
        return sum(c.testable for c in self.comparisons.values())

    def describe(self) -> str:
        if self.method == "none":
            return (f"each of the {self.size} comparisons at {self.alpha:g} on its own (no "
                    "family-wise correction)")
        return (f"Holm's step-down correction over the {self.size} comparisons of this report, "
                f"family-wise error rate {self.alpha:g}")


# --------------------------------------------------------------------------------------------
# Power: how many seeds would decide


def decision_power(delta: float, sd: float, n: int, margin: float, level: float) -> float:
    """Probability that a comparison of two settings with true improvement `delta`, per-seed
    standard deviation `sd` and `n` seeds each is decided at the two-sided `level`: its claim
    on the side of the truth is shown (better, or worse, when |delta| >= margin; equivalent
    when |delta| < margin). Welch's test with equal n and spread has df = 2n - 2; the
    probabilities are those of the noncentral t distribution."""
    if n < 2 or sd <= 0:
        return 1.0 if n >= 2 else 0.0
    se = sd * math.sqrt(2 / n)
    df = 2 * n - 2
    q = student_t.ppf(1 - level / 2, df)
    if abs(delta) >= margin:
        return float(nct.sf(q, df, abs(delta) / se))
    # TOST: both one-sided tests reject; P >= P(lower) + P(upper) - 1.
    lo = nct.sf(q, df, (delta + margin) / se)
    hi = nct.cdf(-q, df, (delta - margin) / se)
    return float(max(0.0, lo + hi - 1))


def seeds_for_power(delta: float, sd: float, margin: float, level: float,
                    power: float = 0.8, start: int = 2, cap: int = 1000) -> int | None:
    """The smallest n >= start (seeds per setting) whose :func:`decision_power` reaches
    `power`; None if not within `cap` (the caller says "more than cap")."""
    if not (math.isfinite(delta) and math.isfinite(sd)):
        return None
    n = max(2, start)
    while n <= cap:
        if decision_power(delta, sd, n, margin, level) >= power:
            return n
        n = n + 1 if n < 64 else int(n * 1.1) + 1
    return None


def pooled_sd(c: Comparison) -> float:
    va = _var(c.values_a) if len(c.values_a) > 1 else math.nan
    vb = _var(c.values_b) if len(c.values_b) > 1 else math.nan
    return math.sqrt((va + vb) / 2)


def _mean(x: Sequence[float]) -> float:
    return math.fsum(x) / len(x)


def _var(x: Sequence[float]) -> float:
    """Sample variance (ddof = 1), exactly 0 for identical values."""
    if all(v == x[0] for v in x):
        return 0.0
    m = _mean(x)
    return math.fsum((v - m) ** 2 for v in x) / (len(x) - 1)


def _p_tail(z_num: float, se: float, df: float) -> float:
    """P(T >= z_num / se) under H0, for t with df degrees of freedom (scipy.special.stdtr, the
    t distribution's CDF); exact points (se = 0) give 0 or 1."""
    if not (math.isfinite(z_num) and math.isfinite(se)):
        return 1.0
    if se == 0:
        return 0.0 if z_num > 0 else 1.0
    if math.isinf(df):
        return 0.5 * math.erfc(z_num / se / math.sqrt(2))
    return float(stdtr(df, -z_num / se))
