"""Statistics over study trials: per-setting summaries, confidence intervals and verdicts.

Method (quoted in reports):

* Each setting is summarized over its COMPLETE trials only, one trial per seed (when two
  completed trials share a setting and seed, the one with the lowest trial number is kept).
  The mean is given with a two-sided Student-t confidence interval,
  mean +/- t(1 - alpha/2, n - 1) * s / sqrt(n), with s the sample standard deviation
  (ddof = 1). With fewer than 2 completed seeds there is no interval.
* A difference between two settings A and B is mean(B) - mean(A) with Welch's t-interval:
  se = sqrt(s_A^2/n_A + s_B^2/n_B), df by Welch-Satterthwaite,
  df = se^4 / ((s_A^2/n_A)^2/(n_A - 1) + (s_B^2/n_B)^2/(n_B - 1)). If both samples have zero
  variance the interval is the point itself.
* Verdicts orient every difference in the direction of improvement (for a minimized
  objective, a decrease counts as positive), so a positive difference is always better.
  Two settings "differ significantly" when the interval of their difference excludes 0.
* Marginal gain: the difference from each setting on the ordered axis to the next one.
* Saturation point: the smallest setting j such that no later setting k > j is better than j
  by a margin whose whole confidence interval lies above the minimum gain, i.e.
  low(diff(j, k)) > min_gain holds for no k > j. If only the last setting satisfies this
  (which happens exactly when the step into it has low > min_gain), the curve has not
  levelled off within the range.
* Best setting: the one with the best mean. Regression: a setting after the best one whose
  difference to the best has its whole confidence interval below 0 (significantly worse).
* No verdict is given when (a) some setting has fewer than 2 completed trials, (b) every
  setting is at chance (when a chance level is given: for a maximized objective, every
  setting's upper confidence bound is below chance + min_gain; mirrored when minimized),
  or (c) no pair of settings differs significantly (every pairwise interval contains 0).
* The knee point (Kneedle: both axes normalized so the first point maps to (0, 0) and the
  last to (1, 1); the knee is the interior point farthest above that chord) is a second
  opinion only, never the verdict.

Student-t quantiles come from the regularized incomplete beta function (the continued
fraction of Numerical Recipes' betacf), inverted by safeguarded Newton iteration.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

NAN = float("nan")
COUNTED_STATES = ("COMPLETE", "PRUNED", "FAIL")


@dataclass
class TrialRecord:
    number: int
    setting: str
    seed: int
    state: str
    value: float | None
    attrs: dict[str, Any] = field(default_factory=dict)
    axis: float | None = None
    group: str = ""


@dataclass
class SettingStats:
    setting: str
    group: str
    axis: float | None
    n: int
    n_pruned: int
    n_failed: int
    values: list[float]
    seeds: list[int]
    mean: float
    std: float
    ci_low: float
    ci_high: float
    costs: dict[str, float]


@dataclass
class Gain:
    frm: str
    to: str
    diff: float
    low: float
    high: float


@dataclass
class CurveVerdict:
    sentence: str
    supported: bool
    reason: str
    best: str
    saturation: str | None
    regressions: list[str]
    gains: list[Gain]
    levelled_off: bool


@dataclass
class CompareVerdict:
    sentence: str
    supported: bool
    reason: str
    best: str
    diffs: dict[str, tuple[float, float, float]]


# ---------------------------------------------------------------------------------------------
# Student-t distribution


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz, NR betacf)."""
    # Convergence takes O(sqrt(max(a, b))) terms; huge df (a = df/2) needs a generous cap.
    max_iter = 10_000 + int(10 * math.sqrt(max(a, b)))
    eps = 1e-15
    fpmin = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > fpmin else fpmin)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > fpmin else fpmin)
        c = 1.0 + aa / c
        c = c if abs(c) > fpmin else fpmin
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > fpmin else fpmin)
        c = 1.0 + aa / c
        c = c if abs(c) > fpmin else fpmin
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"betacf did not converge (a={a}, b={b}, x={x})")


def betai(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The continued fraction converges fast only below this point; use the symmetry above it.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_upper_tail(t: float, df: float) -> float:
    """P(T > t) for t >= 0, computed directly so small tails keep their precision."""
    return 0.5 * betai(0.5 * df, 0.5, df / (df + t * t))


def _t_pdf(t: float, df: float) -> float:
    log_c = math.lgamma(0.5 * (df + 1)) - math.lgamma(0.5 * df) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - 0.5 * (df + 1) * math.log1p(t * t / df))


