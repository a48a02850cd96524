"""Choosing a learning rate from a grid: the vertex of a quadratic fit in log lr.

Around the grid point with the best objective, the objective of a training run is close to a
parabola in log(lr). The chosen rate is the vertex of a least-squares quadratic through the
best point and up to two completed neighbours on each side (at least three points), clamped
to the best point's two neighbours, so a noisy fit never leaves the bracket the grid showed.
A best point at the grid's edge is not bracketed: the caller extends the grid on that side.

Pooled (``tune.share: arm``): the settings of an arm share one parabola and each has its own
offset (y = c_s + b x + a x^2, least squares over every point of the arm), so settings that
ran different points still inform one curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LrFit:
    chosen: float  # the learning rate to use
    best: float  # the grid point with the best objective
    interior: bool  # the best point has a completed point on each side
    edge: str | None  # "low" | "high": the best point is the grid's lowest / highest
    fitted: bool  # the vertex of a parabola opening the right way (else the best point)
    window: tuple[float, ...]  # the rates the parabola was fitted on
    coef: tuple[float, float, float] | None  # (a, b, c) of y = a x^2 + b x + c, x = ln lr
    points_below: int  # completed points below the chosen rate
    points_above: int


def _quadratic(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    a, b, c = np.polyfit(x, y, 2)
    return float(a), float(b), float(c)


def fit_lr(lrs: list[float], values: list[float], minimize: bool, window: int = 2) -> LrFit:
    """The fit of one setting: `values` the mean objective at each rate in `lrs` (any order;
    None / nan for points that did not complete)."""
    pts = sorted((lr, v) for lr, v in zip(lrs, values, strict=True)
                 if v is not None and math.isfinite(v))
    if not pts:
        raise ValueError("no completed tuning point")
    xs = np.log([p[0] for p in pts])
    ys = np.array([p[1] if minimize else -p[1] for p in pts])  # lower is better
    i = int(np.argmin(ys))
    best = pts[i][0]
    edge = "low" if i == 0 and len(pts) > 1 else "high" if i == len(pts) - 1 and len(pts) > 1 \
        else None
    if len(pts) == 1:
        edge = "low"
    lo, hi = max(0, i - window), min(len(pts), i + window + 1)
    chosen, fitted, coef = best, False, None
    if hi - lo >= 3 and edge is None:
        a, b, c = _quadratic(xs[lo:hi], ys[lo:hi])
        coef = (a, b, c)
        if a > 0:
            vertex = -b / (2 * a)
            vertex = min(max(vertex, xs[i - 1]), xs[i + 1])
            chosen, fitted = float(math.exp(vertex)), True
    below = sum(1 for lr, _ in pts if lr < chosen)
    above = sum(1 for lr, _ in pts if lr > chosen)
    return LrFit(chosen, best, edge is None and below >= 1 and above >= 1, edge, fitted,
                 tuple(p[0] for p in pts[lo:hi]), coef, below, above)


def fit_pooled(points: dict[str, dict[float, float]], minimize: bool) -> LrFit:
    """One rate for several settings: {setting: {lr: mean objective}}, a shared parabola in
    ln lr with an offset per setting. The edge is judged on the grid of every rate tried."""
    settings = [s for s, p in points.items() if p]
    rows, ys = [], []
    for k, s in enumerate(settings):
        for lr, v in points[s].items():
            if v is None or not math.isfinite(v):
                continue
            x = math.log(lr)
            rows.append([x * x, x] + [1.0 if j == k else 0.0 for j in range(len(settings))])
            ys.append(v if minimize else -v)
    if not rows:
        raise ValueError("no completed tuning point")
    grid = sorted({lr for p in points.values() for lr, v in p.items()
                   if v is not None and math.isfinite(v)})
    A, y = np.asarray(rows), np.asarray(ys)
    if len(grid) < 3 or np.linalg.matrix_rank(A) < A.shape[1]:
        # Too few distinct rates for a curvature: the rate whose mean residual is best.
        means = {lr: np.mean([(v if minimize else -v) for p in points.values()
                              for r, v in p.items() if r == lr]) for lr in grid}
        best = min(means, key=means.get)
        edge = "low" if best == grid[0] else "high" if best == grid[-1] else None
        return LrFit(best, best, False, edge, False, tuple(grid), None,
                     sum(lr < best for lr in grid), sum(lr > best for lr in grid))
    sol, *_ = np.linalg.lstsq(A, y, rcond=None)
    a, b = float(sol[0]), float(sol[1])
    xs = np.log(grid)
    # The shared curve at each rate, to find the best grid point and the edge.
    curve = a * xs ** 2 + b * xs
    i = int(np.argmin(curve))
    best = grid[i]
    edge = "low" if i == 0 else "high" if i == len(grid) - 1 else None
    chosen, fitted = best, False
    if a > 0 and edge is None:
        vertex = min(max(-b / (2 * a), xs[i - 1]), xs[i + 1])
        chosen, fitted = float(math.exp(vertex)), True
    below = sum(lr < chosen for lr in grid)
    above = sum(lr > chosen for lr in grid)
    return LrFit(chosen, best, edge is None and below >= 1 and above >= 1, edge, fitted,
                 tuple(grid), (a, b, 0.0), below, above)
