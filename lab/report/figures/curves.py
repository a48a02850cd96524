"""The objective along the swept axis (one curve per arm), or per setting when unordered."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from lab.report.figures.common import MARKERS, Figure, integer_axis, obj_label, plt
from lab.report.study import axis_key

if TYPE_CHECKING:
    from lab.report.study import StudyAnalysis


def fig_axis(sa: StudyAnalysis, path: Path) -> Figure | None:
    """Mean over seeds vs the axis with seeds as dots and the CI as a band; falls back to
    fig_categories when no arm is ordered."""
    groups = [g for g in sa.groups if sa.ordered(g)]
    if not groups:
        return fig_categories(sa, path)
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.4, 4.0))
    # Arms swept along different keys (loops, layers) share one x axis only through what they
    # have in common: the effective depth (blocks executed per token).
    done = [s for ss in sa.groups.values() for s in ss if s.n]
    by_depth = len({axis_key(sa.meta, g) for g in groups}) > 1 and all(
        s.costs.get("effective_depth") for s in done)

    def x_of(s) -> float:
        return float(s.costs["effective_depth"]) if by_depth else s.axis

    xs_all = [x_of(s) for g in groups for s in sa.groups[g] if s.n]
    span = max(xs_all) - min(xs_all)
    for i, g in enumerate(groups):
        ss = [s for s in sa.groups[g] if s.n]
        color, marker = f"C{i}", MARKERS[i % len(MARKERS)]
        # Arms share the axis; a small offset keeps identical results visible side by side.
        dx = (i - (len(groups) - 1) / 2) * 0.015 * (span or 1)
        xs = [x_of(s) + dx for s in ss]
        for s, x in zip(ss, xs, strict=True):
            ax.scatter([x] * len(s.values), [v * sa.scale for v in s.values], s=14,
                       color=color, alpha=0.45, linewidths=0, marker=marker)
        ax.plot(xs, [s.mean * sa.scale for s in ss], marker=marker, color=color,
                label=g or "mean", ms=5, ls="-" if i == 0 else "--")
        lo = [s.ci_low * sa.scale if math.isfinite(s.ci_low) else s.mean * sa.scale for s in ss]
        hi = [s.ci_high * sa.scale if math.isfinite(s.ci_high) else s.mean * sa.scale for s in ss]
        if "acc" in sa.objective:  # an accuracy lies in [0, 100]: clip the drawn band
            lo, hi = [max(v, 0.0) for v in lo], [min(v, sa.scale) for v in hi]
        ax.fill_between(xs, lo, hi, color=color, alpha=0.12, linewidth=0)
    if by_depth:  # the other arms (single settings) as points with their interval
        for j, g in enumerate(g for g in sa.groups if g not in groups):
            k = len(groups) + j
            for s in (s for s in sa.groups[g] if s.n):
                lo = s.ci_low if math.isfinite(s.ci_low) else s.mean
                hi = s.ci_high if math.isfinite(s.ci_high) else s.mean
                ax.errorbar([x_of(s)], [s.mean * sa.scale],
                            yerr=[[(s.mean - lo) * sa.scale], [(hi - s.mean) * sa.scale]],
                            fmt=MARKERS[k % len(MARKERS)], color=f"C{k}", capsize=3, ms=6,
                            label=s.setting if len(sa.groups[g]) > 1 else g)
    if sa.chance is not None:
        ax.axhline(sa.chance * sa.scale, color="grey", ls=":", lw=1, label="chance")
    integer_axis(ax, xs_all)
    keys = [axis_key(sa.meta, g) or "" for g in groups]
    ax.set_xlabel("effective depth (blocks executed per token)" if by_depth else
                  " / ".join(dict.fromkeys(f"{k} ({g})" if len(groups) > 1 else k
                                           for k, g in zip(keys, groups, strict=True))))
    ax.set_ylabel(obj_label(sa))
    ax.set_title(f"{sa.abl.study}: mean over seeds (dots: seeds; band: "
                 f"{int(sa.confidence * 100)}% CI" + (", clipped to [0, 100]" if "acc" in sa.objective
                                                      else "") + ")", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    pyplot.close(fig)
    return Figure(path.name)


def fig_categories(sa: StudyAnalysis, path: Path) -> Figure | None:
    """The objective per setting (seeds as dots, mean with its CI), one row per setting so
    that long labels never collide; None without results."""
    pyplot = plt()
    ss = [s for s in sa.stats if s.n]
    if not ss:
        return None
    fig, ax = pyplot.subplots(figsize=(7.0, 1.5 + 0.42 * len(ss)))
    for i, s in enumerate(ss):
        ax.scatter([v * sa.scale for v in s.values], [i] * len(s.values), s=14, color="C0",
                   alpha=0.45, linewidths=0, label="seeds" if i == 0 else None)
        err = [[(s.mean - s.ci_low) * sa.scale if math.isfinite(s.ci_low) else 0],
               [(s.ci_high - s.mean) * sa.scale if math.isfinite(s.ci_high) else 0]]
        ax.errorbar([s.mean * sa.scale], [i], xerr=err, fmt="o", color="C1", capsize=4,
                    label=f"mean, {int(sa.confidence * 100)}% CI" if i == 0 else None)
    ax.set_yticks(range(len(ss)), [s.setting for s in ss], fontsize=8)
    ax.invert_yaxis()  # table order, top to bottom
    if sa.chance is not None:
        ax.axvline(sa.chance * sa.scale, color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel(obj_label(sa) + (", lower is better" if sa.direction == "minimize" else ""))
    ax.set_title(f"{sa.abl.study}: objective per setting", fontsize=10)
    fig.tight_layout(rect=(0, 0.3 / fig.get_figheight(), 1, 1))
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
    fig.savefig(path)
    pyplot.close(fig)
    return Figure(path.name)
