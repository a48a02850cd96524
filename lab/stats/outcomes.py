"""Thresholded outcomes: a run either solves the task (objective past a threshold) or not.

Means over a few seeds of such bimodal outcomes are fragile; success rates with exact
(Clopper-Pearson) intervals and Fisher's exact test between settings describe them honestly.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.stats.intervals import fisher_p, proportion_ci
from lab.stats.summary import SettingStats


@dataclass
class SuccessRate:
    setting: str
    group: str
    solved: int
    n: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.solved / self.n if self.n else float("nan")


def solved(value: float, threshold: float, sign: float) -> bool:
    return sign * value >= sign * threshold


def success_rates(stats: list[SettingStats], threshold: float, sign: float = 1.0,
                  confidence: float = 0.95) -> list[SuccessRate]:
    out = []
    for s in stats:
        k = sum(solved(v, threshold, sign) for v in s.values)
        lo, hi = proportion_ci(k, s.n, confidence)
        out.append(SuccessRate(s.setting, s.group, k, s.n, lo, hi))
    return out


def is_thresholded(rates: list[SuccessRate]) -> bool:
    """Some setting both solved and failed across its seeds: its outcomes are bimodal."""
    return any(0 < r.solved < r.n for r in rates)


def fisher_pairs(rates: list[SuccessRate]) -> list[tuple[str, str, float]]:
    """(a, b, p) of Fisher's exact test for each pair of neighbouring settings."""
    return [(a.setting, b.setting, fisher_p(a.solved, a.n, b.solved, b.n))
            for a, b in zip(rates, rates[1:], strict=False)]
