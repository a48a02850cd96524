"""Whether the comparison was fair and the verdict robust: per-setting tuning, learning curves,
the verdict at half the budget, steps to solve and success rates.

Everything is computed from the study storage: each trial's learning curve (its objective at
every validation step, ``lab.study.attrs.CURVE_ATTR``) and the tuning summary frozen on the
study (``TUNED_ATTR``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from lab.stats import SettingStats, summarize
from lab.stats.outcomes import fisher_pairs, is_thresholded, solved, success_rates
from lab.study.attrs import CURVE_ATTR

if TYPE_CHECKING:
    from lab.report.study import StudyAnalysis


@dataclass
class Curve:
    """One setting's learning curve: the objective per seed at each validation step."""

    setting: str
    group: str
    steps: list[int]
    by_seed: dict[int, list[float | None]]


def curves(sa: StudyAnalysis) -> list[Curve]:
    """Learning curves of the completed trials, per setting in the table's order."""
    out = []
    for s in sa.stats:
        by_seed: dict[int, list[float | None]] = {}
        steps: list[int] = []
        for r in sa.records:
            if r.setting != s.setting or r.group != s.group or r.state != "COMPLETE":
                continue
            c = r.attrs.get(CURVE_ATTR) or {}
            if sa.objective in c and c.get("step"):
                steps = steps or list(c["step"])
                if list(c["step"]) == steps:
                    by_seed[r.seed] = list(c[sa.objective])
        if by_seed:
            out.append(Curve(s.setting, s.group, steps, by_seed))
    return out


def stats_at_step(sa: StudyAnalysis, step: int) -> list[SettingStats]:
    """Per-setting statistics of the objective at one validation step (nearest recorded)."""
    recs = []
    for r in sa.records:
        c = r.attrs.get(CURVE_ATTR) or {}
        if r.state != "COMPLETE" or sa.objective not in c or not c.get("step"):
            continue
        i = min(range(len(c["step"])), key=lambda i: abs(c["step"][i] - step))
        v = c[sa.objective][i]
        if v is not None:
            recs.append(replace(r, value=float(v)))
    return summarize(recs, confidence=sa.confidence, bounds=sa.bounds)


def half_budget(sa: StudyAnalysis) -> tuple[int, list[tuple[str, object]]] | None:
    """(step, verdicts) at the validation step nearest half the training steps, or None when
    the trials kept no learning curve."""
    cs = curves(sa)
    if not cs:
        return None
    total = max(max(c.steps) for c in cs)
    step = min({st for c in cs for st in c.steps}, key=lambda st: abs(st - total / 2))
    if step >= total:
        return None
    stats = stats_at_step(sa, step)
    return step, sa.verdicts(stats)


def same_conclusion(a, b) -> bool:
    """Whether two verdicts say the same thing (lab.report.budgets.content): decided or not,
    the saturation point, regressions and best setting, or the comparison's outcomes."""
    from lab.report.budgets import same_conclusion as same

    return same(a, b)


def best_by_group(sa: StudyAnalysis, stats: list[SettingStats]) -> dict[str, str]:
    """Each verdict's best setting (by its mean) for these statistics: {group: setting}."""
    sign = 1.0 if sa.direction == "maximize" else -1.0
    out = {}
    for g, ss in groupby_group(stats).items():
        done = [s for s in ss if s.n]
        if len(done) > 1:
            out[g] = max(done, key=lambda s: sign * s.mean).setting
    return out


def groupby_group(stats: list[SettingStats]) -> dict[str, list[SettingStats]]:
    """Settings by arm, grouped as their verdicts are (lab.report.study.verdict_sets: when
    every arm is one setting they are pooled, here under "")."""
    from lab.report.study import verdict_sets

    by: dict[str, list[SettingStats]] = {}
    for s in stats:
        by.setdefault(s.group, []).append(s)
    return {g or "": ss for g, ss in verdict_sets(list(by), by)}


def seed_robustness(sa: StudyAnalysis) -> dict[str, list[tuple[int, str]]]:
    """Per arm: the best setting with each measured seed left out, [(seed, best)]. Empty when
    fewer than 3 seeds completed (a single seed has no spread to speak of)."""
    seeds = sorted({r.seed for r in sa.records if r.state == "COMPLETE"})
    if len(seeds) < 3:
        return {}
    out: dict[str, list[tuple[int, str]]] = {}
    for seed in seeds:
        recs = [r for r in sa.records if r.seed != seed]
        for g, best in best_by_group(sa, summarize(recs, confidence=sa.confidence,
                                                   bounds=sa.bounds)).items():
            out.setdefault(g, []).append((seed, best))
    return out


