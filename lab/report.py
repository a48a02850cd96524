"""Markdown reports with figures, written from the study storage alone.

``lab report ablations/NAME.yaml`` (also run at the end of every sweep) reads the Optuna
study, turns its trials into :class:`lab.analysis.TrialRecord`, and writes
``reports/<study>/report.md``, PNG figures and ``summary.json`` (the table's numbers, for
notebooks and tests).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from lab import analysis as an
from lab.errors import LabError
from lab.sweep import FAIL_ATTR, SETTING_ATTR, Ablation, is_done, load_ablation, load_existing_study
from lab.sweep import trial_pair as _pair

COST_KEYS = ("params", "effective_depth", "flops_per_token", "train_flops_per_token",
             "latency_s_per_token", "kv_bytes_per_token", "train_tokens_per_s",
             "train_step_peak_bytes", "wall_time_s")
AXIS_NOUNS = {"model.loops": ("loop", "loops"), "model.n_layers": ("layer", "layers"),
              "model.eval_loops": ("loop", "loops")}


# --------------------------------------------------------------------------------------------
# From storage to records


def trial_records(study) -> tuple[list[an.TrialRecord], dict[str, int]]:
    """Records for analysis, and counts of attempts that do not enter it.

    A failed attempt whose pair was later completed (an interrupted trial that was re-run)
    is not a failure of the setting; it is counted under "retried".
    """
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False)
              if t.params and not t.user_attrs.get("lab.spurious")]
    done_pairs = {_pair(t) for t in trials if is_done(t)}
    notes = {"retried": 0, "running": 0}
    records = []
    for t in trials:
        if t.state == TrialState.FAIL and not is_done(t) and _pair(t) in done_pairs:
            notes["retried"] += 1
            continue
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            notes["running"] += 1
        attrs = {k: v for k, v in t.user_attrs.items() if k in COST_KEYS or k in (
            FAIL_ATTR, "metrics", "diagnostics", "extrapolation", "plan", "widths", "mlp_hidden",
            "latency_mode", "run_dir", "lab.git", "lab.threads", "adaptive")}
        records.append(an.TrialRecord(
            number=t.number,
            setting=t.user_attrs.get(SETTING_ATTR, "?"),
            seed=int(t.params.get("seed", 0)),
            state=t.state.name,
            value=t.value if t.state == TrialState.COMPLETE else None,
            attrs=attrs,
            axis=t.user_attrs.get("lab.axis"),
            group=t.user_attrs.get("lab.group", ""),
        ))
    return records, notes


# --------------------------------------------------------------------------------------------
# Formatting


def fmt_num(x: Any, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    x = float(x)
    for suffix, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{suffix}{unit}"
    return f"{x:.0f}{unit}" if abs(x) >= 10 or x == int(x) else f"{x:.2f}{unit}"


def fmt_bytes(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    x = float(x)
    for suffix, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if x >= div:
            return f"{x / div:.1f} {suffix}"
    return f"{x:.0f} B"


def fmt_time(s: Any) -> str:
    if s is None or (isinstance(s, float) and not math.isfinite(s)):
        return "-"
    s = float(s)
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.1f} s"


def objective_scale(objective: str) -> tuple[float, str]:
    return (100.0, "points") if "acc" in objective else (1.0, "")


def fmt_obj(x: float, objective: str) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:.1f}%" if "acc" in objective else f"{x:.4f}"


def fmt_ci(s: an.SettingStats, objective: str) -> str:
    if s.n == 0:
        return "-"
    if s.n < 2 or not math.isfinite(s.ci_low):
        return f"{fmt_obj(s.mean, objective)} (n=1)"
    scale = 100 if "acc" in objective else 1
    half = (s.ci_high - s.ci_low) / 2 * scale
    return f"{fmt_obj(s.mean, objective)} ± {half:.1f}" if scale == 100 else \
        f"{fmt_obj(s.mean, objective)} ± {half:.4f}"


def axis_key(abl_meta: dict, group: str) -> str | None:
    axis = abl_meta.get("axis") or {}
    return axis.get(group) or axis.get("")


def axis_namer(key: str | None):
    singular, plural = AXIS_NOUNS.get(key or "", (None, None))

    def name(s: an.SettingStats) -> str:
        if s.axis is None or singular is None:
            return s.setting
        n = int(s.axis) if float(s.axis).is_integer() else s.axis
        return f"{n} {singular if n == 1 else plural}"

    return name


# --------------------------------------------------------------------------------------------
# The analysis of one study


class StudyAnalysis:
    def __init__(self, abl: Ablation, study):
        self.abl, self.study = abl, study
        self.meta = study.user_attrs.get("lab.ablation", {})
        self.task = study.user_attrs.get("lab.task", {})
        self.base = study.user_attrs.get("lab.base_config", {})
        opts = {**self.meta.get("analysis", {}), **abl.analysis}
        self.confidence = float(opts.get("confidence", 0.95))
        self.min_gain = float(opts.get("min_gain", 0.01))
        self.primary = opts.get("primary")
        self.reference = opts.get("reference")
        self.objective = self.meta.get("objective", abl.objective)
        self.direction = self.meta.get("direction", abl.direction)
        self.scale, self.unit = objective_scale(self.objective)
        self.chance = self.task.get("chance") if "acc" in self.objective else None
        self.records, self.notes = trial_records(study)
        self.stats = an.summarize(self.records, confidence=self.confidence)
        self.groups: dict[str, list[an.SettingStats]] = defaultdict(list)
        for s in self.stats:
            self.groups[s.group].append(s)

    @property
    def n_complete(self) -> int:
        return sum(s.n for s in self.stats)

    def ordered(self, group: str) -> bool:
        ss = self.groups[group]
        return bool(ss) and all(s.axis is not None for s in ss) and len(ss) > 1

    def primary_group(self) -> str:
        if self.primary in self.groups:
            return self.primary
        return next(iter(self.groups))

    def verdicts(self) -> list[tuple[str, Any]]:
        """(group, verdict) for every arm: a curve verdict on ordered arms, else a comparison."""
        out = []
        groups = [self.primary_group()] + [g for g in self.groups if g != self.primary_group()]
        for g in groups:
            ss = [s for s in self.groups[g] if s.n > 0] or self.groups[g]
            kw = dict(direction=self.direction, confidence=self.confidence, scale=self.scale,
                      unit=self.unit, min_gain=self.min_gain, chance=self.chance)
            if self.ordered(g):
                v = an.curve_verdict(ss, name=axis_namer(axis_key(self.meta, g)), **kw)
            elif len(ss) > 1:
                ref = self.reference if self.reference in {s.setting for s in ss} else ss[0].setting
                v = an.compare_verdict(ss, ref, **kw)
            else:
                continue
            out.append((g, v))
        return out

    def matched_depth(self) -> list[dict]:
        """Across arms: each setting against the other arm's setting of equal effective depth."""
        if len(self.groups) < 2:
            return []
        g0 = self.primary_group()
        rows = []
        for other in (g for g in self.groups if g != g0):
            by_depth = {s.costs.get("effective_depth"): s for s in self.groups[other] if s.n}
            for s in self.groups[g0]:
                o = by_depth.get(s.costs.get("effective_depth"))
                if o is None or not s.n:
                    continue
                diff, lo, hi = an.diff_ci(o.values, s.values, self.confidence)
                rows.append({"setting": s.setting, "other": o.setting, "group": g0,
                             "other_group": other, "name": axis_namer(axis_key(self.meta, g0))(s),
                             "depth": s.costs.get("effective_depth"), "diff": diff, "low": lo,
                             "high": hi, "params": s.costs.get("params"),
                             "other_params": o.costs.get("params"),
                             "latency_ratio": _ratio(s.costs, o.costs, "latency_s_per_token"),
                             "kv_ratio": _ratio(s.costs, o.costs, "kv_bytes_per_token")})
        return rows

    def arm_sentence(self) -> str | None:
        """One sentence comparing the primary arm with the other at equal effective depth."""
        rows = self.matched_depth()
        if not rows:
            return None
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
            return (f"{w['diff'] * self.scale:+.1f} {self.unit}{at}, CI "
                    f"{w['low'] * self.scale:+.1f} to {w['high'] * self.scale:+.1f}")

        parts = []
        if better:
            parts.append(f"{g0} is significantly better than {g1} at "
                         + ", ".join(r["name"] for r in better)
                         + f" ({'up to ' if len(better) > 1 else ''}{gap(better, max)})")
        if same:
            parts.append(("and " if better else f"{g0} ") + f"keeps the accuracy of {g1} within "
                         f"the {conf}% CI at " + ", ".join(r["name"] for r in same))
        if worse:
            parts.append(f"{'and ' if ok else g0 + ' '}is significantly worse at "
                         + ", ".join(r["name"] for r in worse) + f" (largest gap {gap(worse, min)})")
        if unknown and not (ok or worse):
            return None
        last = rows[-1]
        costs = []
        if last["latency_ratio"] is not None:
            costs.append(f"{last['latency_ratio']:.2f}x the latency per token")
        if last["kv_ratio"] is not None:
            costs.append(f"{last['kv_ratio']:.2f}x the KV bytes per token")
        if last["params"] and last["other_params"]:
            costs.append(f"{last['params'] / last['other_params']:.2f}x the unique parameters")
        sentence = " ".join(parts)
        if costs:
            sentence += f"; at {last['name']} it needs " + ", ".join(costs) + f" of {g1}"
        return sentence + "."

    def summary(self) -> dict:
        return {
            "study": self.abl.study,
            "objective": self.objective,
            "direction": self.direction,
            "confidence": self.confidence,
            "interval": "Student t (Welch for differences)",
            "settings": [
                {"setting": s.setting, "group": s.group, "axis": s.axis, "n": s.n,
                 "n_pruned": s.n_pruned, "n_failed": s.n_failed, "mean": _j(s.mean),
                 "std": _j(s.std), "ci_low": _j(s.ci_low), "ci_high": _j(s.ci_high),
                 "values": s.values, "seeds": s.seeds, "costs": s.costs}
                for s in self.stats
            ],
            "verdicts": {g: v.sentence for g, v in self.verdicts()},
            "arms": self.arm_sentence(),
            "notes": self.notes,
        }


