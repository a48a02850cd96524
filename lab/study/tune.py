"""Per-setting tuning: a small grid search for every setting before its measured seeds run.

Each setting of a grid ablation with a ``tune:`` section gets its own Optuna study, named
``<study>/tune/<setting>``, in the same storage. Its trials are the tuning grid's points x the
tuning seeds (disjoint from the measured seeds); they train at ``tune.budget`` times the
steps, validate on the task's "tune" split (never the reported validation split) and are
pruned by successive halving on that objective. When every setting's tuning has finished,
the best point of each setting (mean over tuning seeds, completed trials only) is frozen in
the main study's ``lab.tuned`` attribute, and the measured seeds run at it. Tuning trials never
enter a verdict; the report shows them as a table and a sensitivity figure.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from lab.study.attrs import SETTING_ATTR, TUNE_OF_ATTR, TUNED_ATTR, decode
from lab.study.queue import QueueItem
from lab.study.space import Setting, fmt_value, short_key
from lab.study.spec import Ablation

TUNE_GROUP = "tune"


def tune_study_name(abl: Ablation, setting: Setting) -> str:
    return f"{abl.study}/tune/{setting.label}"


def tune_objective_key(objective: str) -> str:
    """The tuning split's name for a metric: val/acc_token -> tune/acc_token."""
    return "tune/" + objective.split("/", 1)[-1]


def point_label(point: dict[str, Any]) -> str:
    return ", ".join(f"{short_key(k)}={fmt_value(v)}" for k, v in point.items())


def tune_items(abl: Ablation) -> list[QueueItem]:
    """The tuning trials of one setting: every grid point x every tuning seed."""
    assert abl.tune is not None
    return [(point_label(p), TUNE_GROUP, p, seed)
            for p in abl.tune.grid() for seed in abl.tune.seeds]


def open_tune_study(abl: Ablation, setting: Setting, storage):
    import optuna

    assert abl.tune is not None
    pruner = (optuna.pruners.SuccessiveHalvingPruner(
        min_resource=max(1, abl.config().train.val_every), reduction_factor=3)
        if abl.tune.pruner == "successive_halving" else optuna.pruners.NopPruner())
    study = optuna.create_study(
        study_name=tune_study_name(abl, setting), storage=storage, direction=abl.direction,
        # Every tuning trial is queued with its point; a sampler only answers a worker that
        # finds the queue empty (a spurious trial, pruned at once), and must not fail then.
        sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner, load_if_exists=True)
    if study.user_attrs.get(TUNE_OF_ATTR) is None:
        study.set_user_attr(TUNE_OF_ATTR, abl.study)
        study.set_user_attr(SETTING_ATTR, setting.label)
    return study


def summarize_tuning(abl: Ablation, study) -> dict[str, Any]:
    """Every tuning point's mean objective over its completed seeds, and the best point."""
    from optuna.trial import TrialState

    sign = 1.0 if abl.direction == "maximize" else -1.0
    values: dict[str, list[float]] = defaultdict(list)
    params: dict[str, dict[str, Any]] = {}
    pruned: dict[str, int] = defaultdict(int)
    steps = wall = 0.0
    n_trials = 0
    for t in study.get_trials(deepcopy=False):
        if not t.params or not t.state.is_finished():
            continue
        n_trials += 1
        p = {k: decode(v) for k, v in t.params.items() if k != "seed"}
        key = point_label(p)
        params[key] = p
        steps += float(t.user_attrs.get("steps") or t.last_step or 0)
        wall += float(t.user_attrs.get("wall_time_s") or 0)
        if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
            values[key].append(float(t.value))
        elif t.state == TrialState.PRUNED:
            pruned[key] += 1
    points = [{"params": params[k], "label": k,
               "value": sum(values[k]) / len(values[k]) if values[k] else None,
               "n": len(values[k]), "pruned": pruned[k]} for k in params]
    scored = [p for p in points if p["value"] is not None]
    best = max(scored, key=lambda p: sign * p["value"]) if scored else None
    return {"params": best["params"] if best else {}, "value": best["value"] if best else None,
            "points": points, "trials": n_trials, "pruned": sum(pruned.values()),
            "steps": steps, "wall_time_s": wall}


def freeze_choices(abl: Ablation, main_study, storage) -> dict[str, Any]:
    """Record each setting's best tuning point on the main study (once: later runs keep it)."""
    tuned = dict(main_study.user_attrs.get(TUNED_ATTR) or {})
    changed = False
    for setting in abl.settings():
        summary = summarize_tuning(abl, open_tune_study(abl, setting, storage))
        old = tuned.get(setting.label)
        if old is not None and old.get("params"):
            summary["params"], summary["value"] = old["params"], old["value"]  # frozen
        if old != summary:
            tuned[setting.label] = summary
            changed = True
    if changed:
        main_study.set_user_attr(TUNED_ATTR, tuned)
    return tuned


def tuned_params(main_study, label: str) -> dict[str, Any]:
    """The values tuned for a setting (empty when the study tunes nothing)."""
    return dict(((main_study.user_attrs.get(TUNED_ATTR) or {}).get(label) or {}).get("params") or {})
