"""The report's figures, one module per family; :func:`report_figures` draws them all."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lab.report.figures.budgets import fig_budgets
from lab.report.figures.common import MARKERS, Figure, integer_axis, obj_label, plt
from lab.report.figures.context import fig_context_kv, fig_context_latency
from lab.report.figures.cost import COST_PANELS, fig_cost
from lab.report.figures.curves import fig_axis, fig_categories
from lab.report.figures.diagnostics import diagnostic_figures
from lab.report.figures.difficulty import fig_difficulty
from lab.report.figures.protocol import fig_learning_curves, fig_sensitivity

if TYPE_CHECKING:
    from lab.report.study import StudyAnalysis

__all__ = ["COST_PANELS", "MARKERS", "Figure", "diagnostic_figures", "fig_axis",
           "fig_categories", "fig_context_kv", "fig_context_latency", "fig_cost",
           "integer_axis", "obj_label", "plt", "report_figures"]


def report_figures(sa: StudyAnalysis, out: Path) -> dict[str, Figure]:
    """Draw every figure the study has data for into `out`, by kind: "axis" (objective),
    "cost", "context_kv" and "context_latency" (cost against context length), and the
    diagnostics kinds (see diagnostic_figures)."""
    figures: dict[str, Figure] = {}
    axis = fig_axis(sa, out / "objective.png")
    if axis:
        figures["axis"] = axis
    cost = fig_cost(sa, out / "cost.png")
    if cost:
        figures["cost"] = cost
    for kind, draw, name in (("curves", fig_learning_curves, "curves.png"),
                             ("sensitivity", fig_sensitivity, "sensitivity.png"),
                             ("budgets", fig_budgets, "budgets.png"),
                             ("difficulty", fig_difficulty, "difficulty.png")):
        f = draw(sa, out / name)
        if f:
            figures[kind] = f
    for kind, draw, name in (("context_kv", fig_context_kv, "context_kv.png"),
                             ("context_latency", fig_context_latency, "context_latency.png")):
        f = draw(sa.context_costs, out / name)
        if f:
            figures[kind] = f
    figures.update(diagnostic_figures(sa, out))
    return figures