def _ratio(a: dict, b: dict, key: str) -> float | None:
    x, y = a.get(key), b.get(key)
    return x / y if x is not None and y else None


def _j(x: float) -> float | None:
    return x if isinstance(x, int | float) and math.isfinite(x) else None


# --------------------------------------------------------------------------------------------
# Figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


MARKERS = ("o", "s", "^", "D", "v")


def _integer_axis(ax, values) -> None:
    from matplotlib.ticker import MaxNLocator

    if all(float(v).is_integer() for v in values):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def fig_axis(sa: StudyAnalysis, path: Path) -> bool:
    groups = [g for g in sa.groups if sa.ordered(g)]
    if not groups:
        return fig_categories(sa, path)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    span = max(s.axis for g in groups for s in sa.groups[g]) - min(
        s.axis for g in groups for s in sa.groups[g])
    for i, g in enumerate(groups):
        ss = [s for s in sa.groups[g] if s.n]
        color, marker = f"C{i}", MARKERS[i % len(MARKERS)]
        # Arms share the axis; a small offset keeps identical results visible side by side.
        dx = (i - (len(groups) - 1) / 2) * 0.015 * (span or 1)
        xs = [s.axis + dx for s in ss]
        for s, x in zip(ss, xs, strict=True):
            ax.scatter([x] * len(s.values), [v * sa.scale for v in s.values], s=14,
                       color=color, alpha=0.45, linewidths=0, marker=marker)
        ax.plot(xs, [s.mean * sa.scale for s in ss], marker=marker, color=color,
                label=g or "mean", ms=5, ls="-" if i == 0 else "--")
        lo = [s.ci_low * sa.scale if math.isfinite(s.ci_low) else s.mean * sa.scale for s in ss]
        hi = [s.ci_high * sa.scale if math.isfinite(s.ci_high) else s.mean * sa.scale for s in ss]
        if "acc" in sa.objective:  # an accuracy lies in [0, 100]: clip the drawn band
            lo, hi = [max(v, 0.0) for v in lo], [min(v, sa.scale) for v in hi]
        ax.fill_between(xs, lo, hi, color=color, alpha=0.12, linewidth=0)
    if sa.chance is not None:
        ax.axhline(sa.chance * sa.scale, color="grey", ls=":", lw=1, label="chance")
    _integer_axis(ax, [s.axis for g in groups for s in sa.groups[g]])
    keys = [axis_key(sa.meta, g) or "" for g in groups]
    ax.set_xlabel(" / ".join(dict.fromkeys(f"{k} ({g})" if len(groups) > 1 else k
                                           for k, g in zip(keys, groups, strict=True))))
    ax.set_ylabel(_obj_label(sa))
    ax.set_title(f"{sa.abl.study}: mean over seeds (dots: seeds; band: "
                 f"{int(sa.confidence * 100)}% CI" + (", clipped to [0, 100]" if "acc" in sa.objective
                                                      else "") + ")", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def fig_categories(sa: StudyAnalysis, path: Path) -> bool:
    plt = _plt()
    ss = [s for s in sa.stats if s.n]
    if not ss:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, s in enumerate(ss):
        ax.scatter([i] * len(s.values), [v * sa.scale for v in s.values], s=14, color="C0",
                   alpha=0.45, linewidths=0)
        err = [[(s.mean - s.ci_low) * sa.scale if math.isfinite(s.ci_low) else 0],
               [(s.ci_high - s.mean) * sa.scale if math.isfinite(s.ci_high) else 0]]
        ax.errorbar([i], [s.mean * sa.scale], yerr=err, fmt="o", color="C1", capsize=4)
    ax.set_xticks(range(len(ss)), [s.setting for s in ss], rotation=20, fontsize=8)
    if sa.chance is not None:
        ax.axhline(sa.chance * sa.scale, color="grey", ls=":", lw=1, label="chance")
        ax.legend(fontsize=8)
    ax.set_ylabel(_obj_label(sa))
    ax.set_title(f"{sa.abl.study}: objective per setting ({int(sa.confidence * 100)}% CI)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def fig_cost(sa: StudyAnalysis, path: Path, cost_keys: list[tuple[str, str]]) -> list[str]:
    """Objective vs each cost, Pareto-optimal settings marked. Returns the costs drawn."""
    keys = [(k, label) for k, label in cost_keys
            if any(s.costs.get(k) is not None for s in sa.stats if s.n)]
    if not keys:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), squeeze=False)
    for ax, (k, label) in zip(axes[0], keys, strict=True):
        front = set(an.pareto_front([s for s in sa.stats if s.n], k, sa.direction))
        for i, g in enumerate(sa.groups):
            ss = [s for s in sa.groups[g] if s.n and s.costs.get(k) is not None]
            xs = [s.costs[k] for s in ss]
            ys = [s.mean * sa.scale for s in ss]
            err = [[(s.mean - s.ci_low) * sa.scale if math.isfinite(s.ci_low) else 0 for s in ss],
                   [(s.ci_high - s.mean) * sa.scale if math.isfinite(s.ci_high) else 0 for s in ss]]
            ax.errorbar(xs, ys, yerr=err, fmt="o", color=f"C{i}", label=g or None, ms=4,
                        capsize=3, alpha=0.85)
            for s, x, y in zip(ss, xs, ys, strict=True):
                if s.setting in front:
                    ax.scatter([x], [y], s=110, facecolors="none", edgecolors="k", linewidths=1.2)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(_obj_label(sa))
        if len(sa.groups) > 1:
            ax.legend(fontsize=8)
    axes[0][0].set_title("circled: Pareto-optimal (no setting is better and cheaper)", fontsize=9,
                         loc="left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return [k for k, _ in keys]


def _obj_label(sa: StudyAnalysis) -> str:
    return f"{sa.objective} (%)" if sa.scale == 100 else sa.objective


# --------------------------------------------------------------------------------------------
# Markdown


def _table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _label(s: an.SettingStats) -> str:
    return f"{s.group}: {s.setting}" if s.group and not s.setting.startswith(s.group) else s.setting


def results_table(sa: StudyAnalysis) -> str:
    headers = ["setting", "unique params", "eff. depth", "FLOPs/token", "latency/token",
               "KV bytes/token", f"{sa.objective} mean ± {int(sa.confidence * 100)}% CI",
               "n done / pruned / failed"]
    rows = []
    for s in sa.stats:
        c = s.costs
        rows.append([
            _label(s),
            fmt_num(c.get("params")), fmt_num(c.get("effective_depth")),
            fmt_num(c.get("flops_per_token")), fmt_time(c.get("latency_s_per_token")),
            fmt_bytes(c.get("kv_bytes_per_token")), fmt_ci(s, sa.objective),
            f"{s.n} / {s.n_pruned} / {s.n_failed}",
        ])
    return _table(headers, rows)


def environment(sa: StudyAnalysis) -> list[str]:
    from optuna.trial import TrialState

    prov = sa.study.user_attrs.get("lab.provenance", {})
    trials = [t for t in sa.study.get_trials(deepcopy=False) if t.params]
    revs = defaultdict(int)
    dirty = False
    threads = set()
    wall = 0.0
    starts, ends = [], []
    for t in trials:
        g = t.user_attrs.get("lab.git") or {}
        if g:
            revs[g.get("revision", "unknown")[:12]] += 1
            dirty |= bool(g.get("dirty"))
        if t.user_attrs.get("lab.threads"):
            threads.add(t.user_attrs["lab.threads"])
        if t.state == TrialState.COMPLETE:
            wall += float(t.user_attrs.get("wall_time_s") or 0)
        if t.datetime_start:
            starts.append(t.datetime_start)
        if t.datetime_complete:
            ends.append(t.datetime_complete)
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    v = prov.get("versions", {})
    d = prov.get("device", {})
    lines = [
        f"- git revision{'s' if len(revs) > 1 else ''}: "
        + (", ".join(f"`{r}` ({n} trials)" for r, n in revs.items()) or "unknown")
        + ("; the working tree had uncommitted changes" if dirty else "; clean working tree"),
        "- libraries: " + ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "lightning",
                                                            "optuna", "numpy") if v.get(k)),
        f"- device: {d.get('cpu', '?')}, {d.get('cores', '?')} cores"
        + (f", GPU {d['gpu']}" if d.get("gpu") else ", no GPU")
        + f"; {', '.join(map(str, sorted(threads))) or '?'} thread(s) per trial",
        f"- training wall time (sum over completed trials): {wall / 60:.1f} min"
        + (f"; study span (first start to last finish): {span / 60:.1f} min" if span else ""),
    ]
    return lines


