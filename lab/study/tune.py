"""Per-setting tuning: a grid search for every setting before its measured seeds run.

Each setting of a grid ablation with a ``tune:`` section gets its own Optuna study, named
``<study>/tune/<setting>``, in the same storage. Its trials are the tuning grid's points x the
tuning seeds (disjoint from the measured seeds); they train at ``tune.budget`` times the
steps and validate on the task's "tune" split (never the reported validation split). No point
is pruned (a diverging run stops itself). After each round the best point of every setting is
checked: at the edge of its grid, the grid grows one step on that side (``tune.extend`` times
at most) and the new points run. When every setting is bracketed, or cannot grow further, the
choice of each setting is frozen in the main study's ``lab.tuned`` attribute: the learning
rate at the vertex of a quadratic fit in log lr around the best point (lab.stats.lrfit), and
the best value of any other tuned key. With ``tune.share: arm`` the settings of an arm run
alternate grid points and share one rate from a pooled fit. Settings that are one model under
two names (twins) are tuned once. Tuning trials never enter a verdict; the report shows the
points, the fit and the choice per setting.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from lab.study.attrs import SETTING_ATTR, TUNE_EXTRA_ATTR, TUNE_OF_ATTR, TUNED_ATTR, decode
from lab.study.queue import QueueItem
from lab.study.space import Setting, fmt_value, short_key
from lab.study.spec import Ablation

if TYPE_CHECKING:  # scipy: only where a fit is made (the sweep parent reads studies without it)
    from lab.stats.lrfit import LrFit

TUNE_GROUP = "tune"
LR = "train.lr"


def tune_study_name(abl: Ablation, setting: Setting) -> str:
    return f"{abl.study}/tune/{setting.label}"


def tune_objective_key(objective: str) -> str:
    """The tuning split's name for a metric: val/acc_token -> tune/acc_token."""
    return "tune/" + objective.split("/", 1)[-1]


def point_label(point: dict[str, Any]) -> str:
    return ", ".join(f"{short_key(k)}={fmt_value(v)}" for k, v in point.items())


def tuned_settings(abl: Ablation) -> list[Setting]:
    """The settings that are tuned: every setting but twins (their owner's choice is theirs)."""
    tw = abl.twins()
    return [s for s in abl.settings() if s.label not in tw]


def arm_position(abl: Ablation, setting: Setting) -> int:
    """The setting's index among the tuned settings of its arm."""
    arm = [s.label for s in tuned_settings(abl) if s.group == setting.group]
    return arm.index(setting.label)


def setting_points(abl: Ablation, setting: Setting, study=None) -> list[dict[str, Any]]:
    """The grid points a setting runs: the ablation's grid (with ``share: arm``, every other
    point, alternating between the settings of an arm) and the points added at its edges."""
    assert abl.tune is not None
    grid = abl.tune.grid()
    if abl.tune.share == "arm" and abl.tune.lr_range is not None:
        lrs = sorted({p[LR] for p in grid})
        arm = [s for s in tuned_settings(abl) if s.group == setting.group]
        if len(arm) > 1:
            k = arm_position(abl, setting) % 2
            grid = [p for p in grid if lrs.index(p[LR]) % 2 == k]
    extra = (study.user_attrs.get(TUNE_EXTRA_ATTR) or []) if study is not None else []
    return [*grid, *(e for e in extra if e not in grid)]


def tune_items(abl: Ablation, setting: Setting, study=None) -> list[QueueItem]:
    """The tuning trials of one setting: every point it runs x every tuning seed."""
    assert abl.tune is not None
    return [(point_label(p), TUNE_GROUP, p, seed)
            for p in setting_points(abl, setting, study) for seed in abl.tune.seeds]


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
    points.sort(key=lambda p: tuple(str(v) for v in p["params"].values()))
    scored = [p for p in points if p["value"] is not None]
    best = max(scored, key=lambda p: sign * p["value"]) if scored else None
    return {"params": best["params"] if best else {}, "value": best["value"] if best else None,
            "points": points, "trials": n_trials, "pruned": sum(pruned.values()),
            "steps": steps, "wall_time_s": wall}


def lr_curve(summary: dict[str, Any]) -> dict[float, float | None]:
    """{lr: mean objective} at the best value of every other tuned key."""
    pts = [p for p in summary["points"] if LR in p["params"]]
    best = summary["params"]
    others = {k: v for k, v in best.items() if k != LR}
    return {float(p["params"][LR]): p["value"] for p in pts
            if all(p["params"].get(k) == v for k, v in others.items())}


def fit_of(abl: Ablation, summary: dict[str, Any]) -> LrFit | None:
    curve = {lr: v for lr, v in lr_curve(summary).items() if v is not None}
    if not curve or abl.tune is None or abl.tune.lr_range is None:
        return None
    from lab.stats.lrfit import fit_lr

    return fit_lr(list(curve), list(curve.values()), abl.direction == "minimize")


