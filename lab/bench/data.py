"""Section 4, data share: batch generation time against the training step time, per task."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lab.bench.common import (
    PlainLoop,
    Sizes,
    bench_config,
    deterministic,
    error_lines,
    interleave,
    ms,
    ratio,
    summary,
    verdict,
)
from lab.tasks import Task

TITLE = "## 4. Data share"


def run(sizes: Sizes, workdir: Path, results: dict) -> dict:
    from torch.utils.data import DataLoader

    from lab.train.data import TrainStream

    out: dict[str, Any] = {"target": 0.05, "tasks": {}}
    n = sizes.data_chunk
    for name, files in sizes.tasks.items():
        cfg = bench_config(sizes, files=files)
        deterministic(cfg)
        loop = PlainLoop(cfg)
        task: Task = loop.task
        raw = iter(TrainStream(task, cfg.train.batch_size, cfg.seed, 0))  # what the lab samples
        stream = iter(DataLoader(TrainStream(task, cfg.train.batch_size, cfg.seed, 0), batch_size=None))

        def sample(it=raw) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                next(it)
            return (time.perf_counter() - t0) / n

        def loader(it=stream) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                next(it)
            return (time.perf_counter() - t0) / n

        loop.run(max(2, n // 2))
        sample(), loader()
        t = interleave({"sample": sample, "loader": loader, "step": lambda lp=loop: lp.run(n)},
                       sizes.data_reps)
        s = {k: summary(v) for k, v in t.items()}
        out["tasks"][name] = {
            "config": [str(f) for f in files] or ["defaults"],
            "task": task.describe() if hasattr(task, "describe") else name,
            "batch_size": cfg.train.batch_size, "seq_len": task.seq_len,
            "sample_s": s["sample"], "loader_s": s["loader"], "step_s": s["step"],
            "share": ratio(s["sample"], s["step"]),
            "share_loader": ratio(s["loader"], s["step"]),
        }
        out["tasks"][name]["met"] = out["tasks"][name]["share"] < out["target"]
    out["met"] = all(v["met"] for v in out["tasks"].values())
    return out


def render(result: dict) -> list[str]:
    out = [TITLE, ""]
    if "error" in result:
        return out + error_lines(result)
    out += [
        "Generating one training batch (task.sample with the lab's per-step seeding; and the "
        "same through the lab's DataLoader) against one plain training step of the task's "
        "config (the default model), interleaved.",
        "",
        "| task | config | batch | sample | via DataLoader | step | share | share (DataLoader) "
        "| target < 5% |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, t in result["tasks"].items():
        out.append(
            f"| {name} | {', '.join(t['config'])} | {t['batch_size']}x{t['seq_len']} | "
            f"{ms(t['sample_s'])} | {ms(t['loader_s'])} | {ms(t['step_s'])} | "
            f"{100 * t['share']:.2f}% | {100 * t['share_loader']:.2f}% | "
            f"{verdict(t['share'], result['target'], unit='pp')} |"
        )
    return out + [""]