def verdict_without_each_seed(sa: StudyAnalysis) -> dict[str, list[tuple[int, bool]]]:
    """Per arm: whether its verdict says the same (same_conclusion) with each measured seed
    left out, [(seed, same)]; each leave-one-out study decided as one family. Empty with
    fewer than 3 seeds."""
    seeds = sorted({r.seed for r in sa.records if r.state == "COMPLETE"})
    if len(seeds) < 3 or not hasattr(sa, "design"):
        return {}
    full = dict(sa.verdicts())
    out: dict[str, list[tuple[int, bool]]] = {}
    for seed in seeds:
        recs = [r for r in sa.records if r.seed != seed]
        stats = summarize(recs, confidence=sa.confidence, bounds=sa.bounds)
        for g, v in sa.verdicts(stats):
            if g in full:
                out.setdefault(g, []).append((seed, same_conclusion(full[g], v)))
    return out


def lr_robustness(sa: StudyAnalysis) -> list[dict]:
    """Whether each arm's ranking holds at every tuning point (the tuning seeds, budget and
    split): per arm and point, the tuning objective of each setting, the best setting, and the
    Spearman correlation of the ranking with the measured means. Points where a setting has
    no completed tuning run (pruned) are listed with what was measured."""
    from scipy.stats import spearmanr

    if not sa.tuned:
        return []
    sign = 1.0 if sa.direction == "maximize" else -1.0
    rows = []
    for g, ss in groupby_group([s for s in sa.stats if s.n]).items():
        if len(ss) < 2:
            continue
        labels = list(dict.fromkeys(p["label"] for s in ss
                                    for p in (sa.tuned.get(s.setting) or {}).get("points", [])))
        for label in labels:
            vals = {}
            for s in ss:
                pts = {p["label"]: p for p in (sa.tuned.get(s.setting) or {}).get("points", [])}
                v = pts.get(label, {}).get("value")
                if v is not None:
                    vals[s.setting] = v
            done = [s for s in ss if s.setting in vals]
            best = max(done, key=lambda s: sign * vals[s.setting]).setting if done else None
            rho = None
            if len(done) > 2:
                r = spearmanr([vals[s.setting] for s in done], [s.mean for s in done]).statistic
                rho = float(r) if math.isfinite(r) else None
            rows.append({"group": g, "point": label, "values": vals, "best": best,
                         "rho": rho, "complete": len(done) == len(ss),
                         "measured_best": max(ss, key=lambda s: sign * s.mean).setting})
    return rows


def steps_to_solve(sa: StudyAnalysis) -> dict[str, list[int | None]]:
    """Per setting, each completed seed's first validation step at or past the solve
    threshold (None: never)."""
    if sa.solve_threshold is None:
        return {}
    sign = 1.0 if sa.direction == "maximize" else -1.0
    out: dict[str, list[int | None]] = {}
    for c in curves(sa):
        firsts = []
        for seed in sorted(c.by_seed):
            vals = c.by_seed[seed]
            hit = next((st for st, v in zip(c.steps, vals, strict=False)
                        if v is not None and solved(v, sa.solve_threshold, sign)), None)
            firsts.append(hit)
        out[c.setting] = firsts
    return out


def outcome_rows(sa: StudyAnalysis):
    """Success rates per setting when outcomes are thresholded (some setting both solved and
    failed across seeds), with Fisher's test between neighbours; else None."""
    if sa.solve_threshold is None:
        return None
    sign = 1.0 if sa.direction == "maximize" else -1.0
    ss = [s for s in sa.stats if s.n]
    rates = success_rates(ss, sa.solve_threshold, sign, sa.confidence)
    if not is_thresholded(rates):
        return None
    return rates, fisher_pairs(rates)


def phase_compute(sa: StudyAnalysis) -> dict[str, float]:
    """Training steps and wall time of the tuning phase and of the measured trials."""
    tune_steps = sum(float(t.get("steps") or 0) for t in sa.tuned.values())
    tune_wall = sum(float(t.get("wall_time_s") or 0) for t in sa.tuned.values())
    steps = wall = 0.0
    for r in sa.records:
        if r.state in ("COMPLETE", "FAIL", "PRUNED"):
            steps += float((r.attrs.get(CURVE_ATTR) or {}).get("step", [0])[-1] or 0)
            wall += float(r.attrs.get("wall_time_s") or 0)
    return {"tune_steps": tune_steps, "tune_wall_s": tune_wall, "steps": steps, "wall_s": wall}


def fmt_steps(xs: list[int | None]) -> str:
    return ", ".join("never" if x is None else str(x) for x in xs)


def finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


# --------------------------------------------------------------------------------------------
# The report section


