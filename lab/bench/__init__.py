"""``lab bench``: how fast the lab trains on this machine, and where the time goes.

Seven sections, each written to ``reports/bench/report.md`` (raw numbers in ``results.json``),
one module each (in SECTIONS order):

1. harness: the lab's Lightning training (``lab.train.train`` itself, with its Trainer,
   logger, checkpointing, progress bar and determinism as configured) against a minimal
   plain-PyTorch loop over the same model, task, batch and optimizer;
2. utilisation: achieved training FLOP/s against the peak matmul FLOP/s measured here;
3. looping: a looped stack against the unrolled uniform stack of the same blocks;
4. data: batch generation time against the training step time, per task;
5. sweep: trials per hour of the smoke study, 1 worker x 2 threads vs 2 x 1;
6. compile: step time with and without ``train.compile``, and the compile time;
7. gpu: on a CUDA GPU only, the GPU preset's model FLOP utilisation, lab vs plain loop, data
   and compile shares, and the GPU study's trials per hour at 1 and 2 trials per GPU; also
   written alone to ``gpu.md`` (skipped, and no ``gpu.md``, without a GPU).

Each section module has ``run(sizes, workdir, results) -> dict`` (results: the sections run
before it, by name) and ``render(result) -> list[str]`` (its part of report.md); what they
share is in ``lab.bench.common``.

Every timed figure is a median over repeated measurements taken after a warm-up, reported
with its min and max. Where two things are compared (A against B) their measurements are
interleaved (A B A B ...) in one process, so that a slow phase of a noisy machine hits both.
Everything runs on one thread (``torch.set_num_threads(1)``) except the sweep, whose worker
processes set their own thread counts. Training steps run where the lab trains (a GPU when
there is one), the plain loop and the matmul peaks on the same device.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from lab.bench import compile, data, gpu, harness, looping, sweep, utilisation
from lab.bench.common import FULL, QUICK, PlainLoop, Sizes, first_line, interleave, machine, summary

__all__ = ["DEFAULT_OUT", "FULL", "QUICK", "REGISTRY", "SECTIONS", "PlainLoop", "Sizes", "interleave",
           "machine", "render", "run_bench", "summary"]

DEFAULT_OUT = "reports/bench"

# The sections, in the order they run and appear in the report.
REGISTRY: dict[str, ModuleType] = {
    "harness": harness,
    "utilisation": utilisation,
    "looping": looping,
    "data": data,
    "sweep": sweep,
    "compile": compile,
    "gpu": gpu,
}
SECTIONS = tuple(REGISTRY)


def run_bench(quick: bool = False, out_dir: str | os.PathLike = DEFAULT_OUT) -> int:
    """Run the sections, write report.md and results.json into out_dir (and gpu.md when the
    GPU section ran on a GPU); 0 if all ran."""
    from lab.train import quiet_lightning

    quiet_lightning()
    sizes = QUICK if quick else FULL
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    command = "lab bench" + (" --quick" if quick else "") + (
        "" if str(out_dir) == DEFAULT_OUT else f" --out {out_dir}")
    results: dict[str, Any] = {"command": command, "quick": quick, "machine": machine(),
                               "section_time_s": {}}
    failed = 0
    try:
        with tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp:
            work = Path(tmp)
            for name, section in REGISTRY.items():
                t0 = time.perf_counter()
                print(f"lab bench: {name} ...", file=sys.stderr, flush=True)
                try:
                    torch.set_num_threads(1)
                    results[name] = section.run(sizes, work, results)
                except Exception as e:  # noqa: BLE001 - one failed section does not stop the rest
                    failed += 1
                    results[name] = {"error": first_line(e),
                                     "traceback_tail": traceback.format_exc().strip().splitlines()[-3:]}
                results["section_time_s"][name] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    results["total_time_s"] = time.perf_counter() - t_start
    with contextlib.suppress(OSError):
        results["machine"]["load_average_at_end"] = list(os.getloadavg())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "report.md").write_text(render(results))
    if results.get("gpu", {}).get("ran"):
        (out / "gpu.md").write_text(render(results, only=("gpu",)))
    print(f"lab bench: wrote {out / 'report.md'} in {results['total_time_s']:.0f}s",
          file=sys.stderr, flush=True)
    return 1 if failed else 0


def render(r: dict, only: tuple[str, ...] | None = None) -> str:
    """report.md from the results of run_bench: the header, then each section's part (or
    only those named)."""
    m = r["machine"]
    lines = [
        "# lab bench",
        "",
        f"Command: `{r['command']}` (run from the repository root). "
        f"Total time {r['total_time_s']:.0f} s"
        + (" — **quick sizes** (a test of the machinery, not a measurement)." if r["quick"] else "."),
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; threads used: 1 (sweep workers: see section 5); "
        f"torch {m['torch']}, lightning {m['lightning']}, Python {m['python']}; "
        f"GPU: {m.get('gpu', 'none')}. Load average at start "
        f"{', '.join(f'{x:.2f}' for x in m.get('load_average_at_start', []))}, at end "
        f"{', '.join(f'{x:.2f}' for x in m.get('load_average_at_end', []))}.",
        "",
        "Every time is a median over repeated measurements after a warm-up, shown as "
        "median [min–max]; compared measurements are interleaved (A B A B ...) in one process. "
        "Step times are per training step: batch, forward, backward, gradient clipping, AdamW "
        "update and schedule.",
        "",
        "| section | time |",
        "|---|---:|",
        *[f"| {k} | {v:.1f} s |" for k, v in r["section_time_s"].items()],
        "",
    ]
    for name, section in REGISTRY.items():
        if only is None or name in only:
            lines += section.render(r.get(name, {"error": "not run"}))
    return "\n".join(lines).rstrip() + "\n"
