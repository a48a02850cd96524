"""Verdicts at every real budget, and the compute multiplier.

With ``train.budgets`` every trial carries its objective at each budget, each a model trained
and decayed for that budget (lab.train.budgets). The report gives the verdicts at each budget
and whether they say the same as at the full budget, and for each ordered arm the compute
multiplier of each setting against the arm's first one: how much more training compute the
first setting needs to reach the other's objective (lab.stats.multiplier).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from lab.stats import SettingStats, summarize
from lab.stats.multiplier import Multiplier, compute_multiplier
from lab.study.attrs import BUDGETS_ATTR

if TYPE_CHECKING:
    from lab.report.study import StudyAnalysis


def budget_keys(sa: StudyAnalysis) -> list[tuple[str, int]]:
    """(budget key, steps) of the budgets the trials recorded, smallest first."""
    seen: dict[str, int] = {}
    for r in sa.records:
        for k, b in (r.attrs.get(BUDGETS_ATTR) or {}).items():
            seen.setdefault(k, int(b["steps"]))
    return sorted(seen.items(), key=lambda kv: kv[1])


def budget_value(r, key: str, objective: str) -> float | None:
    b = (r.attrs.get(BUDGETS_ATTR) or {}).get(key)
    v = None if b is None else (b.get("metrics") or {}).get(objective)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def stats_at_budget(sa: StudyAnalysis, key: str) -> list[SettingStats]:
    recs = []
    for r in sa.records:
        if r.state != "COMPLETE":
            continue
        v = budget_value(r, key, sa.objective)
        if v is not None:
            recs.append(replace(r, value=v))
    return summarize(recs, confidence=sa.confidence, bounds=sa.bounds)


def content(v) -> tuple:
    """What a verdict says, for comparing verdicts: decided or not, and its saturation point
    (or, when inconclusive, how far gains are shown), regressions and best setting (curves) or
    its best setting and outcomes (comparisons). An undecided verdict's best setting is only
    the best mean, not a conclusion: left out."""
    best = v.best if v.supported else None
    if hasattr(v, "saturation"):
        return (v.supported, v.reason, v.saturation, v.shown_up_to, tuple(v.regressions), best)
    return (v.supported, v.reason, best, tuple(sorted(v.outcomes.items())))


def same_conclusion(a, b) -> bool:
    return content(a) == content(b)


def budget_verdicts(sa: StudyAnalysis) -> list[tuple[str, int, list]]:
    """(budget, steps, [(group, verdict)]) for every budget, the full one last."""
    keys = budget_keys(sa)
    out = []
    for key, steps in keys:
        stats = stats_at_budget(sa, key)
        verdicts = sa.verdicts() if key == keys[-1][0] else sa.verdicts(stats)
        out.append((key, steps, verdicts))
    return out


def branch_overhead(sa: StudyAnalysis) -> float | None:
    """Training steps of the branches over the steps of the runs themselves."""
    extra = own = 0.0
    for r in sa.records:
        bs = r.attrs.get(BUDGETS_ATTR) or {}
        if not bs:
            continue
        own += max(int(b["steps"]) for b in bs.values())
        extra += sum(int(b["steps"]) - int(b["branch_point"]) for b in bs.values()
                     if b.get("branch_point") is not None)
    return extra / own if own else None


def per_seed(sa: StudyAnalysis, setting: str, group: str, keys: list[str]
             ) -> dict[int, list[float]]:
    """{seed: objective at each budget} of a setting's completed trials with every budget."""
    out = {}
    for r in sa.records:
        if r.setting != setting or r.group != group or r.state != "COMPLETE":
            continue
        vals = [budget_value(r, k, sa.objective) for k in keys]
        if all(v is not None for v in vals):
            out[r.seed] = vals  # type: ignore[assignment]
    return out