def protocol_section(sa: StudyAnalysis, verdicts, figures: dict) -> list[str]:
    """"Was it fair, and does it hold?": tuning, learning curves, half budget, outcomes."""
    from lab.report.fmt import fmt_num, fmt_obj, image, md_table, pct

    lines = ["## Protocol: tuning, learning curves, robustness", ""]
    if sa.tuned:
        keys = list(dict.fromkeys(k for t in sa.tuned.values() for k in t.get("params", {})))
        rows = []
        for label, t in sa.tuned.items():
            done = sum(p["n"] for p in t.get("points", []))
            rows.append([label, *[fmt_tuned(t.get("params", {}).get(k)) for k in keys],
                         fit_text(t), fmt_obj(t.get("value"), sa.objective),
                         f"{done} / {t.get('pruned', 0)} / {t.get('trials', 0)}"])
        shared = any((t.get("share") or "setting") == "arm" for t in sa.tuned.values())
        fits = [t.get("fit") for t in sa.tuned.values() if t.get("fit")]
        interior = sum(bool(f.get("interior")) for f in fits)
        lines += [
            "Every setting had its own search before its measured seeds ran (values tuned: "
            + ", ".join(f"`{k}`" for k in keys) + (", one learning rate per arm from a pooled "
                                                   "fit" if shared else "")
            + "). Tuning trials use their own seeds and the task's `tune` split, never the "
            "reported validation split, and never enter a verdict; no point is pruned before "
            "it is compared with its neighbours. The learning rate is the vertex of a "
            "quadratic fit of the objective in log lr around the best grid point (up to two "
            "points on each side); a best point at the grid's edge grows the grid on that "
            "side." + (f" The chosen rate is bracketed (interior, with completed points on "
                       f"both sides) for {interior} of {len(fits)} settings." if fits else ""),
            "",
            md_table(["setting", *keys, "how it was chosen", "tuning objective (best point)",
                      "tuning trials done / pruned / all"], rows), ""]
        if "sensitivity" in figures:
            lines += [figures["sensitivity"].caption, ""] + image("tuning sensitivity",
                                                                  figures["sensitivity"])
        pc = phase_compute(sa)
        if pc["steps"]:
            lines += [f"Compute: tuning trained {fmt_num(pc['tune_steps'])} steps "
                      f"({pc['tune_wall_s'] / 60:.1f} min), the measured trials "
                      f"{fmt_num(pc['steps'])} steps ({pc['wall_s'] / 60:.1f} min): tuning cost "
                      f"{pc['tune_steps'] / pc['steps']:.2f}x the measured phase.", ""]
    else:
        lines += ["Every setting ran with the same, untuned hyperparameters (the base config): "
                  "a setting may win or lose by its fit to them. Add a `tune:` section to the "
                  "ablation to tune per setting.", ""]
    if "curves" in figures:
        lines += [figures["curves"].caption, ""] + image("learning curves", figures["curves"])
    from lab.report.budgets import budget_keys, budgets_lines

    if len(budget_keys(sa)) > 1:
        lines += budgets_lines(sa, figures)
    else:
        hb = half_budget(sa)
        if hb is not None and verdicts:
            step, half = hb
            full = dict(verdicts)
            for g, v in half:
                if g not in full:
                    continue
                held = same_conclusion(full[g], v)
                lines.append(f"- {(g + ': ') if g and len(half) > 1 else ''}at step {step}, "
                             "halfway through the full-length schedule (a snapshot of the run, "
                             "not a model trained and decayed for that budget; budgets: "
                             "train.budgets) the verdict " + ("says the same: " if held else
                                                              "**differs**: ") + v.sentence)
            lines.append("")
    lines += robustness_lines(sa)
    sts = steps_to_solve(sa)
    if any(x is not None for xs in sts.values() for x in xs):
        rows = [[k, fmt_steps(v)] for k, v in sts.items()]
        lines += [f"Steps to solve (first validation step with `{sa.objective}` at or past "
                  f"{fmt_obj(sa.solve_threshold, sa.objective)}), per seed:", "",
                  md_table(["setting", "steps to solve (per seed)"], rows), ""]
    oc = outcome_rows(sa)
    if oc is not None:
        rates, pairs = oc
        conf = int(sa.confidence * 100)
        lines += [f"Outcomes are thresholded (some setting solved on some seeds and not on "
                  f"others), so means over seeds are fragile. Success rates (objective at or past "
                  f"{fmt_obj(sa.solve_threshold, sa.objective)}) with exact Clopper-Pearson "
                  f"{conf}% intervals, and Fisher's exact test between neighbouring settings:", "",
                  md_table(["setting", "solved / seeds", f"success rate ({conf}% CI)"],
                           [[r.setting, f"{r.solved} / {r.n}",
                             f"{pct(r.rate)} ({pct(r.low)} to {pct(r.high)})"] for r in rates]), ""]
        lines += [f"- {a} vs {b}: Fisher p = {p:.3g}" for a, b, p in pairs] + [""]
    return lines