def write_markdown(sa: StudyAnalysis, out_dir: Path, figures: dict[str, str]) -> str:
    abl, meta = sa.abl, sa.meta
    cfg = sa.base
    t = cfg.get("train", {})
    verdicts = sa.verdicts()
    lines = [f"# {abl.study}: {meta.get('question') or abl.question or 'ablation report'}", ""]
    if verdicts:
        lead = verdicts[0][1].sentence
        arms = sa.arm_sentence()
        if arms:
            arms = arms[0].upper() + arms[1:]
            as_lead = (sa.meta.get("analysis") or {}).get("verdict") == "arms"
            lead = f"{arms} {lead}" if as_lead else f"{lead} {arms}"
        lines += [f"**Verdict.** {lead}", ""]
    lines += [f"_Generated by `lab report {meta.get('file', abl.path)}` on "
              f"{time.strftime('%Y-%m-%d %H:%M')} from the study storage "
              f"`{_redact_url(abl.storage)}`._", ""]
    lines += ["## What was compared", ""]
    if meta.get("description") or abl.description:
        lines += [meta.get("description") or abl.description, ""]
    n_pruned = sum(s.n_pruned for s in sa.stats)
    n_failed = sum(s.n_failed for s in sa.stats)
    seeds = meta.get("seeds", abl.seeds)
    lines += [
        f"- task: {sa.task.get('description', cfg.get('task', {}).get('name'))}"
        + (f"; chance = {100 * sa.chance:.1f}%" if sa.chance is not None else ""),
        f"- budget per trial: {t.get('steps')} steps of batch {t.get('batch_size')}, AdamW lr "
        f"{t.get('lr')} ({t.get('schedule')} schedule, {t.get('warmup')} warm-up steps), "
        f"evaluation on {t.get('val_size')} fixed validation and OOD sequences",
        f"- seeds: {', '.join(map(str, seeds))}; objective: `{sa.objective}` ({sa.direction}); "
        f"{sa.n_complete} completed trials, {n_pruned} pruned, {n_failed} failed"
        + (f", {sa.notes['retried']} interrupted attempts re-run" if sa.notes.get("retried") else "")
        + (f", {sa.notes['running']} still running or queued" if sa.notes.get("running") else ""),
        "- every setting shares the base config below; only the swept keys differ "
        f"({', '.join(f'`{k}`' for k in _swept_keys(abl))}). Unique parameters, effective depth and "
        "FLOPs per token are in the table, so matched quantities can be checked.",
        *_shape_lines(sa),
        "",
        "<details><summary>Resolved base config</summary>",
        "",
        "```yaml",
        yaml.safe_dump(cfg, sort_keys=False).rstrip(),
        "```",
        "",
        "</details>",
        "",
        "## Results",
        "",
        results_table(sa),
        "",
        f"Intervals are {int(sa.confidence * 100)}% Student-t intervals of the mean over seeds; "
        "differences between settings use Welch's t-interval. FLOPs are counted with "
        "`torch.utils.flop_counter.FlopCounterMode` for one sequence (attention over the full "
        "sequence); latency and KV bytes are measured (see Cost).",
        "",
    ]
    if "axis" in figures:
        lines += [f"![objective vs axis]({figures['axis']})", ""]
    lines += ["## Verdict", ""]
    for g, v in verdicts:
        lines.append(f"- {(g + ': ') if g and len(verdicts) > 1 else ''}{v.sentence}")
    md = sa.matched_depth()
    if md:
        g0 = sa.primary_group()
        lines += ["", f"{g0.capitalize()} against the other arm at equal effective depth "
                  f"(difference = {g0} minus other, {sa.unit or 'objective units'}):", ""]
        rows = [[r["setting"], r["other"], fmt_num(r["depth"]),
                 f"{fmt_num(r['params'])} vs {fmt_num(r['other_params'])}",
                 _fmt_diff(r["diff"], r["low"], r["high"], sa.scale),
                 "-" if r["latency_ratio"] is None else f"{r['latency_ratio']:.2f}x",
                 "-" if r["kv_ratio"] is None else f"{r['kv_ratio']:.2f}x"] for r in md]
        lines.append(_table(["setting", "compared with", "eff. depth", "unique params",
                             f"difference ({int(sa.confidence * 100)}% CI)", "latency ratio",
                             "KV ratio"], rows, "llrrrrr"))
        sentence = sa.arm_sentence()
        if sentence:
            lines += ["", sentence]
    extra = _second_opinions(sa)
    if extra:
        lines += [""] + extra
    lines += [""]
    lines += cost_section(sa, figures)
    lines += why_section(sa, figures)
    lines += ["## Environment", ""] + environment(sa) + [""]
    lines += [
        "## Inspect and reproduce",
        "",
        f"- every trial is a TensorBoard run under `runs/{abl.study}/`: "
        f"`make tensorboard` (or `tensorboard --logdir runs/{abl.study} --host 127.0.0.1`); the "
        "HParams tab compares the whole study.",
        f"- the study itself: `make dashboard ABLATION={abl.name}` (optuna-dashboard), or "
        f"`optuna.load_study(study_name='{abl.study}', storage='{_redact_url(abl.storage)}')`; "
        "trial parameters are the dotted config keys plus `seed`, costs and metrics are user "
        "attributes.",
        f"- rerun: `make sweep ABLATION={abl.name}`"
        + (f" ARGS=\"{' '.join(meta.get('config_overrides') or [])}\""
           if meta.get("config_overrides") else "")
        + " (completed trials are kept; only missing ones run).",
        "",
    ]
    return "\n".join(lines)