def multipliers(sa: StudyAnalysis) -> list[dict]:
    """For each ordered arm, each setting against the arm's first: the compute multiplier."""
    keys = budget_keys(sa)
    if len(keys) < 2:
        return []
    names, steps = [k for k, _ in keys], [s for _, s in keys]
    log_y = sa.direction == "minimize" and sa.objective.endswith(("loss", "bpb"))
    sign = 1.0 if sa.direction == "maximize" else -1.0
    rows = []
    for g, ss, ref in sa.design.sets:
        if ref is not None or g is None:
            continue
        base = ss[0]
        flops0 = base.costs.get("train_flops_per_token")
        ref_vals = per_seed(sa, base.setting, base.group, names)
        if not flops0 or len(ref_vals) < 1:
            continue
        computes = [flops0 * s for s in steps]
        for s in ss[1:]:
            f = s.costs.get("train_flops_per_token")
            mine = {seed: v[-1] for seed, v in per_seed(sa, s.setting, s.group, names).items()}
            if not f or not mine:
                continue
            m: Multiplier = compute_multiplier(ref_vals, computes, mine, f * steps[-1], sign,
                                               log_y, sa.confidence)
            rows.append({"group": g, "setting": s.setting, "reference": base.setting,
                         "name": sa.namer(g)(s), "reference_name": sa.namer(g)(base),
                         "flops_ratio": f / flops0, "value": m.value, "low": m.low,
                         "high": m.high, "kind": m.kind})
    return rows


def budgets_lines(sa: StudyAnalysis, figures: dict) -> list[str]:
    """The report's section on budgets: verdicts per budget, stability, multipliers."""
    from lab.report.fmt import image, md_table

    rows = budget_verdicts(sa)
    if len(rows) < 2:
        return []
    full = dict(rows[-1][2])
    lines = ["### Verdicts at every budget", "",
             "Each budget is a model trained for that many steps and decayed (warm-up, stable, "
             "then a linear decay over its last "
             f"{round(100 * (sa.base.get('train', {}).get('decay_fraction') or 0.2))}% of "
             "steps), branched off one stable run per trial; each is the same computation as a "
             "run trained for that budget alone. Verdicts at smaller budgets are decided as a "
             "family of their own (they are robustness checks, not the headline)."]
    over = branch_overhead(sa)
    if over is not None:
        lines[-1] += f" The branches added {100 * over:.0f}% to the training steps of the runs."
    lines.append("")
    table = []
    for key, steps, verdicts in rows:
        for g, v in verdicts:
            same = "(full budget)" if key == rows[-1][0] else (
                "yes" if g in full and same_conclusion(full[g], v) else "**no**")
            what = (v.saturation or ("still rising" if v.supported else
                                     f"gains shown to {v.shown_up_to}" if v.shown_up_to else "-")
                    ) if hasattr(v, "saturation") else v.best
            table.append([f"{float(key):g} ({steps} steps)", g or "all",
                          "decided" if v.supported else v.reason, what, same])
    lines += [md_table(["budget", "arm", "verdict", "levels off at / best", "same as full"],
                       table, "lllll"), ""]
    stable = all(same_conclusion(full[g], v) for _, _, vs in rows[:-1] for g, v in vs
                 if g in full)
    lines += [f"- the verdicts are {'the same' if stable else '**not** the same'} at every "
              "budget: " + ("they do not depend on how long the models trained, within these "
                            "budgets." if stable else "the answer changes as the budget grows; "
                            "read the full-budget verdict as the answer at that budget only."),
              ""]
    for key, _, verdicts in rows[:-1]:
        for g, v in verdicts:
            lines.append(f"- at budget {float(key):g}{(', ' + g) if g else ''}: {v.sentence}")
    lines.append("")
    ms = multipliers(sa)
    if ms:
        conf = int(sa.confidence * 100)
        lines += ["Compute multiplier: how much more training compute (FLOPs) the arm's first "
                  "setting needs to reach each setting's objective at its full budget, read off "
                  "the first setting's objective at each budget (interpolated in log compute"
                  + (" and log objective" if sa.objective.endswith(("loss", "bpb")) else "")
                  + f"; {conf}% percentile bootstrap over seeds). Above 1: the setting is worth "
                  "more than its own compute; below 1, less. The training FLOPs ratio is the "
                  "setting's cost per token over the first's.", ""]
        lines += [md_table(
            ["arm", "setting", "vs", "training FLOPs ratio", f"compute multiplier ({conf}% CI)",
             "read"],
            [[r["group"], r["name"], r["reference_name"], f"{r['flops_ratio']:.2f}x",
              "-" if not math.isfinite(r["value"]) else
              f"{r['value']:.2f}x" + ("" if not math.isfinite(r["low"]) else
                                      f" ({r['low']:.2f} to {r['high']:.2f})"),
              r["kind"]] for r in ms], "lllrrl"), ""]
    if "budgets" in figures:
        lines += [figures["budgets"].caption, ""] + image("objective per budget",
                                                          figures["budgets"])
    return lines
