"""The lab's number formatters: counts, bytes, times, objectives, intervals, percentages.

Used by the report (markdown and console tables) and the CLI tables. Every formatter writes
"-" for a missing value (None, and nan where noted).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from lab.stats import SettingStats

if TYPE_CHECKING:
    from lab.report.figures.common import Figure


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and not math.isfinite(x))


def fmt_num(x: Any, unit: str = "") -> str:
    """1234567 -> '1.23M'; small numbers keep two decimals unless whole or >= 10; nan -> '-'."""
    if _missing(x):
        return "-"
    x = float(x)
    for suffix, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{suffix}{unit}"
    return f"{x:.0f}{unit}" if abs(x) >= 10 or x == int(x) else f"{x:.2f}{unit}"


def fmt_int(n: Any) -> str:
    """Like fmt_num, but below 1000 rounded to a whole number (parameter and FLOP counts)."""
    if n is None:
        return "-"
    n = float(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def fmt_bytes(x: Any) -> str:
    """Binary units: '1.5 KiB', '3.0 MiB'; nan -> '-'."""
    if _missing(x):
        return "-"
    x = float(x)
    for suffix, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if x >= div:
            return f"{x / div:.1f} {suffix}"
    return f"{x:.0f} B"


def fmt_time(s: Any) -> str:
    """Seconds as '12 us', '3.40 ms' or '1.2 s'; nan -> '-'."""
    if _missing(s):
        return "-"
    s = float(s)
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.1f} s"


def pct(x: Any) -> str:
    """A fraction as a percentage with one decimal: 0.4213 -> '42.1%'."""
    return "-" if x is None else f"{100 * x:.1f}%"


def fmt_obj(x: float | None, objective: str) -> str:
    """An objective value: accuracies as percentages, anything else with four decimals."""
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:.1f}%" if "acc" in objective else f"{x:.4f}"


def fmt_ci(s: SettingStats, objective: str) -> str:
    """'42.1% ± 3.2' (half-width of the interval, in points for accuracies), or '(n=1)'."""
    if s.n == 0:
        return "-"
    if s.n < 2 or not math.isfinite(s.ci_low):
        return f"{fmt_obj(s.mean, objective)} (n=1)"
    if s.identical:
        return f"{fmt_obj(s.mean, objective)} (all {s.n} seeds identical)"
    if s.ci_truncated:  # a cut interval is not symmetric: give its ends
        return f"{fmt_obj(s.mean, objective)} [{fmt_obj(s.ci_low, objective)}, " \
            f"{fmt_obj(s.ci_high, objective)}]"
    scale = 100 if "acc" in objective else 1
    half = (s.ci_high - s.ci_low) / 2 * scale
    return f"{fmt_obj(s.mean, objective)} ± {half:.1f}" if scale == 100 else \
        f"{fmt_obj(s.mean, objective)} ± {half:.4f}"


def fmt_diff(d: float, lo: float, hi: float, scale: float) -> str:
    """A signed difference with its interval: '+1.2 (-0.3 to +2.7)'."""
    if not math.isfinite(d):
        return "-"
    n = 1 if scale >= 100 else 3  # points to one decimal; raw units (bits per byte) to three
    if not math.isfinite(lo):
        return f"{d * scale:+.{n}f}"
    if lo == hi:  # every seed of both gave one value: no interval to draw
        return f"{d * scale:+.{n}f} (every seed alike)"
    return f"{d * scale:+.{n}f} ({lo * scale:+.{n}f} to {hi * scale:+.{n}f})"


def ratio_digits(*ratios: float) -> int:
    """Decimals for cost ratios: 3 where a ratio is within 1% of 1 (0.997x, not "1.00x"
    beside an interval that excludes 1), else 2."""
    return 3 if any(0 < abs(r - 1) < 0.01 for r in ratios) else 2


def fmt_ratio(r: float, lo: float | None = None, hi: float | None = None,
              confidence: float | None = None) -> str:
    """A cost ratio, with its interval when given: '1.68x (95% CI 1.60 to 1.75)'; each
    number rounded once, never repeated."""
    if _missing(r):
        return "-"
    if lo is None or hi is None:
        return f"{r:.{ratio_digits(r)}f}x"
    d = ratio_digits(r, lo, hi)
    conf = f"{confidence * 100:g}% CI " if confidence is not None else ""
    return f"{r:.{d}f}x ({conf}{lo:.{d}f} to {hi:.{d}f})"


def setting_label(s: SettingStats) -> str:
    """A setting's label, prefixed by its arm unless the label already starts with the arm's
    first choice (labels of nested arms, "parallel, plt_shift=False" in arm
    "parallel/False", name every choice already)."""
    top = s.group.split("/")[0]
    return f"{s.group}: {s.setting}" if s.group and not s.setting.startswith(top) else s.setting


def md_table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A markdown table; `align` has one letter per column, "l" or "r" (default: first left)."""
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def image(alt: str, figure: Figure) -> list[str]:
    return [f"![{alt}]({figure.path})", ""]
