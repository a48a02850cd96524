"""Post-hoc curves of a trained model: test-time loop extrapolation and adaptive exit."""

from __future__ import annotations

from lab.config import LabConfig
from lab.eval.adaptive import exit_curve, exit_settings
from lab.eval.metrics import evaluate
from lab.tasks import Task

# Thresholds of the adaptive-exit curve recorded for every looped (serial) run; the last
# one is large enough that every token exits after one loop.
EXIT_THRESHOLDS = {
    "update_norm": [0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 1e9],
    "kl": [0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 1e9],
}


def extrapolation_loops(cfg: LabConfig) -> list[int]:
    if cfg.eval.extrapolate is not None:
        return sorted({int(r) for r in cfg.eval.extrapolate})
    return list(range(1, 2 * cfg.model.loops + 1))


def extrapolate(model, task: Task, data, cfg: LabConfig) -> dict[str, dict[int, float]]:
    """Accuracy when a looped model runs r' loops at test time, for every r' asked for."""
    curves: dict[str, dict[int, float]] = {}
    for split in ("val", "ood"):
        x, y = data.eval_set(split)
        curves[split] = {r: evaluate(model, x, y, r)["acc_token"] for r in extrapolation_loops(cfg)}
    return curves


def adaptive_curves(model, data, cfg: LabConfig) -> dict[str, list[dict[str, float]]]:
    """Accuracy vs mean loops used under adaptive exit, for a sweep of thresholds.

    With model.exit set, its criterion over model.exit_thresholds (or the defaults); else both
    criteria over their default thresholds. Up to the evaluation loop count.
    """
    criterion, _, max_loops = exit_settings(cfg)
    x, y = data.eval_set("val")
    if criterion != "none":
        plan = {criterion: cfg.eval.exit_thresholds or EXIT_THRESHOLDS[criterion]}
    else:
        plan = EXIT_THRESHOLDS
    return {c: exit_curve(model, x, y, thr, c, max_loops) for c, thr in plan.items()}
