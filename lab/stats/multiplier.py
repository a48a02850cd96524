"""Compute multiplier: how much more training compute a reference needs to reach a setting's
objective ("looping twice is worth 1.4x the training compute").

The reference's mean objective at each of its budgets gives points (C_b, y_b), C_b its
training FLOPs at budget b. The compute at which the reference reaches the setting's mean
objective y_S (at the setting's own full budget, C_S) is read off those points by linear
interpolation in log C and log y for a minimized, positive objective (losses, bits per byte:
power laws are straight lines there), in log C and y otherwise; the multiplier is that compute
over C_S. Beyond the reference's range (the setting is better than the reference at its
largest budget, or worse than at its smallest) the nearest segment is extended and the result
is marked "extrapolated". The interval is a percentile bootstrap over seeds (each setting's
seeds resampled with replacement, independently).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Multiplier:
    value: float
    low: float
    high: float
    kind: str  # "interpolated" | "extrapolated" | "undefined"


def crossing(computes: list[float], ys: list[float], target: float, sign: float,
             log_y: bool) -> tuple[float, str]:
    """The compute at which the curve (computes increasing, ys its objective) reaches
    `target`; sign +1 when higher is better. (compute, kind)."""
    if len(computes) < 2:
        return math.nan, "undefined"
    x = [math.log(c) for c in computes]
    if log_y:
        if min(ys) <= 0 or target <= 0:
            return math.nan, "undefined"
        ys, target = [math.log(v) for v in ys], math.log(target)
    q = [-sign * v for v in ys]  # lower is better along q
    tq = -sign * target
    for i in range(len(x) - 1):
        a, b = q[i], q[i + 1]
        if min(a, b) <= tq <= max(a, b) and a != b:
            return math.exp(x[i] + (tq - a) * (x[i + 1] - x[i]) / (b - a)), "interpolated"
    # Outside the range: extend the segment on the side of the target, if it improves.
    i = len(x) - 2 if tq < min(q) else 0
    slope = (q[i + 1] - q[i]) / (x[i + 1] - x[i])
    if slope >= 0:
        return math.nan, "undefined"  # the reference does not improve with compute there
    return math.exp(x[i] + (tq - q[i]) / slope), "extrapolated"


def compute_multiplier(ref: dict[int, list[float]], ref_computes: list[float],
                       setting: dict[int, float], setting_compute: float, sign: float,
                       log_y: bool, confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> Multiplier:
    """`ref`: per seed, the reference's objective at each budget (computes `ref_computes`,
    increasing); `setting`: per seed, the setting's objective at its full budget, which costs
    `setting_compute`."""
    R = np.asarray([ref[s] for s in sorted(ref)], dtype=float)  # (seeds, budgets)
    S = np.asarray([setting[s] for s in sorted(setting)], dtype=float)
    if R.size == 0 or S.size == 0 or setting_compute <= 0:
        return Multiplier(math.nan, math.nan, math.nan, "undefined")

    def value(r_mean: list[float], s_mean: float) -> tuple[float, str]:
        c, kind = crossing(ref_computes, r_mean, s_mean, sign, log_y)
        return c / setting_compute, kind

    point, kind = value(R.mean(0).tolist(), float(S.mean()))
    rng = np.random.default_rng(seed)
    boots = []
    if len(R) > 1 or len(S) > 1:
        r_means = R[rng.integers(len(R), size=(resamples, len(R)))].mean(1).tolist()
        s_means = S[rng.integers(len(S), size=(resamples, len(S)))].mean(1).tolist()
        for rm, sm in zip(r_means, s_means, strict=True):
            v, _ = value(rm, sm)
            if math.isfinite(v):
                boots.append(v)
    if len(boots) < resamples / 2:
        return Multiplier(point, math.nan, math.nan, kind)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    return Multiplier(point, float(lo), float(hi), kind)