def _normal_upper_quantile(q: float) -> float:
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * math.erfc(mid / math.sqrt(2.0)) > q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution with df > 0 degrees of freedom (df may be
    fractional, as Welch's df is; df = inf gives the normal quantile)."""
    if not 0.0 < p < 1.0:
        if p == 0.0:
            return -math.inf
        if p == 1.0:
            return math.inf
        raise ValueError(f"p must lie in [0, 1], got {p}")
    if not df > 0:
        raise ValueError(f"df must be positive, got {df}")
    if p == 0.5:
        return 0.0
    # Solve on the upper tail q = P(T > t) with t > 0, then restore the sign by symmetry.
    q = 1.0 - p if p > 0.5 else p
    sign = 1.0 if p > 0.5 else -1.0
    if math.isinf(df):
        return sign * _normal_upper_quantile(q)
    lo, hi = 0.0, 1.0
    while _t_upper_tail(hi, df) > q:
        lo, hi = hi, hi * 2.0
        if hi > 1e300:
            return sign * math.inf
    t = 0.5 * (lo + hi)
    for _ in range(200):
        f = _t_upper_tail(t, df) - q  # decreasing in t
        if f > 0:
            lo = t
        else:
            hi = t
        # Newton step on the tail (derivative -pdf); fall back to bisection when it leaves
        # the bracket, which happens far in the tails where the pdf is tiny.
        pdf = _t_pdf(t, df)
        step_t = t + f / pdf if pdf > 0 else math.nan
        new_t = step_t if lo < step_t < hi else 0.5 * (lo + hi)
        if abs(new_t - t) <= 1e-13 * max(1.0, abs(t)) or hi - lo <= 1e-14 * max(1.0, hi):
            t = new_t
            break
        t = new_t
    return sign * t


# ---------------------------------------------------------------------------------------------
# Intervals


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(list(values), dtype=float)


def _var(x: np.ndarray) -> float:
    """Sample variance (ddof=1), exactly 0 for identical values (numpy leaves ~1e-33 there,
    which would turn a point interval into a spurious one)."""
    if np.all(x == x[0]):
        return 0.0
    return float(x.var(ddof=1))


def mean_ci(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> tuple[float, float, float, float]:
    """(mean, std (ddof=1), low, high): Student-t interval of the mean; nan where n < 2."""
    x = _clean(values)
    n = x.size
    if n == 0:
        return NAN, NAN, NAN, NAN
    mean = float(x.mean())
    if n < 2:
        return mean, NAN, NAN, NAN
    std = math.sqrt(_var(x))
    if std == 0.0:
        return mean, std, mean, mean
    half = t_quantile(1.0 - (1.0 - confidence) / 2.0, n - 1) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def welch_df(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Welch-Satterthwaite degrees of freedom (nan when undefined)."""
    xa, xb = _clean(a), _clean(b)
    if xa.size < 2 or xb.size < 2:
        return NAN
    va = _var(xa) / xa.size
    vb = _var(xb) / xb.size
    denom = va * va / (xa.size - 1) + vb * vb / (xb.size - 1)
    if denom == 0.0:
        return NAN
    return (va + vb) ** 2 / denom


def diff_ci(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> tuple[float, float, float]:
    """(mean(b) - mean(a), low, high) with Welch's t-interval; all nan if either n < 2."""
    xa, xb = _clean(a), _clean(b)
    if xa.size < 2 or xb.size < 2:
        return NAN, NAN, NAN
    diff = float(xb.mean() - xa.mean())
    se2 = _var(xa) / xa.size + _var(xb) / xb.size
    if se2 == 0.0:
        return diff, diff, diff
    half = t_quantile(1.0 - (1.0 - confidence) / 2.0, welch_df(xa, xb)) * math.sqrt(se2)
    return diff, diff - half, diff + half


def _improvement(
    a: SettingStats, b: SettingStats, sign: float, confidence: float
) -> tuple[float, float, float]:
    """Improvement of b over a (positive = better), with its interval."""
    d, lo, hi = diff_ci(a.values, b.values, confidence)
    if sign > 0:
        return d, lo, hi
    return -d, -hi, -lo


# ---------------------------------------------------------------------------------------------
# Summaries


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(
        v, bool | np.bool_
    )


def summarize(records: list[TrialRecord], confidence: float = 0.95) -> list[SettingStats]:
    """One SettingStats per (group, setting).

    Groups come in order of first appearance; within a group, settings keep their order of
    first appearance unless every setting of the group has an axis, in which case they are
    sorted by axis. RUNNING/WAITING trials are ignored entirely. A COMPLETE trial without a
    finite value counts as failed.
    """
    order: dict[str, list[str]] = {}
    axes: dict[tuple[str, str], float | None] = {}
    complete: dict[tuple[str, str], dict[int, TrialRecord]] = {}
    pruned: dict[tuple[str, str], int] = {}
    failed: dict[tuple[str, str], int] = {}
    for r in records:
        if r.state not in COUNTED_STATES:
            continue
        key = (r.group, r.setting)
        if key not in axes:
            order.setdefault(r.group, []).append(r.setting)
            axes[key] = r.axis
            complete[key] = {}
            pruned[key] = failed[key] = 0
        if axes[key] is None and r.axis is not None:
            axes[key] = r.axis
        if r.state == "PRUNED":
            pruned[key] += 1
        elif r.state == "FAIL" or r.value is None or not math.isfinite(r.value):
            failed[key] += 1
        else:
            # Concurrent workers can both finish the same (setting, seed); the earliest trial
            # is the canonical one so the seed is not counted twice.
            kept = complete[key].get(r.seed)
            if kept is None or r.number < kept.number:
                complete[key][r.seed] = r

    out: list[SettingStats] = []
    for group, settings in order.items():
        if all(axes[(group, s)] is not None for s in settings):
            settings = sorted(settings, key=lambda s, g=group: axes[(g, s)])
        for setting in settings:
            key = (group, setting)
            trials = [complete[key][seed] for seed in sorted(complete[key])]
            values = [float(t.value) for t in trials]  # type: ignore[arg-type]
            mean, std, low, high = mean_ci(values, confidence)
            cost_values: dict[str, list[float]] = {}
            for t in trials:
                for k, v in t.attrs.items():
                    if _is_number(v) and math.isfinite(float(v)):
                        cost_values.setdefault(k, []).append(float(v))
            out.append(
                SettingStats(
                    setting=setting,
                    group=group,
                    axis=axes[key],
                    n=len(trials),
                    n_pruned=pruned[key],
                    n_failed=failed[key],
                    values=values,
                    seeds=[t.seed for t in trials],
                    mean=mean,
                    std=std,
                    ci_low=low,
                    ci_high=high,
                    costs={k: float(np.mean(v)) for k, v in cost_values.items()},
                )
            )
    return out


# ---------------------------------------------------------------------------------------------
# Sentence helpers


def _num(x: float, scale: float) -> str:
    v = round(x * scale, 1)
    return f"{v + 0.0:+.1f}"  # + 0.0 turns -0.0 into 0.0


def _ci(lo: float, hi: float, scale: float, confidence: float) -> str:
    return f"{confidence * 100:g}% CI {_num(lo, scale)} to {_num(hi, scale)}"


def _join(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _plus_form(name: str) -> str:
    """'4 loops' -> '4+ loops': the setting and every later one."""
    m = re.match(r"^([-+]?\d+(?:\.\d+)?)(.*)$", name)
    if m:
        return f"{m[1]}+{m[2]}"
    return f"{name} and beyond"


def _no_verdict_reason(
    stats: list[SettingStats],
    label: Callable[[SettingStats], str],
    *,
    sign: float,
    chance: float | None,
    min_gain: float,
    confidence: float,
    scale: float,
    unit: str,
) -> tuple[str, str] | None:
    """(reason, sentence) for rules (a) and (b), or None when they do not apply."""
    thin = [s for s in stats if s.n < 2]
    if thin:
        s = thin[0]
        trials = "trial" if s.n == 1 else "trials"
        return "not enough seeds", (
            f"Not enough seeds for a verdict: {label(s)} has {s.n} completed {trials}; "
            "at least 2 per setting are needed (3 or more recommended)."
        )
    if chance is not None:
        if sign > 0 and all(s.ci_high < chance + min_gain for s in stats):
            edge = max(s.ci_high for s in stats)
            bound = f"every upper {confidence * 100:g}% CI bound is at most {_num(edge, scale)}"
        elif sign < 0 and all(s.ci_low > chance - min_gain for s in stats):
            edge = min(s.ci_low for s in stats)
            bound = f"every lower {confidence * 100:g}% CI bound is at least {_num(edge, scale)}"
        else:
            return None
        return "at chance", (
            f"Every setting is at chance ({_num(chance, scale)} {unit}; {bound}): "
            "no verdict; the task is too hard for this budget."
        )
    return None


def _largest_insignificant(
    stats: list[SettingStats], sign: float, confidence: float
) -> tuple[int, int, tuple[float, float, float]] | None:
    """The pair with the largest |difference| if no pair differs significantly, else None."""
    widest: tuple[int, int, tuple[float, float, float]] | None = None
    for i in range(len(stats)):
        for k in range(i + 1, len(stats)):
            d, lo, hi = _improvement(stats[i], stats[k], sign, confidence)
            if lo > 0 or hi < 0:
                return None
            if widest is None or abs(d) > abs(widest[2][0]):
                widest = (i, k, (d, lo, hi))
    return widest


# ---------------------------------------------------------------------------------------------
# Verdicts


def _sign(direction: str) -> float:
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    return 1.0 if direction == "maximize" else -1.0


def _best_index(stats: list[SettingStats], sign: float) -> int:
    finite = [i for i, s in enumerate(stats) if math.isfinite(s.mean)]
    if not finite:
        return 0
    return max(finite, key=lambda i: (sign * stats[i].mean, -i))


def curve_verdict(
    stats: list[SettingStats],
    *,
    direction: str = "maximize",
    min_gain: float = 0.01,
    chance: float | None = None,
    confidence: float = 0.95,
    scale: float = 100.0,
    unit: str = "points",
    name: Callable[[SettingStats], str] = lambda s: s.setting,
) -> CurveVerdict:
    """Where gains level off along an ordered axis (stats in axis order).

    All differences, gains and the numbers in the sentence are improvements (positive is
    better, also when minimizing), scaled by `scale` and rounded to one decimal in the
    sentence. See the module docstring for the definitions of saturation and regression.
    """
    sign = _sign(direction)
    verb = "adds" if sign > 0 else "improves by"
    names = [name(s) for s in stats]
    gains = [
        Gain(names[i], names[i + 1], *_improvement(stats[i], stats[i + 1], sign, confidence))
        for i in range(len(stats) - 1)
    ]
    best_i = _best_index(stats, sign) if stats else 0
    best = names[best_i] if stats else ""

    def unsupported(reason: str, sentence: str) -> CurveVerdict:
        return CurveVerdict(sentence, False, reason, best, None, [], gains, False)

    if len(stats) < 2:
        return unsupported(
            "fewer than 2 settings",
            "Not enough settings for a verdict: a curve needs at least 2 settings.",
        )
    rule = _no_verdict_reason(
        stats,
        name,
        sign=sign,
        chance=chance,
        min_gain=min_gain,
        confidence=confidence,
        scale=scale,
        unit=unit,
    )
    if rule is not None:
        return unsupported(*rule)
    widest = _largest_insignificant(stats, sign, confidence)
    if widest is not None:
        i, k, (d, lo, hi) = widest
        return unsupported(
            "no significant differences",
            f"No setting differs significantly from another (largest difference: {names[k]} vs "
            f"{names[i]}, {_num(d, scale)} {unit}, {_ci(lo, hi, scale, confidence)}): "
            "no verdict.",
        )

    last = len(stats) - 1
    sat = next(
        j
        for j in range(len(stats))
        if not any(
            _improvement(stats[j], stats[k], sign, confidence)[1] > min_gain
            for k in range(j + 1, len(stats))
        )
    )
    to_best = {
        k: _improvement(stats[best_i], stats[k], sign, confidence)
        for k in range(best_i + 1, len(stats))
    }
    regress = [k for k, (_, _, hi) in to_best.items() if hi < 0]
    regressions = [names[k] for k in regress]

    if sat == last:
        g = gains[-1]
        sentence = (
            f"Gains do not level off within the range: {names[last]} still {verb} "
            f"{_num(g.diff, scale)} {unit} over {names[last - 1]} "
            f"({_ci(g.low, g.high, scale, confidence)})."
        )
        return CurveVerdict(sentence, True, "", best, None, regressions, gains, False)

    clauses: list[str] = []
    # Name what lies beyond the saturation point: the best later setting if it is not the
    # saturation point itself, else the next setting unless that one regresses (then the
    # regression clause says it).
    nxt = best_i if best_i != sat else sat + 1
    if nxt not in regress:
        d, lo, hi = _improvement(stats[sat], stats[nxt], sign, confidence)
        clauses.append(
            f"{names[nxt]} {verb} {_num(d, scale)} {unit} ({_ci(lo, hi, scale, confidence)})"
        )
    if regress:

        def figure(k: int) -> str:
            d, lo, hi = to_best[k]
            return f"{_num(d, scale)} {unit}, {_ci(lo, hi, scale, confidence)}"

        first = regress[0]
        if len(regress) == 1:
            d, lo, hi = to_best[first]
            clauses.append(
                f"{names[first]} regresses ({_num(d, scale)} {unit} vs {best}, "
                f"{_ci(lo, hi, scale, confidence)})"
            )
        elif regress == list(range(first, last + 1)):
            # A regressing tail is named by its onset: "4+ loops regress".
            clauses.append(
                f"{_plus_form(names[first])} regress vs {best} ({names[first]}: {figure(first)})"
            )
        else:
            parts = "; ".join(f"{names[k]}: {figure(k)}" for k in regress)
            clauses.append(f"{_join(regressions)} regress vs {best} ({parts})")
    sentence = f"Gains level off at {names[sat]}: " + "; ".join(clauses) + "."
    return CurveVerdict(sentence, True, "", best, names[sat], regressions, gains, True)


def compare_verdict(
    stats: list[SettingStats],
    reference: str,
    *,
    direction: str = "maximize",
    confidence: float = 0.95,
    scale: float = 100.0,
    unit: str = "points",
    min_gain: float = 0.01,
    chance: float | None = None,
    noun: str = "setting",
) -> CompareVerdict:
    """Unordered settings against a reference setting (matched on `setting`).

    `diffs` maps every other setting to its improvement over the reference (positive is
    better, also when minimizing) with its Welch interval. A setting "wins" when it has the
    best mean and its whole interval over the reference lies above `min_gain`.
    """
    sign = _sign(direction)
    by_name = {s.setting: s for s in stats}
    if reference not in by_name:
        raise ValueError(f"reference {reference!r} is not among the settings")
    ref = by_name[reference]
    others = [s for s in stats if s.setting != reference]
    diffs = {s.setting: _improvement(ref, s, sign, confidence) for s in others}
    best = stats[_best_index(stats, sign)].setting

    def unsupported(reason: str, sentence: str) -> CompareVerdict:
        return CompareVerdict(sentence, False, reason, best, diffs)

    if not others:
        return unsupported(
            "fewer than 2 settings", f"Nothing to compare: only {reference} was run."
        )
    rule = _no_verdict_reason(
        stats,
        lambda s: s.setting,
        sign=sign,
        chance=chance,
        min_gain=min_gain,
        confidence=confidence,
        scale=scale,
        unit=unit,
    )
    if rule is not None:
        return unsupported(*rule)
    if _largest_insignificant(stats, sign, confidence) is not None:
        top = best if best != reference else max(diffs, key=lambda k: diffs[k][0])
        d, lo, hi = diffs[top]
        return unsupported(
            "no significant differences",
            f"No {noun} differs significantly from {reference} or from another "
            f"(closest to a difference: {top}, {_num(d, scale)} {unit}, "
            f"{_ci(lo, hi, scale, confidence)}): no verdict.",
        )

    def fmt(k: str) -> str:
        d, lo, hi = diffs[k]
        return f"{_num(d, scale)} {unit}, {_ci(lo, hi, scale, confidence)}"

    def listed(keys: list[str]) -> str:
        return "; ".join(f"{k}: {fmt(k)}" for k in keys)

    better = [k for k, (_, lo, _) in diffs.items() if lo > 0]
    worse = [k for k, (_, _, hi) in diffs.items() if hi < 0]
    same = [k for k in diffs if k not in better and k not in worse]
    clauses: list[str] = []
    also = ""
    if best == reference:
        clauses.append(f"{reference} is best")
    elif diffs[best][1] > min_gain:
        d, lo, hi = diffs[best]
        clauses.append(
            f"{best} wins: {_num(d, scale)} {unit} over {reference} "
            f"({_ci(lo, hi, scale, confidence)})"
        )
        also = "also "
    elif diffs[best][1] > 0:
        clauses.append(
            f"{best} is best, {_num(diffs[best][0], scale)} {unit} over {reference} "
            f"({_ci(diffs[best][1], diffs[best][2], scale, confidence)}), but its interval does "
            f"not clear the minimum gain of {abs(min_gain * scale):.1f} {unit}"
        )
        also = "also "
    elif not better and not worse:
        clauses.append(
            f"No {noun} differs significantly from {reference} (best: {best}, {fmt(best)})"
        )
        same = []
    else:
        clauses.append(
            f"{best} has the best mean but does not differ significantly from {reference} "
            f"({fmt(best)})"
        )
    rest_better = [k for k in better if k != best]
    if rest_better:
        verb = "beats" if len(rest_better) == 1 else "beat"
        clauses.append(f"{_join(rest_better)} {also}{verb} {reference} ({listed(rest_better)})")
    same = [k for k in same if k != best]
    if same:
        verb = "does" if len(same) == 1 else "do"
        clauses.append(f"{_join(same)} {verb} not differ significantly from {reference}")
    if worse:
        verb = "is" if len(worse) == 1 else "are"
        clauses.append(f"{_join(worse)} {verb} worse than {reference} ({listed(worse)})")
    return CompareVerdict("; ".join(clauses) + ".", True, "", best, diffs)


# ---------------------------------------------------------------------------------------------
# Cost trade-offs


def _with_cost(stats: list[SettingStats], cost_key: str) -> list[SettingStats]:
    return [
        s
        for s in stats
        if cost_key in s.costs and math.isfinite(s.costs[cost_key]) and math.isfinite(s.mean)
    ]


def pareto_front(
    stats: list[SettingStats], cost_key: str, direction: str = "maximize"
) -> list[str]:
    """Settings not dominated on (objective mean, cost), in input order; settings lacking the
    cost are skipped."""
    sign = _sign(direction)
    pts = _with_cost(stats, cost_key)

    def dominates(o: SettingStats, s: SettingStats) -> bool:
        go, gs = sign * o.mean, sign * s.mean
        co, cs = o.costs[cost_key], s.costs[cost_key]
        return go >= gs and co <= cs and (go > gs or co < cs)

    return [s.setting for s in pts if not any(dominates(o, s) for o in pts if o is not s)]


def cheapest_within_best(
    stats: list[SettingStats], cost_key: str, direction: str = "maximize"
) -> tuple[str, str] | None:
    """(best setting, cheapest setting whose mean lies within the best setting's interval).

    For maximize "within" means mean >= best.ci_low (mirrored for minimize); without an
    interval (n < 2) only settings as good as the best qualify. None when no qualifying
    setting has the cost.
    """
    sign = _sign(direction)
    finite = [s for s in stats if math.isfinite(s.mean)]
    if not finite:
        return None
    best = finite[_best_index(finite, sign)]
    bound = best.ci_low if sign > 0 else best.ci_high
    if not math.isfinite(bound):
        bound = best.mean
    within = [s for s in _with_cost(finite, cost_key) if sign * (s.mean - bound) >= 0]
    if not within:
        return None
    cheapest = min(within, key=lambda s: (s.costs[cost_key], -sign * s.mean))
    return best.setting, cheapest.setting


def best_per_cost(
    stats: list[SettingStats], cost_key: str, chance: float | None = None
) -> str | None:
    """The setting with the highest (mean - chance) / cost (mean / cost without chance), for a
    maximized objective; settings without a positive cost are skipped."""
    base = 0.0 if chance is None else chance
    pts = [s for s in _with_cost(stats, cost_key) if s.costs[cost_key] > 0]
    if not pts:
        return None
    return max(pts, key=lambda s: (s.mean - base) / s.costs[cost_key]).setting


def knee_point(stats: list[SettingStats]) -> str | None:
    """Kneedle-style knee of mean vs axis (a second opinion only, never the verdict).

    Both coordinates are normalized so the first point (lowest axis) maps to (0, 0) and the
    last to (1, 1), which makes a decreasing convex curve (a loss) look like an increasing
    concave one; the knee is the interior point farthest above the chord y = x. None with
    fewer than 3 points, no overall change, or no point above the chord.
    """
    pts = sorted(
        (s for s in stats if s.axis is not None and math.isfinite(s.mean)),
        key=lambda s: s.axis,  # type: ignore[arg-type, return-value]
    )
    if len(pts) < 3:
        return None
    x = np.array([s.axis for s in pts], dtype=float)
    y = np.array([s.mean for s in pts], dtype=float)
    if x[-1] == x[0] or y[-1] == y[0]:
        return None
    nx = (x - x[0]) / (x[-1] - x[0])
    ny = (y - y[0]) / (y[-1] - y[0])
    gap = (ny - nx)[1:-1]
    i = int(np.argmax(gap))
    # Float noise puts a straight line's points a hair off the chord; that is not a knee.
    if gap[i] <= 1e-9:
        return None
    return pts[i + 1].setting
