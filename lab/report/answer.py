"""The report's opening: the answer, one line per arm, before the evidence.

Each line says what the arm's verdict decided (or what would decide it), its best setting with
its cost against the arm's reference, and the strongest caveat the report's own checks found.
Everything is read off the verdict objects (:class:`lab.stats.CurveVerdict`,
:class:`lab.stats.CompareVerdict`: saturation, regressions, outcomes, seeds needed, best), the
report's decisions on the matched pairs and the protocol's robustness checks; nothing here
judges a difference itself.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from lab.report.fmt import fmt_obj, fmt_ratio
from lab.stats import CurveVerdict, SettingStats
from lab.stats.verdicts import SEED_CAP

if TYPE_CHECKING:
    from lab.report.study import StudyAnalysis

OUTCOME_WORDS = {"better": "better than {ref}", "equivalent": "equivalent to {ref} (TOST)",
                 "worse": "worse than {ref}",
                 "open": "not distinguishable from {ref} at this precision"}


def answer_lines(sa: StudyAnalysis, verdicts: list[tuple[str, object]]) -> list[str]:
    """The Answer block's lines (markdown), in verdict order; the arms comparison first when
    the ablation leads with it (analysis.verdict: arms)."""
    lines = [arm_line(sa, g, v) for g, v in verdicts]
    arms = arms_line(sa)
    if arms:
        lead = (sa.meta.get("analysis") or {}).get("verdict") == "arms"
        lines = [arms, *lines] if lead else [*lines, arms]
    multiplier = multiplier_line(sa)
    return [*lines, multiplier] if multiplier else lines


def multiplier_line(sa: StudyAnalysis) -> str:
    """Where the study has budgets: the compute multiplier of each ordered arm's first step
    (its second setting against its first), side by side."""
    from lab.report.budgets import multipliers

    firsts: dict[str, dict] = {}
    for r in multipliers(sa):
        firsts.setdefault(r["group"], r)
    parts = []
    for r in firsts.values():
        if not math.isfinite(r["value"]):  # not computable
            continue
        ci = (f", {int(sa.confidence * 100)}% CI {r['low']:.2f} to {r['high']:.2f}"
              if math.isfinite(r["low"]) else "")
        note = ", extrapolated" if r["kind"] == "extrapolated" else ""
        parts.append(f"{r['name']} against {r['reference_name']} is worth {r['value']:.2f}x "
                     f"its {r['flops_ratio']:.2f}x training compute{ci}{note}")
    if not parts:
        return ""
    return ("**Compute multiplier** (the training compute the first setting would need to reach "
            "the second's objective, over the second's own; above 1 the step is worth more than "
            "it costs): " + "; ".join(parts) + ".")


def arm_name(sa: StudyAnalysis, group: str) -> str:
    if group:
        return group
    return "all arms (one setting each)" if len(sa.groups) > 1 else sa.abl.study


def arm_line(sa: StudyAnalysis, group: str, v) -> str:
    """'**arm**: verdict. Best: setting (value), cost. Caveat: ...'"""
    ss = members(sa, group)
    best = named(sa, group, ss, v.best)
    ref = reference(sa, group, ss, v)
    parts = [f"**{arm_name(sa, group)}**: {decision(v, ref.setting if ref else '')}."]
    if best is not None:
        what = f"Best: {v.best} ({fmt_obj(best.mean, sa.objective)})"
        cost = cost_phrase(sa, best, ref, name=lambda s: display(sa, group, s))
        parts.append(f"{what}{', ' + cost if cost else ''}.")
    parts.append(f"Caveat: {caveat(sa, group, v)}.")
    return " ".join(parts)


def decision(v, ref: str = "") -> str:
    """What the verdict decided, or what would decide it, from its fields (saturation,
    regressions, outcomes, seeds needed), not from its wording."""
    if isinstance(v, CurveVerdict):
        if v.supported:
            out = (f"levels off at {v.saturation}" if v.saturation is not None else
                   "still gaining at the end of the range")
            if v.regressions:
                out += f"; regresses at {', '.join(v.regressions)}"
            return out
        if v.reason == "inconclusive":
            return f"undecided: {need(v)}"
        return f"no verdict ({v.reason})"
    outcomes = getattr(v, "outcomes", None) or {}
    if v.reason not in ("", "inconclusive") or not outcomes:
        return f"no verdict ({v.reason})" if v.reason else "decided"
    parts = []
    for outcome, words in OUTCOME_WORDS.items():
        keys = [k for k, x in outcomes.items() if x == outcome]
        if keys:
            parts.append(f"{words.format(ref=ref or 'the reference')}: {', '.join(keys)}")
    if not v.supported:
        rest = any(x != "open" for x in outcomes.values())
        parts.append(need(v).replace("decide it", "decide the rest") if rest else need(v))
    return ("decided: " if v.supported else "undecided: ") + "; ".join(parts)


def need(v) -> str:
    """How many seeds per setting would decide an open verdict (the verdict's own estimate)."""
    if getattr(v, "seeds_over_cap", False):
        return f"more than {SEED_CAP} seeds per setting would be needed to decide it"
    n = getattr(v, "seeds_needed", None)
    return (f"about {n} seeds per setting would decide it" if n else
            "more seeds per setting would decide it")


def members(sa: StudyAnalysis, group: str) -> list[SettingStats]:
    """The settings a verdict is about: the arm's, or every single-setting arm's (pooled)."""
    from lab.report.study import verdict_sets

    for g, ss in verdict_sets(list(sa.groups), sa.groups):
        if (g or "") == group:
            return ss
    return []


def display(sa: StudyAnalysis, group: str, s: SettingStats) -> str:
    """A setting's name as its verdict writes it ('3 loops' on an axis, else its label)."""
    return sa.namer(group)(s) if group and sa.ordered(group) else s.setting


def named(sa: StudyAnalysis, group: str, ss: list[SettingStats], name: str
          ) -> SettingStats | None:
    return next((s for s in ss if display(sa, group, s) == name and s.n), None)


def reference(sa: StudyAnalysis, group: str, ss: list[SettingStats], v) -> SettingStats | None:
    """What the best setting's cost is compared with: the first setting of a curve (the
    cheapest along its axis), the reference of a comparison."""
    done = [s for s in ss if s.n]
    if not done:
        return None
    if isinstance(v, CurveVerdict):
        return done[0]
    return next((s for s in done if s.setting == sa.reference), done[0])


def reference_name(sa: StudyAnalysis, group: str, v) -> str:
    ref = reference(sa, group, members(sa, group), v)
    return ref.setting if ref else ""


def cost_phrase(sa: StudyAnalysis, best: SettingStats, ref: SettingStats | None, name) -> str:
    """The best setting's cost against the reference: the paired latency ratio where the cost
    pass ran (named only when its interval excludes 1), else FLOPs per token."""
    if ref is None:
        return ""
    if ref.setting == best.setting:
        return "the reference itself"
    lat = sa.latency_ratio(best.setting, ref.setting)
    if lat is not None:
        r, lo, hi = lat
        ratio = fmt_ratio(r, lo, hi, sa.confidence)
        if lo <= 1 <= hi:
            return f"the {sa.latency_noun} of {name(ref)} within measurement: {ratio}"
        x, rest = ratio.split(" ", 1)
        return f"{x} the {sa.latency_noun} of {name(ref)} {rest}"
    a, b = best.costs.get("flops_per_token"), ref.costs.get("flops_per_token")
    if a and b:
        return f"{fmt_ratio(a / b)} the FLOPs per token of {name(ref)}"
    return ""


def caveat(sa: StudyAnalysis, group: str, v) -> str:
    """The strongest caveat of an arm's verdict, in this order: settings it could not judge
    (or judged on fewer seeds), a verdict that differs at a smaller budget (or halfway through
    training), a verdict that changes with one seed left out, a best setting that changes with
    one seed left out, a best setting that differs at other learning rates."""
    from lab.report.budgets import budget_keys, budget_verdicts
    from lab.report.failures import verdict_caveats
    from lab.report.protocol import (
        half_budget,
        lr_robustness,
        same_conclusion,
        seed_robustness,
        verdict_without_each_seed,
    )

    missing = verdict_caveats(sa, group).strip()
    if missing:
        return missing[0].lower() + missing[1:].rstrip(".")
    held = []
    if len(budget_keys(sa)) > 1:
        for _, steps, vs in budget_verdicts(sa)[:-1]:
            other = dict(vs).get(group)
            if other is not None and not same_conclusion(v, other):
                return (f"at the {steps}-step budget the verdict differs: "
                        f"{decision(other, reference_name(sa, group, other))}")
        held.append("the verdict is the same at every budget")
    elif (hb := half_budget(sa)) is not None:
        step, half = hb
        other = dict(half).get(group)
        if other is not None and not same_conclusion(v, other):
            return (f"halfway through training (step {step}) the verdict differs: "
                    f"{decision(other, reference_name(sa, group, other))}")
        held.append("the verdict holds halfway through training")
    moved = [sd for sd, same in verdict_without_each_seed(sa).get(group) or [] if not same]
    if moved:
        return ("the verdict changes without seed " + ", ".join(map(str, moved))
                + ": it rests on those seeds")
    bests = dict(seed_robustness(sa)).get(group) or []
    names = list(dict.fromkeys(b for _, b in bests))
    if len(names) > 1:
        return "the best setting changes with the seed left out (" + " or ".join(names) + ")"
    if bests:
        held.append("the verdict and the best setting survive leaving out any one seed")
    points = [r for r in lr_robustness(sa) if (r["group"] or "") == group and r["complete"]]
    differ = [r for r in points if r["best"] != r["measured_best"]]
    if differ:
        return (f"at {len(differ)} of {len(points)} other learning rates tried in tuning the "
                "best setting is another one")
    if points:
        held.append("it is also best at every learning rate tried in tuning")
    return "none found (" + "; ".join(held) + ")" if held else "no robustness check could run"


def arms_line(sa: StudyAnalysis) -> str | None:
    """The primary arm against the arm it is matched with at the most effective depths, in
    the report's decisions on those pairs (StudyAnalysis.matched_depth: better, worse,
    equivalent, not distinguishable); other pairings are counted and left to the Verdict
    section."""
    rows = sa.matched_depth()
    if not rows or sa.arm_sentence() is None:
        return None
    others = [r["other_group"] for r in rows]
    main = max(dict.fromkeys(others), key=others.count)
    mine = [r for r in rows if r["other_group"] == main]
    words = {"identical": "the same model", "better": "better", "worse": "worse",
             "equivalent": "equivalent (TOST)", "open": "not distinguishable at this precision"}
    bits = []
    for outcome, word in words.items():
        rs = [r for r in mine if r["outcome"] == outcome]
        if rs:
            bits.append(f"{word} at {', '.join(r['name'] for r in rs)}")
    more = len(rows) - len(mine)
    g0 = rows[0]["group"]
    return (f"**{g0} against {main}** at equal effective depth: " + "; ".join(bits) + "."
            + (f" {more} more pairing{'s' if more > 1 else ''} (other arms, equal FLOPs) under "
               "Verdict." if more else ""))
