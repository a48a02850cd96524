"""Markdown reports with figures, written from the study storage alone.

``lab report ablations/NAME.yaml`` (also run at the end of every sweep) reads the Optuna
study, turns its trials into :class:`lab.stats.TrialRecord`, and writes
``reports/<study>/report.md``, PNG figures and ``summary.json`` (the table's numbers, for
notebooks and tests).

Modules: ``study`` (StudyAnalysis: records, statistics, verdicts of one study), ``fmt`` (the
number formatters), ``figures`` (one module per family of figures), ``markdown`` (the
sections), ``write`` (the entry points re-exported here).
"""

from lab.report.study import StudyAnalysis
from lab.report.write import print_results, report_dir, write_report

__all__ = ["StudyAnalysis", "print_results", "report_dir", "write_report"]
