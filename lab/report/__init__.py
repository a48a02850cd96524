"""Markdown reports with figures, written from the study storage alone.

``lab report ablations/NAME.yaml`` (also run at the end of every sweep) reads the Optuna
study, turns its trials into :class:`lab.stats.TrialRecord`, and writes
``reports/<study>/report.md``, PNG figures and ``summary.json`` (the table's numbers, for
notebooks and tests).

Modules: ``study`` (StudyAnalysis: records, statistics, verdicts of one study), ``fmt`` (the
number formatters), ``figures`` (one module per family of figures), ``markdown`` (the
sections), ``write`` (the entry points re-exported here).
"""

__all__ = ["StudyAnalysis", "print_results", "report_dir", "write_report"]


def __getattr__(name: str):
    # Loaded on first use: `lab export` (lab.report.export) needs neither the figures
    # (matplotlib) nor the statistics (scipy) that the report imports.
    if name == "StudyAnalysis":
        from lab.report.study import StudyAnalysis

        return StudyAnalysis
    if name in ("print_results", "report_dir", "write_report"):
        from lab.report import write

        return getattr(write, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