def _fmt_diff(d: float, lo: float, hi: float, scale: float) -> str:
    if not math.isfinite(d):
        return "-"
    if not math.isfinite(lo):
        return f"{d * scale:+.1f}"
    return f"{d * scale:+.1f} ({lo * scale:+.1f} to {hi * scale:+.1f})"


def _swept_keys(abl: Ablation) -> list[str]:
    keys: list[str] = []

    def walk(space):
        for e in space:
            keys.append(e.key)
            for sub in (getattr(e, "arms", None) or {}).values():
                walk(sub)

    walk(abl.space)
    return list(dict.fromkeys(keys))


def _second_opinions(sa: StudyAnalysis) -> list[str]:
    out = []
    ss = [s for s in sa.stats if s.n]
    if not ss:
        return out
    best = max(ss, key=lambda s: s.mean if sa.direction == "maximize" else -s.mean)
    out.append(f"- best setting: {best.setting} ({fmt_ci(best, sa.objective)}).")
    per = an.best_per_cost(ss, "flops_per_token", chance=sa.chance) \
        if sa.direction == "maximize" else None
    if per:
        out.append(f"- best per unit of cost (gain over chance per FLOP/token): {per}.")
    g0 = sa.primary_group()
    if sa.ordered(g0):
        knee = an.knee_point([s for s in sa.groups[g0] if s.n])
        if knee:
            out.append(f"- knee of the {g0 or 'main'} curve (Kneedle, a second opinion only, "
                       f"not the verdict): {knee}.")
    return out


