"""Objective against cost: Pareto front, cheapest near-best setting, best per unit cost, knee."""

from __future__ import annotations

import math

import numpy as np

from lab.stats.summary import SettingStats, best_index, direction_sign


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
    sign = direction_sign(direction)
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
    sign = direction_sign(direction)
    finite = [s for s in stats if math.isfinite(s.mean)]
    if not finite:
        return None
    best = finite[best_index(finite, sign)]
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
