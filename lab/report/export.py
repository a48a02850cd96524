"""`lab export`: one row per trial (setting, seed, state, every metric and cost) as CSV, JSON
or Parquet, read from the study storage through the names of :mod:`lab.study.attrs`.

Columns: ``trial``, ``setting``, ``group``, ``seed``, ``state``, ``value`` (the objective),
the swept parameters as ``param/<key>``, every final metric as ``metric/<name>``, every
numeric cost (``params``, ``flops_per_token``, ...), ``fail_reason`` and ``run_dir``.
Numbers are written exactly (CSV uses Python's shortest round-tripping repr).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.study.attrs import (
    FAIL_ATTR,
    GROUP_ATTR,
    METRIC_PREFIX,
    METRICS_ATTR,
    SETTING_ATTR,
    SPURIOUS_ATTR,
)

FORMATS = ("csv", "json", "parquet")
COST_ATTRS = ("params", "effective_depth", "flops_per_token", "train_flops_per_token",
              "latency_s_per_token", "kv_bytes_per_token", "train_tokens_per_s",
              "train_step_peak_bytes", "wall_time_s", "steps")


def trial_rows(study) -> list[dict[str, Any]]:
    """One dict per trial of the study (spurious trials, asked for after the queue emptied,
    are left out), in trial order."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if not t.params or t.user_attrs.get(SPURIOUS_ATTR):
            continue
        a = t.user_attrs
        row: dict[str, Any] = {
            "trial": t.number, "setting": a.get(SETTING_ATTR), "group": a.get(GROUP_ATTR, ""),
            "seed": t.params.get("seed"), "state": t.state.name, "value": t.value,
        }
        for k, v in t.params.items():
            if k != "seed":
                row[f"param/{k}"] = v  # lists and mappings stay JSON text
        metrics = dict(a.get(METRICS_ATTR) or {})
        metrics.update({k[len(METRIC_PREFIX):]: v for k, v in a.items()
                        if k.startswith(METRIC_PREFIX)})
        for k in sorted(metrics):
            row[f"metric/{k}"] = metrics[k]
        for k in COST_ATTRS:
            if k in a:
                row[k] = a[k]
        row["fail_reason"] = a.get(FAIL_ATTR)
        row["run_dir"] = a.get("run_dir")
        rows.append(row)
    return rows


def columns(rows: list[dict]) -> list[str]:
    """Every column, in first-seen order (so every row of a CSV has the same header)."""
    return list(dict.fromkeys(k for r in rows for k in r))


def write_rows(rows: list[dict], out: Path, fmt: str) -> Path:
    if fmt not in FORMATS:
        raise LabError(f"export format '{fmt}' is not one of {', '.join(FORMATS)}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    cols = columns(rows)
    if fmt == "csv":
        with out.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, restval="")
            w.writeheader()
            for r in rows:
                w.writerow({k: "" if v is None else v for k, v in r.items()})
    elif fmt == "json":
        out.write_text(json.dumps([{k: r.get(k) for k in cols} for r in rows], indent=1,
                                  default=str))
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise LabError(
                "parquet needs pyarrow, which is not installed (about 55 MB): "
                "pip install pyarrow, or export csv or json."
            ) from None
        table = pa.Table.from_pylist([{k: r.get(k) for k in cols} for r in rows])
        pq.write_table(table, out)
    return out


def export_study(path: str, overrides: list[str] | None = None, fmt: str = "csv",
                 out: str | None = None) -> Path:
    """Write the study's trials to `out` (default reports/<study>/trials.<fmt>)."""
    from lab.study.identity import load_existing_study
    from lab.study.journal import report_folder
    from lab.study.spec import load_ablation

    abl = load_ablation(path, overrides or [])
    study = load_existing_study(abl)
    rows = trial_rows(study)
    if not rows:
        raise LabError(f"study '{abl.study}' has no trials to export.")
    target = Path(out) if out else report_folder(abl.study) / f"trials.{fmt}"
    return write_rows(rows, target, fmt)
