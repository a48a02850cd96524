"""The objective against each cost, Pareto-optimal settings circled."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from lab.report.figures.common import MARKERS, Figure, obj_label, plt
from lab.stats import pareto_front

if TYPE_CHECKING:
    from lab.report.study import StudyAnalysis

# (cost key, axis label) of the panels of the cost figure.
COST_PANELS = (("flops_per_token", "FLOPs per token"),
               ("latency_s_per_token", "latency per token"),
               ("kv_bytes_per_token", "KV bytes per token"))


def fig_cost(sa: StudyAnalysis, path: Path,
             cost_keys: tuple[tuple[str, str], ...] = COST_PANELS) -> Figure | None:
    """One panel per cost some setting has, all panels on one objective axis; None when no
    setting has any of them. Colours are the arms, or the settings of a study with one arm;
    one legend under the panels says which. Latencies are the paired cost pass's where it ran
    (lab.report.study.use_paired_latency)."""
    done = [s for s in sa.stats if s.n]
    keys = [(k, label) for k, label in cost_keys if any(s.costs.get(k) is not None for s in done)]
    if not keys:
        return None
    pyplot = plt()
    fig, axes = pyplot.subplots(1, len(keys), figsize=(4.2 * len(keys), 4.4), squeeze=False,
                                sharey=True)
    # A series per arm; with one arm, a series per setting (so each point can be named).
    if len([g for g in sa.groups if any(s.n for s in sa.groups[g])]) > 1:
        series = [(g or "-", [s for s in sa.groups[g] if s.n]) for g in sa.groups]
    else:
        series = [(s.setting, [s]) for s in done]
    for ax, (k, label) in zip(axes[0], keys, strict=True):
        front = set(pareto_front(done, k, sa.direction))
        xs_all = []
        for i, (name, ss) in enumerate(series):
            ss = [s for s in ss if s.costs.get(k) is not None]
            if not ss:
                continue
            xs = [s.costs[k] for s in ss]
            xs_all += xs
            ys = [s.mean * sa.scale for s in ss]
            err = [[(s.mean - s.ci_low) * sa.scale if math.isfinite(s.ci_low) else 0 for s in ss],
                   [(s.ci_high - s.mean) * sa.scale if math.isfinite(s.ci_high) else 0 for s in ss]]
            ax.errorbar(xs, ys, yerr=err, fmt=MARKERS[i % len(MARKERS)], color=f"C{i % 10}",
                        label=name, ms=5, capsize=3, alpha=0.85)
            for s, x, y in zip(ss, xs, ys, strict=True):
                if s.setting in front:
                    ax.scatter([x], [y], s=130, facecolors="none", edgecolors="k", linewidths=1.2)
        cost_axis(ax, xs_all, "s" if k.startswith("latency") else "")
        ax.set_xlabel(label)
    axes[0][0].set_ylabel(obj_label(sa))
    axes[0][0].set_title("circled: Pareto-optimal (no setting is better and cheaper)", fontsize=9,
                         loc="left")
    handles, labels = axes[0][0].get_legend_handles_labels()
    rows = math.ceil(len(labels) / 3)
    fig.tight_layout(rect=(0, 0.05 + 0.045 * rows, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=7,
               frameon=False)
    fig.savefig(path)
    pyplot.close(fig)
    return Figure(path.name)


def cost_axis(ax, xs: list[float], unit: str = "") -> None:
    """A cost axis whose tick labels cannot collide: logarithmic only where the costs span
    more than a factor of 20, few ticks, engineering notation ('600k', '1.2 ms')."""
    from matplotlib.ticker import EngFormatter, MaxNLocator, NullFormatter

    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.xaxis.set_major_formatter(EngFormatter(unit=unit, places=None, sep=" " if unit else ""))