def fit_record(fit: LrFit) -> dict[str, Any]:
    return {"chosen": fit.chosen, "best": fit.best, "interior": fit.interior, "edge": fit.edge,
            "fitted": fit.fitted, "window": list(fit.window),
            "coef": list(fit.coef) if fit.coef else None,
            "below": fit.points_below, "above": fit.points_above}


def arms(abl: Ablation) -> dict[str, list[Setting]]:
    by: dict[str, list[Setting]] = defaultdict(list)
    for s in tuned_settings(abl):
        by[s.group].append(s)
    return dict(by)


def fits(abl: Ablation, summaries: dict[str, dict[str, Any]]) -> dict[str, LrFit | None]:
    """Each tuned setting's fit: its own, or its arm's pooled one (share: arm)."""
    from lab.stats.lrfit import fit_pooled

    assert abl.tune is not None
    if abl.tune.share != "arm" or abl.tune.lr_range is None:
        return {label: fit_of(abl, s) for label, s in summaries.items()}
    out: dict[str, LrFit | None] = {}
    for settings in arms(abl).values():
        curves = {s.label: {lr: v for lr, v in lr_curve(summaries[s.label]).items()
                            if v is not None} for s in settings}
        pooled = (fit_pooled(curves, abl.direction == "minimize")
                  if any(curves.values()) else None)
        out.update(dict.fromkeys(curves, pooled))
    return out


def extend_edges(abl: Ablation, storage) -> int:
    """Grow the grid of every setting (or arm) whose best point is at an edge, one step on
    that side, while it has extensions left. Returns the number of points added."""
    assert abl.tune is not None
    if abl.tune.lr_range is None or abl.tune.extend == 0:
        return 0
    studies = {s.label: open_tune_study(abl, s, storage) for s in tuned_settings(abl)}
    summaries = {k: summarize_tuning(abl, st) for k, st in studies.items()}
    step = abl.tune.step()
    added = 0
    groups = ([[s.label for s in ss] for ss in arms(abl).values()] if abl.tune.share == "arm"
              else [[k] for k in studies])
    all_fits = fits(abl, summaries)
    for labels in groups:
        fit = all_fits.get(labels[0])
        if fit is None or fit.edge is None:
            continue
        extra = [e for k in labels for e in (studies[k].user_attrs.get(TUNE_EXTRA_ATTR) or [])]
        grid_lrs = sorted({float(p[LR]) for k in labels
                           for p in setting_points(abl, by_label(abl, k), studies[k])})
        side = [e for e in extra if (e[LR] < abl.tune.lr_range.low) == (fit.edge == "low")]
        if len({e[LR] for e in side}) >= abl.tune.extend:
            continue
        lr = grid_lrs[0] / step if fit.edge == "low" else grid_lrs[-1] * step
        others = {k: v for k, v in (summaries[labels[0]]["params"] or {}).items() if k != LR}
        point = {**others, LR: float(f"{lr:.6g}")}
        for k in labels:
            mine = list(studies[k].user_attrs.get(TUNE_EXTRA_ATTR) or [])
            if point not in mine:
                studies[k].set_user_attr(TUNE_EXTRA_ATTR, [*mine, point])
                added += 1
    return added


def by_label(abl: Ablation, label: str) -> Setting:
    return next(s for s in abl.settings() if s.label == label)


def freeze_choices(abl: Ablation, main_study, storage) -> dict[str, Any]:
    """Record each setting's choice on the main study (once: later runs keep it): the fitted
    learning rate (and the best value of other tuned keys), with its points and fit."""
    tuned = dict(main_study.user_attrs.get(TUNED_ATTR) or {})
    summaries = {s.label: summarize_tuning(abl, open_tune_study(abl, s, storage))
                 for s in tuned_settings(abl)}
    all_fits = fits(abl, summaries)
    changed = False
    for label, summary in summaries.items():
        fit = all_fits.get(label)
        if fit is not None:
            summary["params"] = {**summary["params"], LR: float(f"{fit.chosen:.6g}")}
            summary["fit"] = fit_record(fit)
            summary["share"] = abl.tune.share if abl.tune else "setting"
        old = tuned.get(label)
        if old is not None and old.get("params"):
            summary["params"], summary["value"] = old["params"], old["value"]  # frozen
            if "fit" in old:
                summary["fit"] = old["fit"]
        if old != summary:
            tuned[label] = summary
            changed = True
    for twin, owner in abl.twins().items():
        if owner in tuned and tuned.get(twin) != {**tuned[owner], "same_model_as": owner}:
            tuned[twin] = {**tuned[owner], "same_model_as": owner}
            changed = True
    if changed:
        main_study.set_user_attr(TUNED_ATTR, tuned)
    return tuned


def tuned_params(main_study, label: str) -> dict[str, Any]:
    """The values tuned for a setting (empty when the study tunes nothing)."""
    return dict(((main_study.user_attrs.get(TUNED_ATTR) or {}).get(label) or {}).get("params") or {})
