"""The headline comparison at one common learning rate.

Every setting runs at its own tuned learning rate, so a comparison between two settings is
also a comparison between two rates. After the measured trials, the primary arm's best setting
is trained again on the measured seeds at the learning rate chosen for the arm's first setting
(its reference), in a study of its own (``<study>/recheck``); the report compares it with the
reference's own trials, now at one rate, and says whether the decision holds. The results are
kept on the main study (``lab.recheck``), so the report needs nothing else.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from lab.stats import summarize
from lab.study.attrs import RECHECK_ATTR, RECHECK_GROUP, TUNED_ATTR
from lab.study.queue import QueueItem
from lab.study.records import trial_records
from lab.study.seeding import bounds_of, design_for, options_for
from lab.study.tune import LR, point_label

if TYPE_CHECKING:
    from lab.study.spec import Ablation



def recheck_study_name(abl: Ablation) -> str:
    return f"{abl.study}/recheck"


def plan_recheck(abl: Ablation, study) -> dict[str, Any] | None:
    """{setting, reference, point, seeds}: the primary arm's best setting at its first
    setting's learning rate, on the reference's completed seeds; None when there is nothing
    to recheck (no per-setting learning rate, or the two already share one)."""
    if abl.tune is None or abl.tune.lr_range is None or abl.tune.share != "setting":
        return None
    tuned = study.user_attrs.get(TUNED_ATTR) or {}
    records, _ = trial_records(study, abl)
    opts = options_for(abl, study)
    stats = summarize(records, confidence=opts.confidence, bounds=bounds_of(abl.objective))
    design = design_for(abl, study, stats, opts)
    if not design.sets:
        return None
    _, ss, _ = design.sets[0]
    done = [s for s in ss if s.n >= 2]
    if len(done) < 2:
        return None
    sign = 1.0 if abl.direction == "maximize" else -1.0
    ref = done[0]
    best = max(done[1:], key=lambda s: sign * s.mean) if len(done) > 1 else done[1]
    tw = abl.twins()
    lr_ref = (tuned.get(ref.setting) or {}).get("params", {}).get(LR)
    lr_best = (tuned.get(best.setting) or {}).get("params", {}).get(LR)
    if lr_ref is None or lr_best is None or math.isclose(lr_ref, lr_best):
        return None
    return {"setting": tw.get(best.setting, best.setting), "label": best.setting,
            "reference": ref.setting, "point": {LR: lr_ref}, "seeds": sorted(ref.seeds)}


def recheck_items(plan: dict[str, Any]) -> list[QueueItem]:
    return [(point_label(plan["point"]), RECHECK_GROUP, plan["point"], seed)
            for seed in plan["seeds"]]


def open_recheck_study(abl: Ablation, storage, plan: dict[str, Any] | None = None):
    import optuna

    study = optuna.create_study(
        study_name=recheck_study_name(abl), storage=storage, direction=abl.direction,
        sampler=optuna.samplers.RandomSampler(seed=0), load_if_exists=True)
    if plan is not None and study.user_attrs.get(RECHECK_ATTR) != plan:
        study.set_user_attr(RECHECK_ATTR, plan)
    return study


def record_recheck(main_study, recheck_study) -> dict[str, Any] | None:
    """Keep the recheck's plan and values ({seed: objective}) on the main study."""
    plan = recheck_study.user_attrs.get(RECHECK_ATTR)
    if not plan:
        return None
    values = {str(int(t.params["seed"])): float(t.value) for t in recheck_study.get_trials(
        deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None}
    out = {**plan, "values": values}
    if main_study.user_attrs.get(RECHECK_ATTR) != out:
        main_study.set_user_attr(RECHECK_ATTR, out)
    return out
