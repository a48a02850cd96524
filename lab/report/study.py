"""One study, analysed: its trials as records, per-setting statistics, verdicts, arm comparison.

Everything is read from the study storage: study attributes and trial attributes through the
names of :mod:`lab.study.attrs`, trial states and values through Optuna's public API.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from lab.stats import (
    CompareVerdict,
    CurveVerdict,
    SettingStats,
    VerdictOptions,
    diff_ci,
    ratio_ci,
    signed,
    summarize,
)
from lab.stats.design import design_verdicts, study_design, verdict_sets
from lab.stats.family import Decision
from lab.stats.verdicts import amount, compare
from lab.study.attrs import (
    ABLATION_ATTR,
    BASE_CONFIG_ATTR,
    CONTEXT_ATTR,
    LATENCY_ATTR,
    TASK_ATTR,
    TUNED_ATTR,
)
from lab.study.records import COST_KEYS, RECORD_ATTRS, trial_records
from lab.study.seeding import bounds_of, decide_study, options_for

if TYPE_CHECKING:
    from lab.study.spec import Ablation

__all__ = ["COST_KEYS", "RECORD_ATTRS", "StudyAnalysis", "trial_records", "verdict_sets"]
AXIS_NOUNS = {"model.loops": ("loop", "loops"), "model.n_layers": ("layer", "layers"),
              "model.eval_loops": ("loop", "loops")}


def objective_scale(objective: str) -> tuple[float, str]:
    """(scale, unit) of differences in sentences: accuracies in points, others as they are."""
    if "acc" in objective:
        return 100.0, "points"
    return (1.0, "bits per byte") if objective.endswith("bpb") else (1.0, "")


def axis_key(abl_meta: dict, group: str) -> str | None:
    axis = abl_meta.get("axis") or {}
    return axis.get(group) or axis.get("")


def axis_namer(key: str | None):
    """A setting's name on its axis ("2 loops"), or its label off any known axis."""
    singular, plural = AXIS_NOUNS.get(key or "", (None, None))

    def name(s: SettingStats) -> str:
        if s.axis is None or singular is None:
            return s.setting
        n = int(s.axis) if float(s.axis).is_integer() else s.axis
        return f"{n} {singular if n == 1 else plural}"

    return name