def cost_section(sa: StudyAnalysis, figures: dict[str, str]) -> list[str]:
    lines = ["## Cost", ""]
    if "cost" in figures:
        lines += [f"![objective vs cost]({figures['cost']})", ""]
    modes = {r.attrs.get("latency_mode") for r in sa.records if r.attrs.get("latency_mode")}
    if modes:
        lines.append(
            "Latency is per token at batch 1, the fastest of 5 passes after a warm-up (so that "
            "the other worker process on the machine does not add spikes): "
            + ("autoregressive decoding with a KV cache" if modes == {"kv-cache decode"} else
               "one full-sequence pass divided by its length (the task is bidirectional, so "
               "there is no token-by-token decoding)")
            + ". KV bytes per token are read off the cache built by that pass: every executed "
              "block keeps keys and values, so serial looping pays for every loop.")
        lines.append("")
    ss = [s for s in sa.stats if s.n]
    rows = [[_label(s), fmt_num(s.costs.get("train_flops_per_token")),
             fmt_num(s.costs.get("train_tokens_per_s")),
             fmt_bytes(s.costs.get("train_step_peak_bytes")),
             fmt_time(s.costs.get("latency_s_per_token")), fmt_bytes(s.costs.get("kv_bytes_per_token")),
             fmt_time(s.costs.get("wall_time_s"))] for s in ss]
    lines += [_table(["setting", "train FLOPs/token", "train tokens/s", "train-step peak memory",
                      "latency/token", "KV bytes/token", "train wall time"], rows), "",
              "Means over completed seeds. Training throughput is measured during training "
              "(validation excluded); peak memory is the largest live tensor storage during one "
              "steady-state training step (forward, backward, AdamW update).", ""]
    for key, label in (("flops_per_token", "FLOPs/token"), ("latency_s_per_token", "latency"),
                       ("kv_bytes_per_token", "KV bytes")):
        pick = an.cheapest_within_best(ss, key, sa.direction)
        if pick:
            best, cheap = pick
            front = an.pareto_front(ss, key, sa.direction)
            lines.append(
                f"- by {label}: the cheapest setting within the best setting's "
                f"({best}) confidence interval is **{cheap}**; Pareto-optimal: "
                f"{'; '.join(front)}.")
    lines.append("")
    return lines


