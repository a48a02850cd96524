"""The objective against each cost, Pareto-optimal settings circled."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from lab.report.figures.common import Figure, obj_label, plt
from lab.stats import pareto_front

if TYPE_CHECKING:
    from lab.report.study import StudyAnalysis

# (cost key, axis label) of the panels of the cost figure.
COST_PANELS = (("flops_per_token", "FLOPs per token"),
               ("latency_s_per_token", "latency per token (s)"),
               ("kv_bytes_per_token", "KV bytes per token"))


def fig_cost(sa: StudyAnalysis, path: Path,
             cost_keys: tuple[tuple[str, str], ...] = COST_PANELS) -> Figure | None:
    """One panel per cost some setting has; None when no setting has any of them."""
    keys = [(k, label) for k, label in cost_keys
            if any(s.costs.get(k) is not None for s in sa.stats if s.n)]
    if not keys:
        return None
    pyplot = plt()
    fig, axes = pyplot.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), squeeze=False)
    for ax, (k, label) in zip(axes[0], keys, strict=True):
        front = set(pareto_front([s for s in sa.stats if s.n], k, sa.direction))
        for i, g in enumerate(sa.groups):
            ss = [s for s in sa.groups[g] if s.n and s.costs.get(k) is not None]
            xs = [s.costs[k] for s in ss]
            ys = [s.mean * sa.scale for s in ss]
            err = [[(s.mean - s.ci_low) * sa.scale if math.isfinite(s.ci_low) else 0 for s in ss],
                   [(s.ci_high - s.mean) * sa.scale if math.isfinite(s.ci_high) else 0 for s in ss]]
            ax.errorbar(xs, ys, yerr=err, fmt="o", color=f"C{i}", label=g or None, ms=4,
                        capsize=3, alpha=0.85)
            for s, x, y in zip(ss, xs, ys, strict=True):
                if s.setting in front:
                    ax.scatter([x], [y], s=110, facecolors="none", edgecolors="k", linewidths=1.2)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(obj_label(sa))
        if len(sa.groups) > 1:
            ax.legend(fontsize=8)
    axes[0][0].set_title("circled: Pareto-optimal (no setting is better and cheaper)", fontsize=9,
                         loc="left")
    fig.tight_layout()
    fig.savefig(path)
    pyplot.close(fig)
    return Figure(path.name)
