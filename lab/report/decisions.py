"""The report's comparisons and what each decided, under the report's one family-wise error
rate (lab.stats.family), with the looks of sequential seeds (lab.stats.sequential)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lab.stats.sequential import look_alphas

if TYPE_CHECKING:
    from lab.report.study import StudyAnalysis

WORDS = {"better": "better", "worse": "worse", "equivalent": "equivalent (TOST)",
         "open": "not distinguishable at this precision"}


def decision_lines(sa: StudyAnalysis) -> list[str]:
    from lab.report.fmt import fmt_diff, md_table

    if not sa.decisions:
        return []
    lines = [sa.family_line(), ""]
    rows = []
    conf = int(sa.confidence * 100)
    for k, d in sa.decisions.items():
        c = d.comparison
        lo, hi = c.interval(sa.confidence)
        what = WORDS[d.outcome]
        if d.outcome in ("better", "worse") and (d.worthwhile_gain or d.worthwhile_loss):
            what += ", by more than the minimum gain"
        look = sa.decided_at.get(k)
        shown = fmt_diff(c.diff, lo, hi, sa.scale)
        now = sa.design.family.comparisons.get(k)
        if look is not None and look < len(sa.looks) - 1 and now is not None and now.testable:
            # Decided at an earlier look (its claims stay fixed); the verdicts quote all seeds.
            nlo, nhi = now.interval(sa.confidence)
            shown += f" at look {look + 1}; all seeds: {fmt_diff(now.diff, nlo, nhi, sa.scale)}"
        rows.append([f"{c.b} vs {c.a}", shown,
                     f"{c.p:.2g}", what,
                     "-" if d.level is None else f"{d.level:.2g}"
                     + (f" (look {look + 1})" if look is not None and len(sa.looks) > 1 else "")])
    lines += [md_table(["comparison", f"improvement ({conf}% CI, unadjusted)", "p (claims)",
                        "decision", "level decided at"], rows, "lrrll"), ""]
    if len(sa.looks) > 1 and sa.abl.seed_max:
        alphas = look_alphas(1 - sa.confidence, [lk.n for lk in sa.looks], sa.abl.seed_max)
        lines += ["Looks of the sequential seeds (seeds completed per setting, alpha spent):", ""]
        lines += [md_table(["look", "seeds per setting", "alpha spent", "decided at it"],
                           [[str(i + 1), _range(lk.seeds), f"{a:.3g}",
                             str(sum(1 for w in sa.decided_at.values() if w == i))]
                            for i, (lk, a) in enumerate(zip(sa.looks, alphas, strict=True))],
                           "lrrr"), ""]
    return lines


def _range(seeds: dict[str, int]) -> str:
    if not seeds:
        return "-"
    lo, hi = min(seeds.values()), max(seeds.values())
    return str(lo) if lo == hi else f"{lo} to {hi}"

