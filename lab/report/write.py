"""Entry points: write a study's report directory, print its results table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lab.errors import LabError
from lab.report.figures import report_figures
from lab.report.fmt import fmt_bytes, fmt_ci, fmt_num, fmt_time, setting_label
from lab.report.markdown import write_markdown
from lab.report.study import StudyAnalysis
from lab.study.run import load_existing_study
from lab.study.spec import Ablation, load_ablation


def report_dir(abl: Ablation) -> Path:
    return Path("reports") / abl.study


def write_report(path: str, overrides: list[str] | None = None, quiet: bool = False) -> int:
    """Write reports/<study>/ (report.md, PNG figures, summary.json) from the study storage."""
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    abl = load_ablation(path, overrides or [])
    study = load_existing_study(abl)
    sa = StudyAnalysis(abl, study)
    if sa.n_complete == 0:
        raise LabError(
            f"study '{abl.study}' has no completed trials "
            f"({len(study.trials)} trials in storage); nothing to report. Run "
            f"`lab sweep {abl.path}` first."
        )
    out = report_dir(abl)
    out.mkdir(parents=True, exist_ok=True)
    figures = report_figures(sa, out)
    (out / "report.md").write_text(write_markdown(sa, figures))
    (out / "summary.json").write_text(json.dumps(sa.summary(), indent=2, default=str))
    if not quiet:
        console.print(f"report: {out / 'report.md'}")
        for g, v in sa.verdicts():
            console.print(f"[bold]{g + ': ' if g else ''}[/bold]{v.sentence}")
    return 0


def print_results(abl: Ablation) -> None:
    """The results table of a study on stdout."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    study = load_existing_study(abl)
    sa = StudyAnalysis(abl, study)
    table = Table(title=f"{escape(abl.study)}: {sa.objective} ({int(sa.confidence * 100)}% CI over seeds)",
                  header_style="bold")
    for col in ("setting", "n", "mean ± CI", "params", "depth", "FLOPs/tok", "latency/tok",
                "KV/tok"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for s in sa.stats:
        c = s.costs
        table.add_row(escape(setting_label(s)), f"{s.n}", fmt_ci(s, sa.objective), fmt_num(c.get("params")),
                      fmt_num(c.get("effective_depth")), fmt_num(c.get("flops_per_token")),
                      fmt_time(c.get("latency_s_per_token")), fmt_bytes(c.get("kv_bytes_per_token")))
    Console(width=None if sys.stdout.isatty() else 140).print(table)
