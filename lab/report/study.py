"""One study, analysed: its trials as records, per-setting statistics, verdicts, arm comparison.

Everything is read from the study storage: study attributes and trial attributes through the
names of :mod:`lab.study.attrs`, trial states and values through Optuna's public API.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from lab.stats import (
    CompareVerdict,
    CurveVerdict,
    SettingStats,
    TrialRecord,
    VerdictOptions,
    compare_verdict,
    curve_verdict,
    diff_ci,
    improvement,
    ratio_ci,
    signed,
    summarize,
)
from lab.study.attrs import (
    ABLATION_ATTR,
    ADAPTIVE_ATTR,
    AXIS_ATTR,
    BASE_CONFIG_ATTR,
    CONTEXT_ATTR,
    CURVE_ATTR,
    DIAGNOSTICS_ATTR,
    EXTRAPOLATION_ATTR,
    FAIL_ATTR,
    GIT_ATTR,
    GROUP_ATTR,
    LATENCY_ATTR,
    METRICS_ATTR,
    SETTING_ATTR,
    SPURIOUS_ATTR,
    TASK_ATTR,
    THREADS_ATTR,
    TUNED_ATTR,
    TUNED_PARAMS_ATTR,
    is_done,
    trial_pair,
)

if TYPE_CHECKING:
    from lab.study.spec import Ablation

COST_KEYS = ("params", "effective_depth", "flops_per_token", "train_flops_per_token",
             "latency_s_per_token", "kv_bytes_per_token", "train_tokens_per_s",
             "train_step_peak_bytes", "wall_time_s")
# The other trial attributes a record carries. Every number among a record's attrs is averaged
# into its setting's costs (lab.stats.summarize), so counters such as "steps" stay out.
RECORD_ATTRS = (FAIL_ATTR, METRICS_ATTR, DIAGNOSTICS_ATTR, EXTRAPOLATION_ATTR, ADAPTIVE_ATTR,
                GIT_ATTR, THREADS_ATTR, CURVE_ATTR, TUNED_PARAMS_ATTR, "plan", "widths",
                "mlp_hidden", "latency_mode", "run_dir")
AXIS_NOUNS = {"model.loops": ("loop", "loops"), "model.n_layers": ("layer", "layers"),
              "model.eval_loops": ("loop", "loops")}


def trial_records(study) -> tuple[list[TrialRecord], dict[str, int]]:
    """Records for analysis, and counts of attempts that do not enter it.

    A failed attempt whose pair was later completed (an interrupted trial that was re-run)
    is not a failure of the setting; it is counted under "retried".
    """
    from optuna.trial import TrialState

    kept = set(COST_KEYS) | set(RECORD_ATTRS)
    trials = [t for t in study.get_trials(deepcopy=False)
              if t.params and not t.user_attrs.get(SPURIOUS_ATTR)]
    done_pairs = {trial_pair(t) for t in trials if is_done(t)}
    notes = {"retried": 0, "running": 0}
    records = []
    for t in trials:
        if t.state == TrialState.FAIL and not is_done(t) and trial_pair(t) in done_pairs:
            notes["retried"] += 1
            continue
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            notes["running"] += 1
        records.append(TrialRecord(
            number=t.number,
            setting=t.user_attrs.get(SETTING_ATTR, "?"),
            seed=int(t.params.get("seed", 0)),
            state=t.state.name,
            value=t.value if t.state == TrialState.COMPLETE else None,
            attrs={k: v for k, v in t.user_attrs.items() if k in kept},
            axis=t.user_attrs.get(AXIS_ATTR),
            group=t.user_attrs.get(GROUP_ATTR, ""),
        ))
    return records, notes


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
        self.bounds = (0.0, 1.0) if "acc" in self.objective else (
            (0.0, math.inf) if self.objective.endswith(("loss", "bpb")) else None)
        self.tuned = study.user_attrs.get(TUNED_ATTR) or {}
        self.paired_latency = study.user_attrs.get(LATENCY_ATTR)
        self.context_costs = study.user_attrs.get(CONTEXT_ATTR)  # lab.eval.context
        self.records, self.notes = trial_records(study)
        self.stats = summarize(self.records, confidence=self.confidence, bounds=self.bounds)
        self.groups: dict[str, list[SettingStats]] = defaultdict(list)
        for s in self.stats:
            self.groups[s.group].append(s)

    @property
    def n_complete(self) -> int:
        return sum(s.n for s in self.stats)

    @property
    def verdict_options(self) -> VerdictOptions:
        return VerdictOptions(direction=self.direction, confidence=self.confidence,
                              min_gain=self.min_gain, chance=self.chance, scale=self.scale,
                              unit=self.unit)

    def ordered(self, group: str) -> bool:
        ss = self.groups[group]
        return bool(ss) and all(s.axis is not None for s in ss) and len(ss) > 1

    def primary_group(self) -> str:
        if self.primary in self.groups:
            return self.primary
        return next(iter(self.groups))

    def verdicts(self, stats: list[SettingStats] | None = None
                 ) -> list[tuple[str, CurveVerdict | CompareVerdict]]:
        """(group, verdict) for every arm: a curve verdict on ordered arms, else a comparison.
        `stats`: other statistics of the same settings (e.g. at half the budget)."""
        out: list[tuple[str, CurveVerdict | CompareVerdict]] = []
        opts = self.verdict_options
        by_group: dict[str, list[SettingStats]] = defaultdict(list)
        for s in self.stats if stats is None else stats:
            by_group[s.group].append(s)
        groups = [self.primary_group()] + [g for g in self.groups if g != self.primary_group()]
        for g, ss in verdict_sets(groups, by_group):
            if g is not None and self.ordered(g):
                v: CurveVerdict | CompareVerdict = curve_verdict(
                    ss, opts, name=axis_namer(axis_key(self.meta, g)))
            elif len(ss) > 1:
                ref = self.reference if self.reference in {s.setting for s in ss} else ss[0].setting
                v = compare_verdict(ss, ref, opts)
            else:
                continue
            out.append((g or "", v))
        return out

    def matched_depth(self) -> list[dict]:
        """Across arms: each primary setting against the other arms' settings that match it.

        A pair is matched on "depth" (equal effective depth, and FLOPs per token within 5%
        where both are known) or, for another arm's setting that no primary setting matches
        in depth, on "FLOPs" (the primary setting nearest in FLOPs per token, within 5%: a
        wider stack against a looped one). "diff", "low", "high": the improvement of the
        primary setting over the other (positive = better, whatever the direction), with its
        Welch interval.

        "recovered": the share of the other arm's gain that this setting recovers, both
        measured from the other arm's setting at the primary arm's shallowest depth (for a
        looped arm against a uniform one: the stack with the same unique parameters), i.e.
        (this - base) / (other - base) in the direction of improvement; None where the other
        arm's gain over the base is not significant (its interval includes 0).
        """
        if len(self.groups) < 2:
            return []
        g0 = self.primary_group()
        sign = 1.0 if self.direction == "maximize" else -1.0
        done0 = [s for s in self.groups[g0] if s.n]
        d0 = min((s.costs.get("effective_depth") or 0 for s in done0), default=None)
        rows = []
        for other in (g for g in self.groups if g != g0):
            done = [s for s in self.groups[other] if s.n]
            by_depth = {s.costs.get("effective_depth"): s for s in done}
            base = by_depth.get(d0)
            pairs = [(s, by_depth[s.costs.get("effective_depth")], "depth") for s in done0
                     if s.costs.get("effective_depth") in by_depth
                     and _close(s, by_depth[s.costs.get("effective_depth")])]
            paired = {o.setting for _, o, _ in pairs}
            for o in done:
                near = [s for s in done0 if _close(s, o, need=True)] if o.setting not in paired \
                    else []
                if near:
                    s = min(near, key=lambda s: abs(_flops(s) - _flops(o)))
                    pairs.append((s, o, "FLOPs"))
            for s, o, kind in pairs:
                diff, lo, hi = improvement(o, s, sign, self.confidence)
                recovered = None
                if kind == "depth" and base is not None and o is not base:
                    _, glo, ghi = diff_ci(base.values, o.values, self.confidence)
                    gain = sign * (o.mean - base.mean)
                    if gain > 0 and (glo > 0 or ghi < 0):
                        recovered = sign * (s.mean - base.mean) / gain
                rows.append({"setting": s.setting, "other": o.setting, "group": g0,
                             "matched": kind,
                             "base": base.setting if recovered is not None else None,
                             "recovered": recovered,
                             "other_group": other, "name": axis_namer(axis_key(self.meta, g0))(s),
                             "depth": s.costs.get("effective_depth"), "diff": diff, "low": lo,
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
        if a not in secs or b not in secs:
            return None
        return ratio_ci(secs[a], secs[b], self.confidence)

    def arm_sentence(self) -> str | None:
        """One sentence comparing the primary arm with the other at equal effective depth."""
        every = self.matched_depth()
        if not every or any(g is None for g, _ in verdict_sets(list(self.groups), self.groups)):
            return None  # arms of one setting each: their pooled comparison is the verdict
        # With several other arms, the sentence is about the one matched at the most depths
        # (the equal-depth stack); each other pairing gets a clause after it.
        others = [r["other_group"] for r in every]
        main = max(dict.fromkeys(others), key=others.count)
        rows = [r for r in every if r["other_group"] == main]
        conf = int(self.confidence * 100)
        g0, g1 = rows[0]["group"], rows[0]["other_group"]
        fin = [r for r in rows if math.isfinite(r["high"])]
        better = [r for r in fin if r["low"] > 0]
        same = [r for r in fin if r["low"] <= 0 <= r["high"]]
        worse = [r for r in fin if r["high"] < 0]
        unknown = [r for r in rows if not math.isfinite(r["high"])]
        ok = better + same

        def gap(rs, pick):
            w = pick(rs, key=lambda r: r["diff"])
            at = f" at {w['name']}" if len(rs) > 1 else ""
            return (f"{signed(w['diff'], self.scale)} {self.unit}{at}, CI "
                    f"{signed(w['low'], self.scale)} to {signed(w['high'], self.scale)}")

        parts = []
        if better:
            parts.append(f"{g0} is significantly better than {g1} at "
                         + ", ".join(r["name"] for r in better)
                         + f" ({'up to ' if len(better) > 1 else ''}{gap(better, max)})")
        if same:
            what = "accuracy" if "acc" in self.objective else "objective"
            parts.append(("and " if better else f"{g0} ") + f"keeps the {what} of {g1} within "
                         f"the {conf}% CI at " + ", ".join(r["name"] for r in same))
        if worse:
            parts.append(f"{'and ' if ok else g0 + ' '}is significantly worse at "
                         + ", ".join(r["name"] for r in worse) + f" (largest gap {gap(worse, min)})")
        if unknown and not (ok or worse):
            return None
        last = rows[-1]
        costs = []
        lat = last["latency_ratio"]
        if lat is not None:
            r, lo, hi = lat
            d = 3 if abs(r - 1) < 0.01 else 2  # 0.998x, not "1.00x", when it differs
            costs.append(f"{r:.{d}f}x the latency per token ({int(self.confidence * 100)}% CI "
                         f"{lo:.{d}f} to {hi:.{d}f}, paired timing)" if lo > 1 or hi < 1 else
                         "the same latency per token within measurement (paired timing: "
                         f"{r:.2f}x, {int(self.confidence * 100)}% CI {lo:.2f} to {hi:.2f})")
        if last["kv_ratio"] is not None:
            costs.append(f"{last['kv_ratio']:.2f}x the KV bytes per token")
        if last["params"] and last["other_params"]:
            costs.append(f"{last['params'] / last['other_params']:.2f}x the unique parameters")
        sentence = " ".join(parts)
        if costs:
            sentence += f"; at {last['name']} it needs " + ", ".join(costs) + f" of {g1}"
        for r in every:
            if r["other_group"] == main or not math.isfinite(r["high"]):
                continue
            how = ("significantly better than" if r["low"] > 0 else
                   "significantly worse than" if r["high"] < 0 else "within the CI of")
            at = "FLOPs per token" if r["matched"] == "FLOPs" else "effective depth"
            sentence += (f"; at equal {at}, {r['setting']} is {how} {r['other']} "
                         f"({signed(r['diff'], self.scale)} {self.unit}, CI "
                         f"{signed(r['low'], self.scale)} to {signed(r['high'], self.scale)})")
        shares = [r for r in rows if r["recovered"] is not None]
        if shares:
            sentence += (f". Measured from {shares[0]['base']}, {g0} recovers "
                         + ", ".join(f"{r['recovered']:.0%} at {r['name']}" for r in shares)
                         + f" of the gain of {g1} at the same effective depth")
        return sentence + "."

    def summary(self) -> dict[str, Any]:
        """The numbers behind the report, as written to summary.json."""
        return {
            "study": self.abl.study,
            "objective": self.objective,
            "direction": self.direction,
            "confidence": self.confidence,
            "interval": "Student t (Welch for differences)",
            "settings": [
                {"setting": s.setting, "group": s.group, "axis": s.axis, "n": s.n,
                 "n_pruned": s.n_pruned, "n_failed": s.n_failed, "mean": _finite(s.mean),
                 "std": _finite(s.std), "ci_low": _finite(s.ci_low),
                 "ci_high": _finite(s.ci_high), "values": s.values, "seeds": s.seeds,
                 "costs": s.costs}
                for s in self.stats
            ],
            "verdicts": {g: v.sentence for g, v in self.verdicts()},
            "arms": self.arm_sentence(),
            "notes": self.notes,
            "context_costs": self.context_costs,
        }


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


def _flops(s: SettingStats) -> float:
    return float(s.costs.get("flops_per_token") or 0.0)


def _close(a: SettingStats, b: SettingStats, need: bool = False, tol: float = 0.05) -> bool:
    """FLOPs per token within `tol` of each other; unknown FLOPs count as close unless
    `need`."""
    fa, fb = _flops(a), _flops(b)
    if not fa or not fb:
        return not need
    return abs(fa - fb) <= tol * max(fa, fb)


def _ratio(a: dict, b: dict, key: str) -> float | None:
    x, y = a.get(key), b.get(key)
    return x / y if x is not None and y else None


def _finite(x: float) -> float | None:
    return x if isinstance(x, int | float) and math.isfinite(x) else None
