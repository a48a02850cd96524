"""Accuracy by difficulty: for tasks whose examples carry a difficulty label (hops, chain
length, prefix length), each setting's accuracy per difficulty value with its interval over
seeds, the largest value it solves and the area under its accuracy-vs-difficulty curve."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from lab.stats import mean_ci
from lab.study.attrs import METRICS_ATTR

if TYPE_CHECKING:
    from lab.report.study import StudyAnalysis

KEY = re.compile(r"^(val|ood)/acc_by_difficulty/(-?\d+)$")


def by_difficulty(sa: StudyAnalysis, split: str = "val"):
    """{setting: {difficulty: [accuracy per seed]}} over completed trials, table order."""
    out: dict[str, dict[int, list[float]]] = {}
    for s in sa.stats:
        rows: dict[int, list[float]] = {}
        for r in sa.records:
            if r.setting != s.setting or r.group != s.group or r.state != "COMPLETE":
                continue
            for k, v in (r.attrs.get(METRICS_ATTR) or {}).items():
                m = KEY.match(k)
                if m and m[1] == split and v is not None:
                    rows.setdefault(int(m[2]), []).append(float(v))
        if rows:
            out[s.setting] = dict(sorted(rows.items()))
    return out


def summary_rows(sa: StudyAnalysis, split: str = "val") -> list[list[str]]:
    """Per setting: largest difficulty solved (mean and per seed) and the normalized AUC."""
    rows = []
    conf = sa.confidence
    for s in sa.stats:
        solved, auc = [], []
        for r in sa.records:
            if r.setting == s.setting and r.group == s.group and r.state == "COMPLETE":
                m = r.attrs.get(METRICS_ATTR) or {}
                if f"{split}/solved_difficulty" in m:
                    solved.append(m[f"{split}/solved_difficulty"])
                    auc.append(m[f"{split}/auc_difficulty"])
        if not solved:
            continue
        mean, _, lo, hi = mean_ci(auc, conf)
        lo, hi = max(lo, 0.0), min(hi, 1.0)  # an accuracy's interval stays in [0, 1]
        ci = f" ({100 * lo:.1f} to {100 * hi:.1f})" if lo == lo and lo != hi else ""
        rows.append([s.setting, ", ".join(f"{x:g}" for x in solved),
                     f"{sum(solved) / len(solved):.1f}", f"{100 * mean:.1f}%{ci}"])
    return rows


def difficulty_headline(sa: StudyAnalysis) -> list[str]:
    """One line under the verdict: the largest difficulty each setting solves (mean over
    seeds), for tasks with difficulty labels."""
    rows = summary_rows(sa)
    if not rows:
        return []
    name = sa.task.get("difficulty_name") or "difficulty"
    return [f"**Largest {name} solved** (validation, mean over seeds; per seed in the section "
            "on difficulty): " + "; ".join(f"{r[0]}: {r[2]}" for r in rows) + ".", ""]


def difficulty_section(sa: StudyAnalysis, figures: dict) -> list[str]:
    from lab.report.fmt import image, md_table

    rows = summary_rows(sa)
    if not rows:
        return []
    name = sa.task.get("difficulty_name") or "difficulty"
    thr = (sa.base.get("eval") or {}).get("solve_threshold", 0.95)
    lines = ["## Accuracy by difficulty", "",
             f"Validation accuracy per {name} value. A value counts as solved at "
             f"{100 * thr:.0f}% accuracy or more; the area is the mean accuracy over the values "
             f"(normalized area under the curve, {int(sa.confidence * 100)}% CI over seeds).", "",
             md_table(["setting", f"largest {name} solved (per seed)", "mean",
                       "area under accuracy-vs-difficulty"], rows), ""]
    if "difficulty" in figures:
        lines += image("accuracy by difficulty", figures["difficulty"])
    return lines
