"""Section 5, sweep throughput: trials per hour of the smoke study, 1 worker x 2 threads vs
2 workers x 1 thread (the worker processes set their own thread counts)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from lab.bench.common import Sizes, error_lines, sec, summary
from lab.provenance import REPO

TITLE = "## 5. Sweep throughput"


def run_study(sizes: Sizes, workers: int, workdir: Path, label: str,
              ablation: str | None = None, overrides: list[str] | None = None) -> dict:
    """One `lab sweep` of `ablation` (default: the sizes' one) in a fresh storage and working
    directory, with `workers` workers; `overrides` replace the thread split of the CPU runs
    (default: the cores shared out among the workers)."""
    import optuna

    from lab.study.spec import load_ablation

    cwd = workdir / f"sweep-{label}"
    cwd.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{cwd / 'study.db'}"
    study = f"bench-{label}"
    ablation = ablation or str(REPO / sizes.sweep_ablation)
    threads = max(1, (os.cpu_count() or 1) // workers)
    overrides = [f"train.threads={threads}"] if overrides is None else overrides
    argv = [sys.executable, "-m", "lab.cli", "sweep", ablation, "--workers", str(workers),
            f"storage={storage}", f"study={study}", *overrides, *sizes.sweep_overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    log = cwd / "sweep.log"
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(argv, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"sweep with {workers} worker(s) exited with {proc.returncode}: "
                           + " | ".join(tail))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    trials = [t for t in optuna.load_study(study_name=study, storage=storage).get_trials()
              if t.state.name == "COMPLETE"]
    total = len(load_ablation(ablation, [f"storage={storage}", *overrides,
                                         *sizes.sweep_overrides]).pairs())
    if len(trials) < total:
        raise RuntimeError(f"sweep with {workers} worker(s): {len(trials)} of {total} trials completed")
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    span = (end - start).total_seconds()
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    train_walls = [float(t.user_attrs["wall_time_s"]) for t in trials
                   if isinstance(t.user_attrs.get("wall_time_s"), int | float)]
    return {
        "workers": workers, "threads_per_worker": threads, "overrides": overrides,
        "trials": len(trials), "command_wall_s": wall, "trial_span_s": span,
        "trials_per_hour": len(trials) / span * 3600,
        "trials_per_hour_command": len(trials) / wall * 3600,
        "trial_s": summary(durations),
        "fit_s": summary(train_walls) if train_walls else None,
    }


def run(sizes: Sizes, workdir: Path, results: dict) -> dict:
    import torch

    # The split of a CPU's cores between workers; on a GPU machine too (section 7 measures
    # the workers of a GPU).
    cpu = ["train.accelerator=cpu"] if torch.cuda.is_available() else []
    runs = {f"{w}x{t}": run_study(sizes, w, workdir, f"{w}x{t}", overrides=[
        f"train.threads={max(1, (os.cpu_count() or 1) // w)}", *cpu]) for w, t in ((1, 2), (2, 1))}
    return {"ablation": sizes.sweep_ablation, "overrides": sizes.sweep_overrides, "runs": runs,
            "speedup_2x1": runs["2x1"]["trials_per_hour"] / runs["1x2"]["trials_per_hour"]}


def render(result: dict) -> list[str]:
    out = [TITLE, ""]
    if "error" in result:
        return out + error_lines(result)
    runs = result["runs"]
    over = " ".join(result["overrides"])
    out += [
        f"`lab sweep {result['ablation']} --workers N{(' ' + over) if over else ''}` with a fresh "
        "study storage and working directory each time, 1 worker x 2 threads first, then 2 "
        "workers x 1 thread (one run each: each run is long, so the two are not repeated). "
        "Trials per hour over the span from the first trial's start to the last one's end; "
        "the command's wall time also counts start-up and the report.",
        "",
        "| workers x threads | trials | trials/hour | command wall | trial span | per trial "
        "| fit per trial |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, s in runs.items():
        fit = sec(s["fit_s"]) if s.get("fit_s") else "-"
        out.append(f"| {label} | {s['trials']} | {s['trials_per_hour']:.0f} | "
                   f"{s['command_wall_s']:.0f} s | {s['trial_span_s']:.0f} s | {sec(s['trial_s'])} "
                   f"| {fit} |")
    out += ["", f"2 workers x 1 thread give **{result['speedup_2x1']:.2f}x** the trials per hour of "
            "1 worker x 2 threads. Where the time goes: a trial is a full lab run (start-up, "
            "training, validation, cost measurements, extrapolation); per-trial time minus fit "
            "time is the part outside Lightning's fit.", ""]
    return out
