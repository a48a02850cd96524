"""Section 1, harness overhead: the lab's Lightning training (``lab.train.train`` itself, with
its Trainer, logger, checkpointing, progress bar and determinism as configured) against a
minimal plain-PyTorch loop over the same model, task, batch and optimizer."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from lab.bench.common import (
    PlainLoop,
    Sizes,
    bench_config,
    error_lines,
    ms,
    range_str,
    ratio,
    summary,
    verdict,
)
from lab.eval.device import synchronize
from lab.model import resolve

TITLE = "## 1. Harness overhead"

# Phases of a lab step, between the Lightning hooks that bound them (in call order).
LAB_PHASES = (
    ("loop+data", "on_train_batch_start"),  # previous step's batch-end work, LR schedule, batch
    ("forward", "on_before_zero_grad"),  # training_step: forward, loss, logging
    ("zero_grad", "on_before_backward"),
    ("backward", "on_after_backward"),
    ("closure end", "on_before_optimizer_step"),
    ("clip+optimizer", "on_train_batch_end"),  # clipping, AdamW step, batch-end hooks
)
# Lab phases against plain-loop phases, for the report.
ALIGNED = (
    ("batch + loop", ("loop+data",), ("data",)),
    ("forward", ("forward",), ("forward",)),
    ("backward", ("backward",), ("backward",)),
    ("zero_grad, clipping, AdamW, schedule", ("zero_grad", "closure end", "clip+optimizer"),
     ("clip", "optimizer")),
)


def _interleave_callback(plain: PlainLoop, warmup: int, chunk: int, reps: int):
    from lightning.pytorch.callbacks import Callback

    class Interleave(Callback):
        """Inside the lab's own training run: after `warmup` lab steps, alternate a chunk of
        plain-loop steps (run here, between two lab steps) and a chunk of timed lab steps.

        A lab chunk is timed from the end of this hook at one step to its start `chunk`
        steps later: every other hook, the logger, the progress bar, the checkpoint callback
        and the data loader of those steps fall inside it, and the plain steps do not.
        Within timed chunks the time between the hooks of LAB_PHASES is summed per phase."""

        def __init__(self):
            self.seen = 0
            self.t0: float | None = None
            self.last = 0.0
            self.lab: list[float] = []
            self.plain: list[dict[str, float]] = []
            self.sums = {name: 0.0 for name, _ in LAB_PHASES}
            self.lab_chunks: list[dict[str, float]] = []

        def _mark(self, phase: str) -> None:
            if self.t0 is not None:
                now = time.perf_counter()
                self.sums[phase] += now - self.last
                self.last = now

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._mark("loop+data")

        def on_before_zero_grad(self, trainer, pl_module, optimizer):
            self._mark("forward")

        def on_before_backward(self, trainer, pl_module, loss):
            self._mark("zero_grad")

        def on_after_backward(self, trainer, pl_module):
            self._mark("backward")

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self._mark("closure end")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            synchronize(pl_module.device)  # a chunk's time covers its kernels (no-op on a CPU)
            self._mark("clip+optimizer")
            now = time.perf_counter()
            self.seen += 1
            if self.t0 is not None:
                if (self.seen - warmup) % chunk:
                    self.last = time.perf_counter()
                    return
                self.lab.append((now - self.t0) / chunk)
                self.lab_chunks.append({k: v / chunk for k, v in self.sums.items()})
                self.sums = dict.fromkeys(self.sums, 0.0)
                self.t0 = None
            if self.seen < warmup:
                return
            with torch.enable_grad():
                if self.seen == warmup:
                    plain.run(warmup)
                if len(self.lab) >= reps:
                    trainer.should_stop = True
                    return
                phases = plain.run_phases(chunk)
                if plain.device.type != "cpu":
                    # The phase timers wait for the GPU at every boundary: the step time is
                    # taken from a chunk without them.
                    phases["total"] = plain.run(chunk)
                self.plain.append(phases)
            synchronize(pl_module.device)
            self.t0 = self.last = time.perf_counter()

        @property
        def lab_phases(self) -> dict[str, dict]:
            chunks = [{**c, "total": sum(c.values())} for c in self.lab_chunks]
            return {k: summary([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}

    return Interleave()


def harness_pair(sizes: Sizes, overrides: list[str], warmup: int, chunk: int, reps: int,
                 workdir: Path, files: list[str] | None = None) -> dict:
    """Lab vs plain step time of one config (`files`, then `overrides`), interleaved in one
    lab training run; the plain loop compiles its blocks when the config does."""
    from lab.train import train

    window = warmup + reps * chunk
    # Evaluation-only keys: the post-training cost measurements and the validation set size
    # happen after the measured window and do not change a training step.
    extra = ["eval.cost=false", "train.val_size=256"]
    cfg = bench_config(sizes, *overrides, *extra, files=files)
    if cfg.train.val_every <= window:  # keep validation out of the measured window
        extra.append(f"train.val_every={window + 1}")
    if cfg.train.steps <= window:
        extra.append(f"train.steps={window + 1}")
    cfg = bench_config(sizes, *overrides, *extra, files=files)
    plain = PlainLoop(cfg, compile_backend=None if cfg.train.compile else False)
    cb = _interleave_callback(plain, warmup, chunk, reps)
    res = train(cfg, save_dir=str(workdir / "runs"), name="bench", callbacks=[cb])
    if len(cb.lab) < reps:
        raise RuntimeError(f"the lab run stopped after {res.steps} steps ({res.status}: {res.reason})")
    torch.set_num_threads(1)
    plain_steps = [p["total"] for p in cb.plain]
    lab, pl = summary(cb.lab), summary(plain_steps)
    pairs = summary([a / b for a, b in zip(cb.lab, plain_steps, strict=True)])
    cfg_r, task, plan = resolve(cfg)
    return {
        "overrides": [*sizes.base, *sizes.pointer, *overrides],
        "model": plan.describe(), "d_model": cfg_r.model.d_model, "n_layers": cfg_r.model.n_layers,
        "task": task.describe() if hasattr(task, "describe") else cfg.task["name"],
        "batch_size": cfg.train.batch_size, "seq_len": task.seq_len,
        "warmup_steps": warmup, "chunk_steps": chunk, "reps": reps,
        "val_every": cfg.train.val_every, "log_every": cfg.train.log_every,
        "ckpt_every": cfg.train.ckpt_every, "progress_bar": cfg.train.progress,
        "deterministic": cfg.train.deterministic, "grad_clip": cfg.train.grad_clip,
        "lab_step_s": lab, "plain_step_s": pl,
        "ratio": ratio(lab, pl), "ratio_pairs": pairs,
        "overhead_s": lab["median"] - pl["median"],
        "plain_phases_s": {k: summary([p[k] for p in cb.plain]) for k in cb.plain[0]},
        "lab_phases_s": cb.lab_phases,
    }


def run(sizes: Sizes, workdir: Path, results: dict) -> dict:
    """Both configs (default and large) of sizes.harness."""
    out: dict[str, Any] = {"target": 1.10, "configs": {}}
    for label, (warmup, chunk, reps) in sizes.harness.items():
        overrides = sizes.large if label == "large" else []
        out["configs"][label] = harness_pair(sizes, overrides, warmup, chunk, reps, workdir)
    out["ratio_default"] = out["configs"]["default"]["ratio"]
    out["met"] = out["ratio_default"] <= out["target"]
    return out


def render(result: dict) -> list[str]:
    out = [TITLE, ""]
    if "error" in result:
        return out + error_lines(result)
    d = result["configs"]["default"]
    out += [
        "The lab's own training run (`lab.train.train`: LabModule, TaskData, the Trainer with "
        f"logging every {d['log_every']} steps, progress bar {'on' if d['progress_bar'] else 'off'}, "
        f"checkpoints every {d['ckpt_every']} steps, deterministic={d['deterministic']}, "
        f"gradient clipping {d['grad_clip']}) against a minimal plain-PyTorch loop over the same "
        "model, batches, AdamW param groups and LambdaLR schedule. The plain steps run in chunks "
        "between two lab steps of the same process; each lab chunk is timed from one step's "
        "end-of-batch hook to a later one's, after "
        f"{d['warmup_steps']} warm-up steps and before any validation (val_every={d['val_every']}).",
        "",
        "| config | model | lab step | plain step | lab / plain (of medians) | per-pair ratio | overhead |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, c in result["configs"].items():
        out.append(
            f"| {label} (d={c['d_model']}, {c['n_layers']} layers, batch {c['batch_size']}x"
            f"{c['seq_len']}) | {c['model']} | {ms(c['lab_step_s'])} | {ms(c['plain_step_s'])} | "
            f"{c['ratio']:.3f} | {range_str(c['ratio_pairs'])} | {ms(c['overhead_s'])}/step |"
        )
    out += [
        "",
        f"Target: lab at most 10% slower than the plain loop at the default config (ratio <= "
        f"{result['target']:.2f}): {verdict(result['ratio_default'], result['target'])}.",
        "",
        "Where the time goes, per step (medians over the same chunks): the lab's phases are "
        "timed between the Lightning hooks that bound them, the plain loop's by timers around "
        "each phase. The lab's batch + loop phase holds "
        "everything between two steps: the data loader, Lightning's loop and its hooks, the "
        "logger, the progress bar, the checkpoint callback and the LR schedule.",
        "",
        "| config | phase | lab | plain | lab − plain |",
        "|---|---|---:|---:|---:|",
    ]
    for label, c in result["configs"].items():
        lab, ph = c.get("lab_phases_s") or {}, c.get("plain_phases_s") or {}
        if not lab or not ph:
            continue
        for name, lab_keys, plain_keys in (*ALIGNED, ("total", ("total",), ("total",))):
            a = sum(lab[k]["median"] for k in lab_keys)
            b = sum(ph[k]["median"] for k in plain_keys)
            out.append(f"| {label} | {name} | {ms(a)} | {ms(b)} | {ms(a - b)} |")
    return out + [""]
