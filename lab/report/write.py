"""Entry points: write a study's report directory, print its results table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lab.errors import LabError
from lab.report.answer import answer_lines
from lab.report.figures import report_figures
from lab.report.fmt import fmt_bytes, fmt_ci, fmt_num, fmt_time, setting_label
from lab.report.html import write_html
from lab.report.markdown import write_markdown
from lab.report.study import StudyAnalysis
from lab.study.attrs import FINGERPRINT_ATTR
from lab.study.identity import canonical, first_difference, load_existing_study, stored_identity
from lab.study.journal import report_folder
from lab.study.spec import Ablation, load_ablation
from lab.study.storage import redact_url, storage_errors


def report_dir(abl: Ablation) -> Path:
    return report_folder(abl.study)


def check_fingerprint(abl: Ablation, study, force: bool = False) -> str | None:
    """None when the stored study was made from this ablation file; else what differs.

    Without `force` a mismatch is an error (the report would describe another study)."""
    stored = study.user_attrs.get(FINGERPRINT_ATTR)
    fp, ident = abl.fingerprint()
    if stored is None or stored == fp:
        return None
    if canonical(stored_identity(study)) == canonical(ident):
        return None  # made when fewer keys were in the identity, at the values it has now
    what = first_difference(stored_identity(study), ident)
    if not force:
        raise LabError(
            f"study '{abl.study}' in {redact_url(abl.storage)} was not made from {abl.path}: "
            f"its {what}. Give the ablation file the study was swept with, or --force to "
            "report it anyway (the report then says so)."
        )
    return what


def write_report(path: str, overrides: list[str] | None = None, quiet: bool = False,
                 force: bool = False) -> int:
    """Write reports/<study>/ (report.md, report.html, PNG figures, summary.json) from the
    study storage."""
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    abl = load_ablation(path, overrides or [])
    with storage_errors(abl.storage):  # a corrupt or read-only storage: one clear message
        study = load_existing_study(abl)
        mismatch = check_fingerprint(abl, study, force)
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
    text = write_markdown(sa, figures)
    if mismatch:
        head, _, rest = text.partition("\n")
        text = (f"{head}\n\n> **Warning.** This report was forced (`--force`): the study in "
                f"storage was not made from `{abl.path}` (its {mismatch}). Descriptions and "
                f"commands below come from that file.\n{rest}")
    (out / "report.md").write_text(text)
    write_html(out / "report.md")
    summary = {"answer": answer_lines(sa, sa.verdicts()), **sa.summary()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if not quiet:
        console.print(f"report: {out / 'report.md'} (and report.html, figures inline)")
        if mismatch:
            console.print(f"[yellow]forced: the stored study differs from {abl.path}[/yellow]")
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