class StudyAnalysis:
    def __init__(self, abl: Ablation, study):
        self.abl, self.study = abl, study
        self.meta = study.user_attrs.get(ABLATION_ATTR, {})
        self.task = study.user_attrs.get(TASK_ATTR, {})
        self.base = study.user_attrs.get(BASE_CONFIG_ATTR, {})
        opts = {**self.meta.get("analysis", {}), **abl.analysis}
        self.confidence = float(opts.get("confidence", 0.95))
        self.min_gain = float(opts.get("min_gain", 0.01))
        self.primary = opts.get("primary")
        self.reference = opts.get("reference")
        self.objective = self.meta.get("objective", abl.objective)
        self.direction = self.meta.get("direction", abl.direction)
        self.scale, self.unit = objective_scale(self.objective)
        self.chance = self.task.get("chance") if "acc" in self.objective else None
        threshold = opts.get("solve_threshold")
        self.solve_threshold = (float(threshold) if threshold is not None else
                                0.95 if "acc" in self.objective else None)
        # The metric's range: interval ends beyond it are cut (and marked) in the table.
        self.bounds = bounds_of(self.objective)
        self.tuned = study.user_attrs.get(TUNED_ATTR) or {}
        self.paired_latency = study.user_attrs.get(LATENCY_ATTR)
        self.context_costs = study.user_attrs.get(CONTEXT_ATTR)  # lab.eval.context
        self.twins = abl.twins()
        self.options = replace(options_for(abl, study), scale=self.scale, unit=self.unit)
        self.records, self.notes = trial_records(study, abl)
        self.stats = summarize(self.records, confidence=self.confidence, bounds=self.bounds)
        self.groups: dict[str, list[SettingStats]] = defaultdict(list)
        for s in self.stats:
            self.groups[s.group].append(s)
        # Every comparison of the report, decided together (lab.study.seeding): the design,
        # the decisions (claims fixed at the look that decided them), and the looks.
        self.design, self.decisions, self.decided_at, self.looks = decide_study(
            abl, study, self.records, self.verdict_options)

    @property
    def n_complete(self) -> int:
        return sum(s.n for s in self.stats if s.setting not in self.twins)

    @property
    def verdict_options(self) -> VerdictOptions:
        return self.options

    def ordered(self, group: str) -> bool:
        ss = self.groups[group]
        return bool(ss) and all(s.axis is not None for s in ss) and len(ss) > 1

    def primary_group(self) -> str:
        if self.primary in self.groups:
            return self.primary
        return next(iter(self.groups))

    def namer(self, group: str | None):
        return axis_namer(axis_key(self.meta, group or ""))

    def verdicts(self, stats: list[SettingStats] | None = None
                 ) -> list[tuple[str, CurveVerdict | CompareVerdict]]:
        """(group, verdict) for every arm: a curve verdict on ordered arms, else a comparison,
        all from the report's decisions. `stats`: other statistics of the same settings (the
        verdicts at another budget), decided as one family of their own at the full alpha."""
        if stats is None:
            return design_verdicts(self.design, self.decisions, self.namer)
        design = self.design_of(stats)
        return design_verdicts(design, design.family.decisions(), self.namer)

    def design_of(self, stats: list[SettingStats]):
        by_group: dict[str, list[SettingStats]] = defaultdict(list)
        for s in stats:
            by_group[s.group].append(s)
        g0 = self.primary_group()
        groups = [g0] + [g for g in by_group if g != g0] if g0 in by_group else list(by_group)
        return study_design(dict(by_group), groups, self.verdict_options, primary=self.primary,
                            reference=self.reference,
                            twins={frozenset(p) for p in self.twins.items()})

    def decision(self, a: SettingStats, b: SettingStats) -> Decision:
        """The report's decision on the improvement of b over a."""
        c = compare(a, b, self.verdict_options)
        return self.decisions.get(c.name) or Decision(c, None)

    def matched_depth(self) -> list[dict]:
        """Across arms: each primary setting against the other arms' settings that match it
        (lab.stats.design.matched_pairs: equal effective depth, or equal FLOPs per token for a
        setting no depth matches). "diff", "low", "high": the improvement of the primary
        setting over the other (positive = better, whatever the direction), with its Welch
        interval; "outcome": the report's decision (better, worse, equivalent, open), or
        "identical" for two names of one model.

        "recovered": the share of the other arm's gain that this setting recovers, both
        measured from the other arm's setting at the primary arm's shallowest depth (for a
        looped arm against a uniform one: the stack with the same unique parameters), i.e.
        (this - base) / (other - base) in the direction of improvement; None where the other
        arm's gain over the base is not significant (its interval includes 0).
        """
        g0 = self.primary_group()
        sign = 1.0 if self.direction == "maximize" else -1.0
        d0 = min((s.costs.get("effective_depth") or 0 for s in self.groups[g0] if s.n),
                 default=None)
        rows = []
        for s, o, kind, other in self.design.pairs:
            base = next((x for x in self.groups[other] if x.n
                         and x.costs.get("effective_depth") == d0), None)
            identical = not self.design.comparable(s, o)
            dec = self.decision(o, s)
            c = dec.comparison
            lo, hi = c.interval(self.confidence)
            recovered = None
            if kind == "depth" and base is not None and o is not base:
                _, glo, ghi = diff_ci(base.values, o.values, self.confidence)
                gain = sign * (o.mean - base.mean)
                if gain > 0 and (glo > 0 or ghi < 0):
                    recovered = sign * (s.mean - base.mean) / gain
            rows.append({"setting": s.setting, "other": o.setting, "group": g0,
                         "matched": kind, "outcome": "identical" if identical else dec.outcome,
                         "worthwhile": dec.worthwhile_gain or dec.worthwhile_loss,
                         "base": base.setting if recovered is not None else None,
                         "recovered": recovered,
                         "other_group": other, "name": self.namer(g0)(s),
                         "depth": s.costs.get("effective_depth"), "diff": c.diff, "low": lo,
                         "high": hi, "params": s.costs.get("params"),
                         "other_params": o.costs.get("params"),
                         "latency_ratio": self.latency_ratio(s.setting, o.setting),
                         "kv_ratio": _ratio(s.costs, o.costs, "kv_bytes_per_token")})
        return rows

    def latency_ratio(self, a: str, b: str) -> tuple[float, float, float] | None:
        """Setting a's decode latency over b's, from the paired rounds timed after the sweep
        (lab.study.costpass); None when the study has none (single per-trial timings are too
        noisy to compare on a shared machine)."""
        if not self.paired_latency:
            return None
        secs = self.paired_latency.get("seconds", {})
        a, b = self.twins.get(a, a), self.twins.get(b, b)
        if a not in secs or b not in secs:
            return None
        return ratio_ci(secs[a], secs[b], self.confidence)

    def arm_sentence(self) -> str | None:
        """One sentence comparing the primary arm with the other at equal effective depth,
        in the words of the report's decisions: better / worse, equivalent (TOST), or not
        distinguishable at this precision."""
        every = self.matched_depth()
        if not every or any(g is None for g, _ in verdict_sets(list(self.groups), self.groups)):
            return None  # arms of one setting each: their pooled comparison is the verdict
        # With several other arms, the sentence is about the one matched at the most depths
        # (the equal-depth stack); each other pairing gets a clause after it.
        others = [r["other_group"] for r in every]
        main = max(dict.fromkeys(others), key=others.count)
        rows = [r for r in every if r["other_group"] == main]
        g0, g1 = rows[0]["group"], rows[0]["other_group"]
        o = self.verdict_options

        def amt(r) -> str:
            from lab.stats.verdicts import Gain

            return amount(Gain(r["other"], r["setting"], r["diff"], r["low"], r["high"]), o)

        words = {"better": "is better than", "worse": "is worse than",
                 "equivalent": f"is equivalent (TOST, within {abs(self.min_gain) * self.scale:g} "
                               f"{self.unit}) to",
                 "open": "is not distinguishable at this precision from",
                 "identical": "is the same model as"}
        parts = []
        for outcome in ("identical", "better", "equivalent", "worse", "open"):
            rs = [r for r in rows if r["outcome"] == outcome]
            if not rs:
                continue
            at = ", ".join(r["name"] for r in rs)
            nums = "" if outcome == "identical" else " (" + "; ".join(
                f"{r['name']}: {amt(r)}" for r in rs) + ")"
            parts.append(f"at {at} {g0} {words[outcome]} {g1}{nums}")
        last = rows[-1]
        costs = []
        lat = last["latency_ratio"]
        if lat is not None:
            r, lo, hi = lat
            d = 3 if abs(r - 1) < 0.01 else 2  # 0.998x, not "1.00x", when it differs
            conf = int(self.confidence * 100)
            costs.append(f"{r:.{d}f}x the latency per token ({conf}% CI {lo:.{d}f} to "
                         f"{hi:.{d}f}, paired timing)" if lo > 1 or hi < 1 else
                         f"the same latency per token within measurement (paired timing, "
                         f"{conf}% CI {lo:.2f}x to {hi:.2f}x)")
        if last["kv_ratio"] is not None:
            costs.append(f"{last['kv_ratio']:.2f}x the KV bytes per token")
        if last["params"] and last["other_params"]:
            costs.append(f"{last['params'] / last['other_params']:.2f}x the unique parameters")
        sentence = "; ".join(parts)
        if costs:
            sentence += f"; at {last['name']} it needs " + ", ".join(costs) + f" of {g1}"
        for r in every:
            if r["other_group"] == main:
                continue
            at = "FLOPs per token" if r["matched"] == "FLOPs" else "effective depth"
            sentence += f"; at equal {at}, {r['setting']} {words[r['outcome']]} {r['other']}"
            if r["outcome"] != "identical":
                sentence += f" ({amt(r)})"
        shares = [r for r in rows if r["recovered"] is not None]
        if shares:
            sentence += (f". Measured from {shares[0]['base']}, {g0} recovers "
                         + ", ".join(f"{r['recovered']:.0%} at {r['name']}" for r in shares)
                         + f" of the gain of {g1} at the same effective depth")
        sentence = sentence[0].upper() + sentence[1:]
        return sentence + "."

    def family_line(self) -> str:
        """How the report's comparisons were decided, stated once."""
        from lab.stats.sequential import METHOD

        line = (f"Decisions: {self.design.family.describe()}; a comparison is *better* or "
                f"*worse* when its one-sided test at half its level rejects no difference, "
                f"*equivalent* when two one-sided tests (TOST) show it within "
                f"±{signed(self.min_gain, self.scale).lstrip('+')} {self.unit}, and otherwise "
                "*not distinguishable at this precision*.")
        if self.abl.sequential:
            line += (f" Seeds were added sequentially ({len(self.abl.seeds)} to "
                     f"{self.abl.seed_max} per setting; {len(self.looks)} look(s)): {METHOD}.")
        return line

    def summary(self) -> dict[str, Any]:
        """The numbers behind the report, as written to summary.json."""
        return {
            "study": self.abl.study,
            "objective": self.objective,
            "direction": self.direction,
            "confidence": self.confidence,
            "interval": "Student t (Welch for differences)",
            "family": self.design.family.describe(),
            "settings": [
                {"setting": s.setting, "group": s.group, "axis": s.axis, "n": s.n,
                 "n_pruned": s.n_pruned, "n_failed": s.n_failed, "mean": _finite(s.mean),
                 "std": _finite(s.std), "ci_low": _finite(s.ci_low),
                 "ci_high": _finite(s.ci_high), "values": s.values, "seeds": s.seeds,
                 "costs": s.costs, "same_model_as": self.twins.get(s.setting)}
                for s in self.stats
            ],
            "comparisons": [
                {"a": d.comparison.a, "b": d.comparison.b, "key": k,
                 "improvement": _finite(d.comparison.diff), "p": d.comparison.p,
                 "outcome": d.outcome, "level": d.level,
                 "look": self.decided_at.get(k)}
                for k, d in self.decisions.items()],
            "verdicts": {g: v.sentence for g, v in self.verdicts()},
            "decided": {g: v.supported for g, v in self.verdicts()},
            "arms": self.arm_sentence(),
            "notes": self.notes,
            "context_costs": self.context_costs,
        }


def _ratio(a: dict, b: dict, key: str) -> float | None:
    x, y = a.get(key), b.get(key)
    return x / y if x is not None and y else None


def _finite(x: float) -> float | None:
    return x if isinstance(x, int | float) and math.isfinite(x) else None
