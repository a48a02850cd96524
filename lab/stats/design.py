"""The comparisons a study's verdicts make, decided together.

A study's settings come in arms (groups). Its verdicts are:

- one per arm of several settings: a curve along the arm's axis when every setting has an
  axis value (each setting against the one before it), else a comparison of its settings with
  a reference (the ablation's ``analysis.reference``, else the arm's first setting);
- when every arm is a single setting (an ablation of a mechanism's parts), one comparison of
  all of them with the reference, pooled;
- the arms table: each setting of the primary arm against another arm's setting of equal
  effective depth (FLOPs per token within 5%), or, for a setting of another arm that no depth
  matches, the primary setting nearest in FLOPs per token (within 5%: a wider stack against a
  looped one).

All of these comparisons form one family, decided under one family-wise error rate
(lab.stats.family). Settings that are the same model under two names (`twins`: the same
resolved architecture and training, run once) are never compared with each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lab.stats.family import Comparison, Decision, Family
from lab.stats.summary import SettingStats
from lab.stats.verdicts import (
    CompareVerdict,
    CurveVerdict,
    VerdictOptions,
    compare,
    compare_verdict,
    curve_comparisons,
    curve_shape,
    curve_verdict,
    no_verdict_reason,
    reference_comparisons,
)


def verdict_sets(groups: list[str], by_group: dict[str, list[SettingStats]]
                 ) -> list[tuple[str | None, list[SettingStats]]]:
    """The sets of settings that get a verdict: each arm's completed settings (all of them
    when none completed), in `groups` order. Arms of one setting each (nested arms down to
    single settings, as in an ablation of a mechanism's parts) are pooled into one unordered
    set, named None, compared together, when every arm is a single setting (an arm of one
    setting beside arms of several is a control, read in the arms table)."""
    singles = [g for g in groups if len(by_group.get(g, [])) == 1]
    pool = len(singles) > 1 and len(singles) == len(groups)
    out: list[tuple[str | None, list[SettingStats]]] = []
    for g in groups:
        if pool and g in singles:
            continue
        ss = [s for s in by_group.get(g, []) if s.n > 0] or by_group.get(g, [])
        if ss:
            out.append((g, ss))
    if pool:
        out.append((None, [by_group[g][0] for g in singles]))
    return out


def is_ordered(ss: list[SettingStats]) -> bool:
    return len(ss) > 1 and all(s.axis is not None for s in ss)


def flops(s: SettingStats) -> float:
    return float(s.costs.get("flops_per_token") or 0.0)


def close(a: SettingStats, b: SettingStats, need: bool = False, tol: float = 0.05) -> bool:
    """FLOPs per token within `tol` of each other; unknown FLOPs count as close unless
    `need`."""
    fa, fb = flops(a), flops(b)
    if not fa or not fb:
        return not need
    return abs(fa - fb) <= tol * max(fa, fb)


def matched_pairs(primary: list[SettingStats], others: dict[str, list[SettingStats]]
                  ) -> list[tuple[SettingStats, SettingStats, str, str]]:
    """(primary setting, other setting, "depth" | "FLOPs", other arm) of the arms table."""
    done0 = [s for s in primary if s.n]
    out = []
    for other, ss in others.items():
        done = [s for s in ss if s.n]
        by_depth = {s.costs.get("effective_depth"): s for s in done}
        pairs = [(s, by_depth[s.costs.get("effective_depth")], "depth") for s in done0
                 if s.costs.get("effective_depth") in by_depth
                 and close(s, by_depth[s.costs.get("effective_depth")])]
        paired = {o.setting for _, o, _ in pairs}
        for o in done:
            near = [s for s in done0 if close(s, o, need=True)] if o.setting not in paired else []
            if near:
                s = min(near, key=lambda s: abs(flops(s) - flops(o)))
                pairs.append((s, o, "FLOPs"))
        out += [(s, o, kind, other) for s, o, kind in pairs]
    return out


@dataclass
class StudyDesign:
    """A study's verdict sets and arms table, and the one family of their comparisons."""

    options: VerdictOptions
    sets: list[tuple[str | None, list[SettingStats], str | None]]  # (group, stats, reference)
    pairs: list[tuple[SettingStats, SettingStats, str, str]]
    twins: set[frozenset[str]] = field(default_factory=set)
    family: Family = field(default_factory=Family)

    def comparable(self, a: SettingStats, b: SettingStats) -> bool:
        return self.comparable_names(a.setting, b.setting)

    def comparable_names(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self.twins

    def comparisons(self) -> list[Comparison]:
        return list(self.family.comparisons.values())


def study_design(by_group: dict[str, list[SettingStats]], groups: list[str],
                 options: VerdictOptions, *, primary: str | None = None,
                 reference: str | None = None, twins: set[frozenset[str]] | None = None,
                 family_method: str = "holm") -> StudyDesign:
    """Every comparison the study's verdicts and arms table make, in one family."""
    twins = twins or set()
    sets = []
    for g, ss in verdict_sets(groups, by_group):
        if len(ss) < 2:
            continue
        ref = None
        if not (g is not None and is_ordered(ss)):
            ref = reference if reference in {s.setting for s in ss} else ss[0].setting
        sets.append((g, ss, ref))
    g0 = primary if primary in by_group else (groups[0] if groups else None)
    pairs = []
    pooled = any(g is None for g, _, _ in sets)
    if g0 is not None and len(by_group) > 1 and not pooled:
        pairs = matched_pairs(by_group[g0], {g: by_group[g] for g in groups if g != g0})
    d = StudyDesign(options, sets, pairs, twins,
                    Family(alpha=options.alpha, method=family_method))
    for _, ss, ref in sets:
        comps = curve_comparisons(ss, options) if ref is None else \
            reference_comparisons(ss, ref, options)
        for c in comps:
            if frozenset((c.a, c.b)) not in twins:
                d.family.add(c)
    for s, o, _, _ in pairs:
        if d.comparable(s, o):
            d.family.add(compare(o, s, options))  # improvement of the primary setting
    return d


def design_verdicts(d: StudyDesign, decisions: dict[str, Decision],
                    name_of: Callable[[str | None], Callable[[SettingStats], str]] | None = None
                    ) -> list[tuple[str, CurveVerdict | CompareVerdict]]:
    """(group, verdict) for every verdict set, from the family's decisions."""
    out: list[tuple[str, CurveVerdict | CompareVerdict]] = []
    k = d.family.size
    for g, ss, ref in d.sets:
        if ref is None:
            namer = name_of(g) if name_of else (lambda s: s.setting)
            v: CurveVerdict | CompareVerdict = curve_verdict(
                ss, d.options, name=namer, decisions=decisions, family_size=k)
        else:
            v = compare_verdict(ss, ref, d.options, decisions=decisions, family_size=k)
        out.append((g or "", v))
    return out


def open_pairs(d: StudyDesign, decisions: dict[str, Decision]) -> list[tuple[str, str]]:
    """The comparisons that keep a verdict (or the arms table) open: (setting, setting).
    The same rules as the verdicts (curve_shape, an open comparison with the reference),
    without writing their sentences."""
    out: list[tuple[str, str]] = []

    def outcome(c: Comparison) -> str:
        dec = decisions.get(c.name)
        return "open" if dec is None else dec.outcome

    for _, ss, ref in d.sets:
        if no_verdict_reason(ss, lambda s: s.setting, d.options) is not None:
            continue  # too few seeds, or everything at chance: a rule, not an open test
        if ref is None:
            comps = curve_comparisons(ss, d.options)
            _, _, steps = curve_shape([outcome(c) for c in comps])
            out += [(comps[k].a, comps[k].b) for k in steps]
        else:
            out += [(c.a, c.b) for c in reference_comparisons(ss, ref, d.options)
                    if outcome(c) == "open" and d.comparable_names(c.a, c.b)]
    for s, o, _, _ in d.pairs:
        c = compare(o, s, d.options)
        dec = decisions.get(c.name)
        if d.comparable(s, o) and dec is not None and not dec.decided:
            out.append((o.setting, s.setting))
    return list(dict.fromkeys(out))