def robustness_lines(sa: StudyAnalysis) -> list[str]:
    """Did the ranking hold at other learning rates (the tuning points) and without each
    seed?"""
    from lab.report.fmt import md_table

    lines = []
    lr = lr_robustness(sa)
    if lr:
        lines += ["Other learning rates: each arm's settings at every tuning point (tuning seeds, "
                  "tuning split, the tuning budget), against the measured ranking. rho is "
                  "Spearman's rank correlation between the tuning objectives at that point and "
                  "the measured means (1: the same order); '-' where a setting's run was pruned.",
                  ""]
        rows = [[r["group"] or "-", r["point"], str(len(r["values"])),
                 r["best"] or "-", "-" if r["rho"] is None else f"{r['rho']:+.2f}",
                 "-" if r["best"] is None else
                 "yes" if r["best"] == r["measured_best"] else "no"] for r in lr]
        lines += [md_table(["arm", "tuning point", "settings scored", "best there",
                            "rho vs measured", "same best as measured"], rows, "llrlrl"), ""]
        held = [r for r in lr if r["complete"]]
        if held:
            same = sum(r["best"] == r["measured_best"] for r in held)
            lines += [f"- learning rate: at {same} of {len(held)} tuning points where every "
                      "setting of the arm completed, the best setting is the measured best.", ""]
    for g, pairs in verdict_without_each_seed(sa).items():
        what = f"{g}: " if g else ""
        moved = [sd for sd, same in pairs if not same]
        lines.append(f"- verdict without one seed: {what}" + (
            f"with any one of the {len(pairs)} seeds left out, the verdict says the same."
            if not moved else "the verdict changes without seed "
            + ", ".join(map(str, moved)) + f" (of {len(pairs)} seeds): it rests on those seeds."))
    lines += recheck_lines(sa)
    sr = seed_robustness(sa)
    for g, pairs in sr.items():
        bests = {b for _, b in pairs}
        what = f"{g}: " if g else ""
        if len(bests) == 1:
            lines.append(f"- seeds: {what}with any one seed left out, the best setting stays "
                         f"{pairs[0][1]}.")
        else:
            lines.append(f"- seeds: {what}the best setting depends on the seeds: "
                         + "; ".join(f"without seed {sd} it is {b}" for sd, b in pairs) + ".")
    if sr:
        lines.append("")
    return lines


def recheck_lines(sa: StudyAnalysis) -> list[str]:
    """The headline comparison again at one common learning rate (lab.study.recheck)."""
    from lab.stats.family import decide
    from lab.stats.verdicts import Gain, amount, compare
    from lab.study.attrs import RECHECK_ATTR

    rc = sa.study.user_attrs.get(RECHECK_ATTR) if sa.study is not None else None
    if not rc or not rc.get("values"):
        return []
    ref = next((s for s in sa.stats if s.setting == rc["reference"]), None)
    best = next((s for s in sa.stats if s.setting == rc["label"]), None)
    if ref is None or best is None:
        return []
    before = sa.decision(ref, best)
    again = replace(best, values=[rc["values"][k] for k in sorted(rc["values"], key=int)])
    c = compare(ref, again, sa.verdict_options)
    now = decide(c, 1 - sa.confidence)
    lo, hi = c.interval(sa.confidence)
    lr = next(iter(rc["point"].values()))
    held = now.outcome == before.outcome
    return [f"- one common learning rate: {rc['label']} trained again on the seeds of "
            f"{rc['reference']} at its learning rate ({lr:.3g}) gives "
            f"{amount(Gain(ref.setting, best.setting, c.diff, lo, hi), sa.verdict_options)} "
            f"against it ({now.outcome}, tested alone); at their own rates the decision was "
            f"{before.outcome}: " + ("it holds at one rate." if held else
                                      "**it does not hold at one rate**: part of the "
                                      "difference is the learning rate."), ""]


def fit_text(t: dict) -> str:
    f = t.get("fit")
    if t.get("same_model_as"):
        return f"= {t['same_model_as']} (the same model)"
    if not f:
        return "best point"
    if f.get("edge"):
        return f"best at the {f['edge']} edge of the grown grid: not bracketed"
    if f.get("fitted"):
        return (f"vertex, {len(f.get('window') or [])} points ({f.get('below')} below, "
                f"{f.get('above')} above)")
    return "best point (the fit has no minimum)"


def fmt_tuned(v) -> str:
    return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)
