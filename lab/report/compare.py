"""`lab compare A.yaml B.yaml ...`: every setting of several studies that share an objective,
in one table and one figure, each with its confidence interval over seeds.

Each study is analysed as its own report does (:class:`lab.report.StudyAnalysis`, intervals
from :mod:`lab.stats`); nothing is pooled across studies. Writes
``reports/compare/<study>+<study>/compare.md`` (and ``.html``, ``compare.png``,
``compare.json``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lab.errors import LabError
from lab.report.figures import plt
from lab.report.fmt import fmt_ci, fmt_num, fmt_obj, setting_label
from lab.report.html import write_html
from lab.report.markdown import md_table
from lab.report.study import StudyAnalysis
from lab.report.write import check_fingerprint
from lab.study.identity import load_existing_study
from lab.study.spec import load_ablation


def analyses(paths: list[str], overrides: list[str] | None = None) -> list[StudyAnalysis]:
    """One StudyAnalysis per ablation; refuses studies with different objectives."""
    if len(paths) < 2:
        raise LabError("lab compare needs at least two ablation files.")
    out = []
    for p in paths:
        abl = load_ablation(p, overrides or [])
        study = load_existing_study(abl)
        check_fingerprint(abl, study)
        sa = StudyAnalysis(abl, study)
        if sa.n_complete == 0:
            raise LabError(f"study '{abl.study}' has no completed trials to compare.")
        out.append(sa)
    objectives = {(sa.objective, sa.direction) for sa in out}
    if len(objectives) > 1:
        raise LabError("these studies do not share an objective: " + "; ".join(
            f"{sa.abl.study}: {sa.objective} ({sa.direction})" for sa in out)
            + ". Compare studies with the same objective and direction.")
    return out


def compare_rows(sas: list[StudyAnalysis]) -> list[dict]:
    rows = []
    for sa in sas:
        for s in sa.stats:
            if not s.n:
                continue
            rows.append({"study": sa.abl.study, "setting": setting_label(s), "n": s.n,
                         "mean": s.mean, "ci_low": _finite(s.ci_low), "ci_high": _finite(s.ci_high),
                         "confidence": sa.confidence, "ci": fmt_ci(s, sa.objective),
                         "params": s.costs.get("params"),
                         "flops_per_token": s.costs.get("flops_per_token")})
    return rows


def compare_figure(rows: list[dict], objective: str, out: Path) -> Path:
    """Mean and interval of every setting, one colour per study, best at the top."""
    pyplot = plt()
    scale = 100 if "acc" in objective else 1
    fig, ax = pyplot.subplots(figsize=(7.5, 0.32 * len(rows) + 1.2))
    studies = list(dict.fromkeys(r["study"] for r in rows))
    for y, r in enumerate(reversed(rows)):
        c = f"C{studies.index(r['study']) % 10}"
        lo = r["ci_low"] if r["ci_low"] is not None else r["mean"]
        hi = r["ci_high"] if r["ci_high"] is not None else r["mean"]
        ax.errorbar(r["mean"] * scale, y, xerr=[[(r["mean"] - lo) * scale], [(hi - r["mean"]) * scale]],
                    fmt="o", color=c, capsize=3, label=r["study"])
    ax.set_yticks(range(len(rows)), [f"{r['study']}: {r['setting']}" for r in reversed(rows)],
                  fontsize=8)
    ax.set_xlabel(objective + (" (%)" if scale == 100 else ""))
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    ax.legend(seen.values(), seen.keys(), fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(out)
    pyplot.close(fig)
    return out


def write_compare(paths: list[str], overrides: list[str] | None = None,
                  out_dir: str | None = None) -> tuple[Path, list[dict]]:
    sas = analyses(paths, overrides)
    objective, conf = sas[0].objective, int(sas[0].confidence * 100)
    rows = compare_rows(sas)
    out = Path(out_dir) if out_dir else Path("reports") / "compare" / "+".join(
        sa.abl.study for sa in sas)
    out.mkdir(parents=True, exist_ok=True)
    compare_figure(rows, objective, out / "compare.png")
    table = md_table(
        ["study", "setting", "n", f"{objective} mean ± {conf}% CI", "interval", "unique params",
         "FLOPs/token"],
        [[r["study"], r["setting"], str(r["n"]), r["ci"],
          "-" if r["ci_low"] is None else
          f"{fmt_obj(r['ci_low'], objective)} to {fmt_obj(r['ci_high'], objective)}",
          fmt_num(r["params"]), fmt_num(r["flops_per_token"])] for r in rows], "llrrrrr")
    md = "\n".join([
        f"# Comparison: {', '.join(sa.abl.study for sa in sas)}", "",
        f"Objective `{objective}` ({sas[0].direction}). Each row is one setting of one study: "
        f"the mean over its completed seeds with a {conf}% Student-t interval, computed within "
        "its own study; studies may differ in task, budget and seeds (see each study's report).",
        "", table, "", "![comparison](compare.png)", "",
        *[f"- {sa.abl.study}: {sa.verdicts()[0][1].sentence}" for sa in sas if sa.verdicts()], "",
    ])
    (out / "compare.md").write_text(md)
    (out / "compare.json").write_text(json.dumps(rows, indent=1, default=str))
    write_html(out / "compare.md")
    return out, rows


def _finite(x) -> float | None:
    return x if isinstance(x, int | float) and math.isfinite(x) else None
