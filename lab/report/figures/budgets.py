"""The objective at every budget: each setting's decayed models against training steps, on
its stable run's learning curve, branch points marked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lab.report.budgets import budget_keys, stats_at_budget
from lab.report.figures.common import Figure, obj_label, plt
from lab.report.protocol import curves
from lab.study.attrs import BUDGETS_ATTR

if TYPE_CHECKING:
    from lab.report.study import StudyAnalysis


def fig_budgets(sa: StudyAnalysis, path: Path) -> Figure | None:
    keys = budget_keys(sa)
    if len(keys) < 2:
        return None
    per = {k: {(s.group, s.setting): s for s in stats_at_budget(sa, k)} for k, _ in keys}
    stable = {(c.group, c.setting): c for c in curves(sa)}
    groups = list(dict.fromkeys(s.group for s in sa.stats))
    points = sorted({int(b["branch_point"]) for r in sa.records
                     for b in (r.attrs.get(BUDGETS_ATTR) or {}).values()
                     if b.get("branch_point") is not None})
    pyplot = plt()
    fig, axes = pyplot.subplots(1, len(groups), figsize=(5.2 * len(groups), 3.9), squeeze=False,
                                sharey=True)
    for ax, g in zip(axes[0], groups, strict=True):
        for i, s in enumerate(x for x in sa.stats if x.group == g):
            color = f"C{i % 10}"
            c = stable.get((g, s.setting))
            if c is not None:  # the run itself (stable phase, then its own decay): faint
                ys = []
                for j in range(len(c.steps)):
                    vals = [v[j] for v in c.by_seed.values() if j < len(v) and v[j] is not None]
                    ys.append(sum(vals) / len(vals) * sa.scale if vals else None)
                ax.plot(c.steps, ys, color=color, lw=0.9, alpha=0.35)
            xs, ys, err = [], [], []
            for k, steps in keys:
                st = per[k].get((g, s.setting))
                if st is not None and st.n:
                    xs.append(steps)
                    ys.append(st.mean * sa.scale)
                    half = (st.ci_high - st.mean) * sa.scale if st.n > 1 else 0.0
                    err.append(half if half == half else 0.0)
            ax.errorbar(xs, ys, yerr=err, color=color, marker="o", ms=5, lw=1.5, capsize=3,
                        label=s.setting)
        for p in points:
            ax.axvline(p, color="0.5", lw=0.7, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("training steps (budget)")
        ax.set_title(g or sa.abl.study, fontsize=10)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(obj_label(sa))
    fig.tight_layout()
    fig.savefig(path)
    pyplot.close(fig)
    return Figure(path.name, "The objective at each budget (points: mean over seeds with its "
                  f"{int(sa.confidence * 100)}% CI; each a model decayed for that budget) on "
                  "the stable run's learning curve (faint); dotted lines mark where the branches "
                  "left the stable run. One y-axis for every arm.")
