"""Figures of the protocol: learning curves per setting, and the tuning sensitivity."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from lab.report.figures.common import Figure, obj_label, plt
from lab.report.protocol import curves
from lab.stats import mean_ci

if TYPE_CHECKING:
    from lab.report.study import StudyAnalysis


def fig_learning_curves(sa: StudyAnalysis, path: Path) -> Figure | None:
    """The objective against training steps: per setting the mean over seeds and its CI band,
    one panel per verdict (an arm, or every single-setting arm together), all panels on one
    y axis, at most three panels a row."""
    from lab.report.study import verdict_sets

    cs = curves(sa)
    if not cs:
        return None
    of = {(c.group, c.setting): c for c in cs}
    by = {g: [s for s in ss if (g, s.setting) in of] for g, ss in sa.groups.items()}
    panels = [(g, [of[(s.group, s.setting)] for s in ss])
              for g, ss in verdict_sets([g for g in by if by[g]], by)]
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    pyplot = plt()
    fig, axes = pyplot.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.8 * nrow), squeeze=False,
                                sharey=True)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (g, panel) in zip(axes.flat, panels, strict=False):
        for i, c in enumerate(panel):
            means, lo, hi = [], [], []
            for j in range(len(c.steps)):
                vals = [v[j] for v in c.by_seed.values() if j < len(v) and v[j] is not None]
                m, _, a, b = mean_ci(vals, sa.confidence)
                if sa.bounds is not None and math.isfinite(a):
                    a, b = max(a, sa.bounds[0]), min(b, sa.bounds[1])
                means.append(m * sa.scale)
                lo.append((a if math.isfinite(a) else m) * sa.scale)
                hi.append((b if math.isfinite(b) else m) * sa.scale)
            ax.plot(c.steps, means, color=f"C{i % 10}", label=c.setting, lw=1.4)
            ax.fill_between(c.steps, lo, hi, color=f"C{i % 10}", alpha=0.12, linewidth=0)
        ax.set_xlabel("training step")
        ax.set_ylabel(obj_label(sa))
        ax.set_title(g or ("every arm" if g is None else sa.abl.study), fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    pyplot.close(fig)
    return Figure(path.name, "Learning curves: the objective at every validation step, mean over "
                  f"seeds with its {int(sa.confidence * 100)}% CI band. Curves still falling "
                  "(or rising) at the end mean the budget, not only the architecture, decides.")


def fig_sensitivity(sa: StudyAnalysis, path: Path) -> Figure | None:
    """The tuning objective against the first tuned value, one line per setting."""
    if not sa.tuned:
        return None
    key = next((k for t in sa.tuned.values() for k in t.get("params", {})), None)
    if key is None:
        return None
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.4, 4.0))
    logx = False
    for i, (label, t) in enumerate(sa.tuned.items()):
        pts = sorted((p["params"][key], p["value"]) for p in t.get("points", [])
                     if key in p["params"] and p["value"] is not None)
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        logx |= all(isinstance(x, int | float) and x > 0 for x in xs) and max(xs) / min(xs) > 20
        ax.plot(xs, [y * sa.scale for y in ys], marker="o", ms=4, color=f"C{i % 10}", label=label)
        chosen = t.get("params", {}).get(key)
        if chosen in xs:
            ax.scatter([chosen], [ys[xs.index(chosen)] * sa.scale], s=70, facecolors="none",
                       edgecolors=f"C{i % 10}")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel("tuning " + obj_label(sa))
    ax.set_title("tuning: completed points (circled: chosen); pruned points are not drawn",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    pyplot.close(fig)
    return Figure(path.name, f"Sensitivity to `{key}`: each setting's tuning objective (tune "
                  "split, mean over tuning seeds) at each completed point. A setting whose best "
                  "point sits at the edge of the range may do better outside it.")
