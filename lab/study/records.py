"""A study's trials as records for analysis (lab.stats), read through the names of attrs."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from lab.stats import TrialRecord
from lab.study.attrs import (
    ADAPTIVE_ATTR,
    AXIS_ATTR,
    BUDGETS_ATTR,
    CURVE_ATTR,
    DIAGNOSTICS_ATTR,
    EXTRAPOLATION_ATTR,
    FAIL_ATTR,
    GIT_ATTR,
    GROUP_ATTR,
    METRICS_ATTR,
    SETTING_ATTR,
    SPURIOUS_ATTR,
    THREADS_ATTR,
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
                GIT_ATTR, THREADS_ATTR, CURVE_ATTR, TUNED_PARAMS_ATTR, BUDGETS_ATTR, "plan",
                "widths", "mlp_hidden", "latency_mode", "run_dir")


def trial_records(study, abl: Ablation | None = None) -> tuple[list[TrialRecord], dict[str, int]]:
    """Records for analysis, and counts of attempts that do not enter it.

    A failed attempt whose pair was later completed (an interrupted trial that was re-run)
    is not a failure of the setting; it is counted under "retried". With the ablation, the
    trials of a setting that owns a twin (lab.study.twins) also stand for the twin: they are
    repeated under its label, arm and axis value.
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
    if abl is not None:
        records += twin_records(abl, records)
    return records, notes


def twin_records(abl: Ablation, records: list[TrialRecord]) -> list[TrialRecord]:
    """The owner's records again under each twin's label, arm and axis."""
    tw = abl.twins()
    if not tw:
        return []
    by_label = {s.label: s for s in abl.settings()}
    out = []
    for twin, owner in tw.items():
        s = by_label[twin]
        out += [replace(r, setting=twin, group=s.group, axis=s.axis)
                for r in records if r.setting == owner]
    return out
