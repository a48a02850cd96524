"""The report's formatters (shared with the CLI tables), and how the report reads a study."""

from __future__ import annotations

import math
from pathlib import Path

from lab.report.figures import Figure
from lab.report.fmt import (
    fmt_bytes,
    fmt_ci,
    fmt_diff,
    fmt_int,
    fmt_num,
    fmt_obj,
    fmt_time,
    pct,
    setting_label,
)
from lab.report.study import COST_KEYS, RECORD_ATTRS
from lab.stats import SettingStats
from lab.study.attrs import RESULT_ATTRS

LAB = Path(__file__).resolve().parent.parent / "lab"


def stat(values, group="", setting="s", low=0.0, high=0.0) -> SettingStats:
    mean = sum(values) / len(values) if values else math.nan
    return SettingStats(setting, group, None, len(values), 0, 0, list(values), [], mean, 0.0,
                        low, high, {})


def test_number_formatters():
    assert [fmt_num(x) for x in (None, math.nan, 3, 3.25, 12.7, 1500, 2.5e6, 3e9)] == [
        "-", "-", "3", "3.25", "13", "1.50k", "2.50M", "3.00G"]
    assert fmt_num(2048, "B") == "2.05kB"
    # fmt_int (the CLI's parameter and FLOP counts) rounds below 1000 to a whole number.
    assert [fmt_int(x) for x in (None, 3.25, 999.6, 1500, 2.5e6)] == ["-", "3", "1000", "1.50k",
                                                                      "2.50M"]
    assert [fmt_bytes(x) for x in (None, 512, 1536, 3 * 2**20, 2**31)] == [
        "-", "512 B", "1.5 KiB", "3.0 MiB", "2.0 GiB"]
    assert [fmt_time(x) for x in (None, 2e-5, 3.4e-3, 12.34)] == ["-", "20 us", "3.40 ms", "12.3 s"]
    assert [pct(x) for x in (None, 0.4213, 1.0)] == ["-", "42.1%", "100.0%"]


def test_objective_formatters():
    assert fmt_obj(0.4213, "val/acc_token") == "42.1%"
    assert fmt_obj(1.23456, "val/loss") == "1.2346"
    assert fmt_obj(math.nan, "val/loss") == "-"
    assert fmt_ci(stat([]), "val/acc_token") == "-"
    assert fmt_ci(stat([0.5], low=math.nan), "val/acc_token") == "50.0% (n=1)"
    assert fmt_ci(stat([0.4, 0.6], low=0.3, high=0.7), "val/acc_token") == "50.0% ± 20.0"
    assert fmt_ci(stat([1.0, 2.0], low=1.0, high=2.0), "val/loss") == "1.5000 ± 0.5000"
    assert fmt_diff(0.012, -0.003, 0.027, 100) == "+1.2 (-0.3 to +2.7)"
    assert fmt_diff(0.012, math.nan, math.nan, 100) == "+1.2"
    assert fmt_diff(0.0, 0.0, 0.0, 100) == "+0.0 (every seed alike)"  # no zero-width interval
    assert fmt_diff(math.nan, math.nan, math.nan, 100) == "-"


def test_setting_label_and_figure():
    assert setting_label(stat([1.0], group="looped", setting="loops=2")) == "looped: loops=2"
    assert setting_label(stat([1.0], group="looped", setting="looped, loops=2")) == "looped, loops=2"
    assert setting_label(stat([1.0], setting="uniform")) == "uniform"
    # Nested arms: the label names every choice already.
    assert setting_label(stat([1.0], group="parallel/False",
                              setting="parallel, plt_shift=False")) == "parallel, plt_shift=False"
    assert Figure("why.png").caption == ""


def test_record_attrs_are_stored_names():
    # Result names the report keeps are the ones the study stores (lab.study.attrs); numeric
    # counters ("steps") stay out of the records, since every number becomes a cost.
    results = [a for a in RECORD_ATTRS if not a.startswith("lab.")]
    assert set(results) <= set(RESULT_ATTRS)
    assert "steps" not in RECORD_ATTRS and "steps" not in COST_KEYS


def test_report_reads_study_attributes_by_name_only():
    # Study attributes are read through lab.study.attrs, never by a literal "lab.*" name
    # (module size, private names and import direction: tests/test_layout.py).
    for path in sorted((LAB / "report").rglob("*.py")):
        text = path.read_text()
        assert '"lab.' not in text and "'lab." not in text, f"{path} spells a lab.* attribute"
