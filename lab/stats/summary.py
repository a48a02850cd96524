"""Trials as records, and one summary (mean, Student-t interval, mean costs) per setting."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lab.stats.intervals import clip_interval, mean_ci

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
    ci_truncated: bool = False  # the t-interval was cut to the metric's range

    @property
    def identical(self) -> bool:
        """Every seed gave the same value: the interval is a point, not a measurement."""
        return self.n >= 2 and all(v == self.values[0] for v in self.values)


def direction_sign(direction: str) -> float:
    """+1 for a maximized objective, -1 for a minimized one."""
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    return 1.0 if direction == "maximize" else -1.0


def best_index(stats: list[SettingStats], sign: float) -> int:
    """Index of the best finite mean (the first one on ties); 0 when no mean is finite."""
    finite = [i for i, s in enumerate(stats) if math.isfinite(s.mean)]
    if not finite:
        return 0
    return max(finite, key=lambda i: (sign * stats[i].mean, -i))


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(
        v, bool | np.bool_
    )


def summarize(records: list[TrialRecord], confidence: float = 0.95,
              bounds: tuple[float, float] | None = None) -> list[SettingStats]:
    """One SettingStats per (group, setting).

    Groups come in order of first appearance; within a group, settings keep their order of
    first appearance unless every setting of the group has an axis, in which case they are
    sorted by axis. RUNNING/WAITING trials are ignored entirely. A COMPLETE trial without a
    finite value counts as failed. Every finite number among a trial's attrs is averaged into
    the setting's costs. With `bounds` (the metric's range, e.g. (0, 1) for an accuracy) the
    interval of a mean is cut to that range and marked as cut.
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
            low, high, cut = clip_interval(low, high, bounds)
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
                    ci_truncated=cut,
                )
            )
    return out