def why_section(sa: StudyAnalysis, figures: dict[str, str]) -> list[str]:
    """Filled by the diagnostics figures when the study has them (see lab.report_diag)."""
    lines = []
    if "why" in figures:
        lines += ["## Why it levels off", "", figures.get("why_text", ""), "",
                  f"![per-loop diagnostics]({figures['why']})", ""]
    if "extrapolate" in figures:
        lines += [figures.get("extrapolate_text", ""), "",
                  f"![test-time loop extrapolation]({figures['extrapolate']})", ""]
    if "adaptive" in figures:
        lines += ["### Adaptive exit", "", figures.get("adaptive_text", ""), "",
                  f"![adaptive exit]({figures['adaptive']})", ""]
    if "readout" in figures:
        lines += ["## Inside the deepest model", "", figures.get("readout_text", ""), "",
                  f"![per-layer readout]({figures['readout']})", ""]
    return lines


def _shape_lines(sa: StudyAnalysis) -> list[str]:
    """Per-layer widths and MLP sizes of each setting, when they are not all one width."""
    shapes: dict[str, tuple] = {}
    for r in sa.records:
        w, h = r.attrs.get("widths"), r.attrs.get("mlp_hidden")
        if w and h and r.setting not in shapes:
            shapes[r.setting] = (tuple(w), tuple(h))
    if all(len({x for shape in shapes.values() for x in shape[i]}) <= 1 for i in (0, 1)):
        return []  # one width and one MLP size everywhere (depth and loop studies)
    order = [s.setting for s in sa.stats if s.setting in shapes]
    return ["- per-layer widths (residual stream / MLP hidden) of the unique blocks: " + "; ".join(
        f"{s}: {' '.join(map(str, shapes[s][0]))} / {' '.join(map(str, shapes[s][1]))}"
        for s in order) + "."]


