"""What every figure shares: the Figure value, matplotlib set-up, markers, axis helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lab.report.study import StudyAnalysis

MARKERS = ("o", "s", "^", "D", "v")


@dataclass(frozen=True)
class Figure:
    """A figure written into the report directory: its file name there, and the paragraph
    the report prints with it ("" when the section's own text says enough)."""

    path: str
    caption: str = ""


def plt():
    """matplotlib.pyplot on the Agg backend, with the report's style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    pyplot.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
                            "axes.spines.top": False, "axes.spines.right": False})
    return pyplot


def integer_axis(ax, values) -> None:
    """Integer ticks on the x axis when every value is a whole number."""
    from matplotlib.ticker import MaxNLocator

    if all(float(v).is_integer() for v in values):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def obj_label(sa: StudyAnalysis) -> str:
    return f"{sa.objective} (%)" if sa.scale == 100 else sa.objective
