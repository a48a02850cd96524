"""Accuracy against difficulty, one line per setting with its CI band over seeds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from lab.report.difficulty import by_difficulty
from lab.report.figures.common import Figure, plt
from lab.stats import mean_ci

if TYPE_CHECKING:
    from lab.report.study import StudyAnalysis


def fig_difficulty(sa: StudyAnalysis, path: Path) -> Figure | None:
    data = by_difficulty(sa, "val")
    if not data:
        return None
    ood = by_difficulty(sa, "ood")
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(7.0, 4.2))
    for i, (setting, rows) in enumerate(data.items()):
        color = f"C{i % 10}"
        for split, r, ls in (("val", rows, "-"), ("ood", ood.get(setting, {}), ":")):
            if not r:
                continue
            xs = list(r)
            stats = [mean_ci(v, sa.confidence) for v in r.values()]
            m = [100 * s[0] for s in stats]
            lo = [100 * max(0.0, s[2]) if math.isfinite(s[2]) else 100 * s[0] for s in stats]
            hi = [100 * min(1.0, s[3]) if math.isfinite(s[3]) else 100 * s[0] for s in stats]
            ax.plot(xs, m, ls=ls, marker="o", ms=3, color=color,
                    label=setting if split == "val" else None)
            ax.fill_between(xs, lo, hi, color=color, alpha=0.10, linewidth=0)
    floors = sa.task.get("floors") or {}
    if floors:
        fx = sorted(int(k) for k in floors)
        ax.plot(fx, [100 * floors[str(k)] if str(k) in floors else 100 * floors[k] for k in fx],
                color="grey", ls="--", lw=1, label="shortcut floor")
    ax.set_xlabel(sa.task.get("difficulty_name") or "difficulty")
    ax.set_ylabel("token accuracy (%)")
    ax.set_ylim(0, 102)
    ax.set_title("accuracy by difficulty: validation (solid) and OOD (dotted), mean over seeds "
                 f"with {int(sa.confidence * 100)}% CI", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    pyplot.close(fig)
    return Figure(path.name)