def _redact_url(url: str) -> str:
    from lab.sweep import _redact

    return _redact(url)


# --------------------------------------------------------------------------------------------
# Entry points


def report_dir(abl: Ablation) -> Path:
    return Path("reports") / abl.study


def write_report(path: str, overrides: list[str] | None = None, quiet: bool = False) -> int:
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    abl = load_ablation(path, overrides or [])
    study = load_existing_study(abl)
    sa = StudyAnalysis(abl, study)
    if sa.n_complete == 0:
        raise LabError(
            f"study '{abl.study}' has no completed trials "
            f"({len(study.trials)} trials in storage); nothing to report. Run "
            f"`lab sweep {abl.path}` first."
        )
    out = report_dir(abl)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}
    if fig_axis(sa, out / "objective.png"):
        figures["axis"] = "objective.png"
    if fig_cost(sa, out / "cost.png", [("flops_per_token", "FLOPs per token"),
                                       ("latency_s_per_token", "latency per token (s)"),
                                       ("kv_bytes_per_token", "KV bytes per token")]):
        figures["cost"] = "cost.png"
    from lab.report_diag import diagnostic_figures

    figures.update(diagnostic_figures(sa, out))
    (out / "report.md").write_text(write_markdown(sa, out, figures))
    (out / "summary.json").write_text(json.dumps(sa.summary(), indent=2, default=str))
    if not quiet:
        console.print(f"report: {out / 'report.md'}")
        for g, v in sa.verdicts():
            console.print(f"[bold]{g + ': ' if g else ''}[/bold]{v.sentence}")
    return 0


def print_results(abl: Ablation) -> None:
    from rich.console import Console
    from rich.table import Table

    study = load_existing_study(abl)
    sa = StudyAnalysis(abl, study)
    table = Table(title=f"{abl.study}: {sa.objective} ({int(sa.confidence * 100)}% CI over seeds)",
                  header_style="bold")
    for col in ("setting", "n", "mean ± CI", "params", "depth", "FLOPs/tok", "latency/tok",
                "KV/tok"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for s in sa.stats:
        c = s.costs
        table.add_row(_label(s), f"{s.n}", fmt_ci(s, sa.objective), fmt_num(c.get("params")),
                      fmt_num(c.get("effective_depth")), fmt_num(c.get("flops_per_token")),
                      fmt_time(c.get("latency_s_per_token")), fmt_bytes(c.get("kv_bytes_per_token")))
    Console(width=None if sys.stdout.isatty() else 140).print(table)
