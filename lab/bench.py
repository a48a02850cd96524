"""``lab bench``: how fast the lab trains on this machine, and where the time goes.

Six sections, each written to ``reports/bench/report.md`` (raw numbers in ``results.json``):

1. harness overhead: the lab's Lightning training (``lab.train.train`` itself, with its
   Trainer, logger, checkpointing, progress bar and determinism as configured) against a
   minimal plain-PyTorch loop over the same model, task, batch and optimizer;
2. utilisation: achieved training FLOP/s against the peak matmul FLOP/s measured here;
3. looping overhead: a looped stack against the unrolled uniform stack of the same blocks;
4. data share: batch generation time against the training step time, per task;
5. sweep throughput: trials per hour of the smoke study, 1 worker x 2 threads vs 2 x 1;
6. compilation: step time with and without ``train.compile``, and the compile time.

Every timed figure is a median over repeated measurements taken after a warm-up, reported
with its min and max. Where two things are compared (A against B) their measurements are
interleaved (A B A B ...) in one process, so that a slow phase of a noisy machine hits both.
Everything runs on one thread (``torch.set_num_threads(1)``) except the sweep, whose worker
processes set their own thread counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lab.config import LabConfig, load_config
from lab.model import Stack, build_model, resolve
from lab.provenance import REPO, cpu_model, versions
from lab.tasks import IGNORE, Task

DEFAULT_OUT = "reports/bench"

# --------------------------------------------------------------------------------------------
# Sizes: the full benchmark (under 10 minutes on two cores) and a tiny one for the tests.

_QUICK_BASE = ["model.d_model=16", "model.n_heads=2", "model.n_layers=2", "train.batch_size=16",
               "train.val_size=64", "train.warmup=2"]


@dataclass(frozen=True)
class Sizes:
    base: list[str]  # overrides applied to every config
    pointer: list[str]  # task overrides of the default (pointer) task
    large: list[str]  # the larger config of sections 1 and 2
    # Section 1: lab steps before timing, steps per timed chunk, chunks (per config)
    harness: dict[str, tuple[int, int, int]]
    square: int  # side of the square matmul
    gemm_reps: int
    loops: int  # section 3: r
    loop_chunk: int
    loop_reps: int
    data_chunk: int
    data_reps: int
    sweep_ablation: str
    sweep_overrides: list[str]
    compile_backend: str | None  # None: torch's default (inductor), as train.compile uses
    compile_chunk: int
    compile_reps: int
    tasks: dict[str, list[str]] = field(default_factory=dict)


FULL = Sizes(
    base=[], pointer=[],
    large=["model.d_model=256", "model.n_layers=6"],
    harness={"default": (30, 20, 20), "large": (3, 3, 5)},
    square=2048, gemm_reps=7,
    loops=4, loop_chunk=20, loop_reps=9,
    data_chunk=20, data_reps=9,
    sweep_ablation="ablations/smoke.yaml", sweep_overrides=[],
    compile_backend=None, compile_chunk=20, compile_reps=7,
    tasks={"pointer": [], "induction": ["configs/induction.yaml"], "word": ["configs/word.yaml"]},
)

QUICK = Sizes(
    base=_QUICK_BASE, pointer=["task.nodes=4", "task.hops=2"],
    large=["model.d_model=32", "model.n_layers=3"],
    harness={"default": (3, 3, 3), "large": (2, 2, 3)},
    square=128, gemm_reps=3,
    loops=2, loop_chunk=3, loop_reps=3,
    data_chunk=3, data_reps=3,
    sweep_ablation="tests/data/tiny.yaml", sweep_overrides=["seeds=[0]"],
    compile_backend="eager", compile_chunk=3, compile_reps=3,
    tasks={"pointer": [], "induction": ["configs/induction.yaml"], "word": ["configs/word.yaml"]},
)


# --------------------------------------------------------------------------------------------
# Statistics and timing helpers


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min and max of repeated measurements (and the measurements themselves)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values), "values": list(values)}


def ratio(a: dict, b: dict) -> float:
    """Ratio of two medians."""
    return a["median"] / b["median"]


def interleave(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[Any]]:
    """Call each measurement in turn, reps times (A B A B ...); each returns its timing."""
    out: dict[str, list[Any]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            out[k].append(fn())
    return out


def _config(sizes: Sizes, *overrides: str, files: list[str] | None = None) -> LabConfig:
    task = [] if files else sizes.pointer
    return load_config([REPO / f for f in files or []], [*sizes.base, *task, *overrides])


# --------------------------------------------------------------------------------------------
# The plain-PyTorch training loop the harness is compared with


PHASES = ("data", "forward", "backward", "clip", "optimizer")


class PlainLoop:
    """A minimal training loop: the lab's model, batches, AdamW param groups, LambdaLR
    schedule and gradient clipping, without Lightning."""

    def __init__(self, cfg: LabConfig, compile_backend: str | None | bool = False):
        from lab.train.data import mix
        from lab.train.optim import build_optimizer

        self._mix = mix
        cfg, task, plan = resolve(cfg)
        self.cfg, self.task = cfg, task
        torch.manual_seed(cfg.seed)
        self.model: Stack = build_model(cfg, task, plan).train()
        if compile_backend is not False:
            self.model.compile(**({"backend": compile_backend} if compile_backend else {}))
        t = cfg.train
        self.params = list(self.model.parameters())
        self.opt, self.sched = build_optimizer(self.params, cfg)
        self.clip = t.grad_clip or None
        self.g = torch.Generator()
        self.step = 0

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.g.manual_seed(self._mix(self.cfg.seed, self.step))
        return self.task.sample(self.cfg.train.batch_size, self.g, "train")

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)

    def update(self) -> None:
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        self.step += 1

    def run(self, n: int) -> float:
        """Seconds per step over n training steps (batch generation included)."""
        t0 = time.perf_counter()
        for _ in range(n):
            x, y = self.batch()
            self.loss(x, y).backward()
            self.update()
        return (time.perf_counter() - t0) / n

    def run_phases(self, n: int) -> dict[str, float]:
        """Seconds per step of each phase over n steps, and in all (total)."""
        acc = dict.fromkeys(PHASES, 0.0)
        clock = time.perf_counter
        start = clock()
        for _ in range(n):
            t0 = clock()
            x, y = self.batch()
            t1 = clock()
            loss = self.loss(x, y)
            t2 = clock()
            loss.backward()
            t3 = clock()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            t4 = clock()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.sched.step()
            self.step += 1
            t5 = clock()
            for k, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                acc[k] += dt
        out = {k: v / n for k, v in acc.items()}
        out["total"] = (clock() - start) / n
        return out


def _deterministic(cfg: LabConfig) -> None:
    # As the Trainer does it (deterministic=cfg.train.deterministic), so the plain loop and
    # the lab run the same kernels.
    torch.use_deterministic_algorithms(cfg.train.deterministic)


# --------------------------------------------------------------------------------------------
# 1. Harness overhead


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
                self.plain.append(plain.run_phases(chunk))
            self.t0 = self.last = time.perf_counter()

        @property
        def lab_phases(self) -> dict[str, dict]:
            chunks = [{**c, "total": sum(c.values())} for c in self.lab_chunks]
            return {k: summary([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}

    return Interleave()


def harness_pair(sizes: Sizes, overrides: list[str], warmup: int, chunk: int, reps: int,
                 workdir: Path) -> dict:
    """Lab vs plain step time of one config, interleaved in one lab training run."""
    from lab.train import train

    window = warmup + reps * chunk
    # Evaluation-only keys: the post-training cost measurements and the validation set size
    # happen after the measured window and do not change a training step.
    extra = ["eval.cost=false", "train.val_size=256"]
    cfg = _config(sizes, *overrides, *extra)
    if cfg.train.val_every <= window:  # keep validation out of the measured window
        extra.append(f"train.val_every={window + 1}")
    if cfg.train.steps <= window:
        extra.append(f"train.steps={window + 1}")
    cfg = _config(sizes, *overrides, *extra)
    plain = PlainLoop(cfg)
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


def section_harness(sizes: Sizes, workdir: Path) -> dict:
    out: dict[str, Any] = {"target": 1.10, "configs": {}}
    for label, (warmup, chunk, reps) in sizes.harness.items():
        overrides = sizes.large if label == "large" else []
        out["configs"][label] = harness_pair(sizes, overrides, warmup, chunk, reps, workdir)
    out["ratio_default"] = out["configs"]["default"]["ratio"]
    out["met"] = out["ratio_default"] <= out["target"]
    return out


# --------------------------------------------------------------------------------------------
# 2. Utilisation


def train_step_flops(cfg: LabConfig) -> int:
    """FLOPs of forward + backward of one training batch (FlopCounterMode)."""
    from lab.eval.cost import count_flops

    loop = PlainLoop(cfg)
    x, y = loop.batch()

    def run():
        loop.loss(x, y).backward()

    flops = count_flops(run)
    loop.model.zero_grad(set_to_none=True)
    return flops


def _gemm_timer(m: int, k: int, n: int, kind: str, target_s: float) -> tuple[Callable[[], float], int]:
    """A timed matmul of the kind autograd runs for a linear layer x (m, k) -> (m, n):
    forward x @ W^T, input gradient g @ W, weight gradient g^T @ x. Returns seconds per call."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g)
    gr = torch.randn(m, n, generator=g)
    if kind == "fwd":
        a, b = x, w.t()
    elif kind == "dx":
        a, b = gr, w
    else:
        a, b = gr.t(), x
    out = torch.empty(a.shape[0], b.shape[1])
    torch.mm(a, b, out=out)
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, min(10_000, int(target_s / once)))

    def timed() -> float:
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        return (time.perf_counter() - t0) / inner

    return timed, 2 * m * k * n


def model_gemms(cfg: LabConfig) -> list[dict]:
    """The GEMM shapes of one training step: every linear layer's forward, input-gradient
    and weight-gradient products, with how many times each runs."""
    cfg, task, plan = resolve(cfg)
    M = cfg.train.batch_size * task.seq_len
    counts: dict[tuple[str, int, int], int] = {}
    for b in plan.order():
        w, h = plan.widths[b], plan.hidden[b]
        for name, k, n in (("qkv", w, 3 * w), ("proj", w, w), ("fc", w, h), ("out", h, w)):
            counts[(name, k, n)] = counts.get((name, k, n), 0) + 1
    counts[("head", plan.out_width, task.vocab_size)] = 1
    shapes = []
    for (name, k, n), c in counts.items():
        for kind in ("fwd", "dx", "dw"):
            shapes.append({"layer": name, "kind": kind, "m": M, "k": k, "n": n, "count": c})
    return shapes


def peak_gemm(shapes: list[dict], reps: int, target_s: float = 0.02) -> dict:
    timers = {}
    for s in shapes:
        fn, flops = _gemm_timer(s["m"], s["k"], s["n"], s["kind"], target_s)
        timers[f"{s['layer']}:{s['kind']}:{s['m']}x{s['k']}x{s['n']}"] = (fn, flops, s)
    times = interleave({k: v[0] for k, v in timers.items()}, reps)
    rows = []
    total_flops = total_time = 0.0
    for key, (_, flops, s) in timers.items():
        t = summary(times[key])
        rows.append({**s, "flops": flops, "time_s": t, "flop_s": flops / t["median"]})
        total_flops += flops * s["count"]
        total_time += t["median"] * s["count"]
    fwd = [r for r in rows if r["kind"] == "fwd"]
    fwd_flops = sum(r["flops"] * r["count"] for r in fwd)
    fwd_time = sum(r["time_s"]["median"] * r["count"] for r in fwd)
    return {"shapes": rows, "mix_flop_s": total_flops / total_time, "time_per_step_s": total_time,
            "forward_mix_flop_s": fwd_flops / fwd_time,
            "best_flop_s": max(r["flop_s"] for r in rows)}


def peak_square(n: int, reps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)

    def timed() -> float:
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        return time.perf_counter() - t0

    t = summary(interleave({"mm": timed}, reps)["mm"])
    flops = 2 * n**3
    return {"n": n, "time_s": t, "flop_s": flops / t["median"],
            "flop_s_range": [flops / t["max"], flops / t["min"]]}


def section_utilisation(sizes: Sizes, harness: dict) -> dict:
    square = peak_square(sizes.square, sizes.gemm_reps)
    out: dict[str, Any] = {"square": square, "configs": {}}
    for label, h in harness["configs"].items():
        overrides = sizes.large if label == "large" else []
        cfg = _config(sizes, *overrides)
        flops = train_step_flops(cfg)
        gemm = peak_gemm(model_gemms(cfg), sizes.gemm_reps)
        achieved_lab = flops / h["lab_step_s"]["median"]
        achieved_plain = flops / h["plain_step_s"]["median"]
        out["configs"][label] = {
            "train_flops_per_step": flops,
            "achieved_flop_s_lab": achieved_lab,
            "achieved_flop_s_plain": achieved_plain,
            "gemm": gemm,
            "fraction_of_gemm_mix_lab": achieved_lab / gemm["mix_flop_s"],
            "fraction_of_gemm_mix_plain": achieved_plain / gemm["mix_flop_s"],
            "fraction_of_square_lab": achieved_lab / square["flop_s"],
            "fraction_of_square_plain": achieved_plain / square["flop_s"],
            "gemm_share_of_lab_step": gemm["time_per_step_s"] / h["lab_step_s"]["median"],
        }
    return out


# --------------------------------------------------------------------------------------------
# 3. Looping overhead


def section_looping(sizes: Sizes) -> dict:
    r = sizes.loops
    cfgs = {
        "looped": _config(sizes, "model.family=looped", "model.n_layers=1", f"model.loops={r}"),
        "unrolled": _config(sizes, "model.family=uniform", f"model.n_layers={r}"),
    }
    loops = {k: PlainLoop(c) for k, c in cfgs.items()}
    _deterministic(cfgs["looped"])
    orders = {k: list(resolve(c)[2].order()) for k, c in cfgs.items()}
    for loop in loops.values():
        loop.run(max(2, sizes.loop_chunk // 2))
    n = sizes.loop_chunk
    steps = interleave({k: (lambda lp=lp: lp.run(n)) for k, lp in loops.items()}, sizes.loop_reps)
    ph = interleave({k: (lambda lp=lp: lp.run_phases(n)) for k, lp in loops.items()},
                    sizes.loop_reps)
    phases = {k: {p: summary([d[p] for d in v]) for p in (*PHASES, "total")}
              for k, v in ph.items()}
    step = {k: summary(v) for k, v in steps.items()}
    fb = {k: summary([d["forward"] + d["backward"] for d in v]) for k, v in ph.items()}
    return {
        "loops": r, "orders": orders, "target": 1.05,
        "params": {k: sum(p.numel() for p in lp.params) for k, lp in loops.items()},
        "step_s": step, "phases_s": phases, "forward_backward_s": fb,
        "ratio": ratio(step["looped"], step["unrolled"]),
        "ratio_pairs": summary([a / b for a, b in zip(steps["looped"], steps["unrolled"],
                                                           strict=True)]),
        "ratio_forward_backward": ratio(fb["looped"], fb["unrolled"]),
        "ratio_forward": ratio(phases["looped"]["forward"], phases["unrolled"]["forward"]),
        "ratio_backward": ratio(phases["looped"]["backward"], phases["unrolled"]["backward"]),
        "ratio_optimizer": ratio(phases["looped"]["optimizer"], phases["unrolled"]["optimizer"]),
        "met": ratio(step["looped"], step["unrolled"]) <= 1.05,
    }


# --------------------------------------------------------------------------------------------
# 4. Data share


def section_data(sizes: Sizes) -> dict:
    from torch.utils.data import DataLoader

    from lab.train.data import TrainStream

    out: dict[str, Any] = {"target": 0.05, "tasks": {}}
    n = sizes.data_chunk
    for name, files in sizes.tasks.items():
        cfg = _config(sizes, files=files)
        _deterministic(cfg)
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


# --------------------------------------------------------------------------------------------
# 5. Sweep throughput


def _run_study(sizes: Sizes, workers: int, workdir: Path, label: str) -> dict:
    import optuna

    from lab.sweep import load_ablation

    cwd = workdir / f"sweep-{label}"
    cwd.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{cwd / 'study.db'}"
    study = f"bench-{label}"
    ablation = str(REPO / sizes.sweep_ablation)
    argv = [sys.executable, "-m", "lab.cli", "sweep", ablation, "--workers", str(workers),
            f"storage={storage}", f"study={study}", *sizes.sweep_overrides]
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
    total = len(load_ablation(ablation, [f"storage={storage}", *sizes.sweep_overrides]).pairs())
    if len(trials) < total:
        raise RuntimeError(f"sweep with {workers} worker(s): {len(trials)} of {total} trials completed")
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    span = (end - start).total_seconds()
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    train_walls = [float(t.user_attrs["wall_time_s"]) for t in trials
                   if isinstance(t.user_attrs.get("wall_time_s"), int | float)]
    return {
        "workers": workers, "threads_per_worker": max(1, (os.cpu_count() or 1) // workers),
        "trials": len(trials), "command_wall_s": wall, "trial_span_s": span,
        "trials_per_hour": len(trials) / span * 3600,
        "trials_per_hour_command": len(trials) / wall * 3600,
        "trial_s": summary(durations),
        "fit_s": summary(train_walls) if train_walls else None,
    }


def section_sweep(sizes: Sizes, workdir: Path) -> dict:
    runs = {"1x2": _run_study(sizes, 1, workdir, "1x2"), "2x1": _run_study(sizes, 2, workdir, "2x1")}
    return {"ablation": sizes.sweep_ablation, "overrides": sizes.sweep_overrides, "runs": runs,
            "speedup_2x1": runs["2x1"]["trials_per_hour"] / runs["1x2"]["trials_per_hour"]}


# --------------------------------------------------------------------------------------------
# 6. Compilation


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:500]


def section_compile(sizes: Sizes, workdir: Path) -> dict:
    cfg = _config(sizes)
    _deterministic(cfg)
    out: dict[str, Any] = {"backend": sizes.compile_backend or "inductor (default)",
                           "run_steps": cfg.train.steps}
    eager = PlainLoop(cfg)
    eager.run(max(2, sizes.compile_chunk // 2))
    n = sizes.compile_chunk
    cache = workdir / "inductor-cache"
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)  # a cold compile, as a first run sees it
    try:
        compiled = PlainLoop(cfg, compile_backend=sizes.compile_backend)
        first = []
        for _ in range(3):
            first.append(compiled.run(1))
        out["first_steps_s"] = first
    except Exception as e:  # noqa: BLE001 - reported, not raised
        out["error"] = _first_line(e)
        out["traceback_tail"] = traceback.format_exc().strip().splitlines()[-3:]
        return out
    finally:
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old
    compiled.run(max(2, n // 2))
    t = interleave({"eager": lambda: eager.run(n), "compiled": lambda: compiled.run(n)},
                   sizes.compile_reps)
    s = {k: summary(v) for k, v in t.items()}
    out.update({
        "eager_step_s": s["eager"], "compiled_step_s": s["compiled"],
        "speedup": ratio(s["eager"], s["compiled"]),
        "compile_time_s": sum(first) - 3 * s["compiled"]["median"],
        "break_even_steps": None,
    })
    gain = s["eager"]["median"] - s["compiled"]["median"]
    if gain > 0:
        out["break_even_steps"] = out["compile_time_s"] / gain
    return out


# --------------------------------------------------------------------------------------------
# Machine, report, entry point


def machine() -> dict:
    info = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "lightning": versions().get("lightning"),
        "python": platform.python_version(), "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    with contextlib.suppress(OSError):
        info["load_average_at_start"] = list(os.getloadavg())
    return info


SECTIONS = ("harness", "utilisation", "looping", "data", "sweep", "compile")


def run_bench(quick: bool = False, out_dir: str | os.PathLike = DEFAULT_OUT) -> int:
    """Run the six sections, write report.md and results.json into out_dir; 0 if all ran."""
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
            for name in SECTIONS:
                t0 = time.perf_counter()
                print(f"lab bench: {name} ...", file=sys.stderr, flush=True)
                try:
                    torch.set_num_threads(1)
                    if name == "harness":
                        results[name] = section_harness(sizes, work)
                    elif name == "utilisation":
                        if "error" in results.get("harness", {"error": 1}):
                            raise RuntimeError("needs the step times of section 1, which failed")
                        results[name] = section_utilisation(sizes, results["harness"])
                    elif name == "looping":
                        results[name] = section_looping(sizes)
                    elif name == "data":
                        results[name] = section_data(sizes)
                    elif name == "sweep":
                        results[name] = section_sweep(sizes, work)
                    else:
                        results[name] = section_compile(sizes, work)
                except Exception as e:  # noqa: BLE001 - one failed section does not stop the rest
                    failed += 1
                    results[name] = {"error": _first_line(e),
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
    print(f"lab bench: wrote {out / 'report.md'} in {results['total_time_s']:.0f}s",
          file=sys.stderr, flush=True)
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------
# Rendering


def _ms(s: dict | float | None) -> str:
    if s is None:
        return "-"
    if isinstance(s, dict):
        return f"{1e3 * s['median']:.2f} ms [{1e3 * s['min']:.2f}–{1e3 * s['max']:.2f}]"
    return f"{1e3 * s:.2f} ms"


def _sec(s: dict) -> str:
    return f"{s['median']:.1f} s [{s['min']:.1f}–{s['max']:.1f}]"


def _range(s: dict, fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}–{fmt.format(s['max'])}]"


def _g(x: float) -> str:
    return f"{x / 1e9:.2f} GFLOP/s"


def _verdict(value: float, target: float, unit: str = "") -> str:
    """Met or not, for an upper bound, and by how much."""
    ok = value <= target
    margin = abs(target - value)
    by = f"{margin * 100:.2f} percentage points" if unit == "pp" else f"{margin:.3f}"
    return f"{'**met**' if ok else '**not met**'} ({'under' if ok else 'over'} the target by {by})"


def _error(sec: dict) -> list[str]:
    return [f"This section failed: `{sec['error']}`", ""]


def render(r: dict) -> str:
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
    for fn in (_r_harness, _r_util, _r_looping, _r_data, _r_sweep, _r_compile):
        lines += fn(r)
    return "\n".join(lines).rstrip() + "\n"


def _r_harness(r: dict) -> list[str]:
    sec = r.get("harness", {"error": "not run"})
    out = ["## 1. Harness overhead", ""]
    if "error" in sec:
        return out + _error(sec)
    d = sec["configs"]["default"]
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
    for label, c in sec["configs"].items():
        out.append(
            f"| {label} (d={c['d_model']}, {c['n_layers']} layers, batch {c['batch_size']}x"
            f"{c['seq_len']}) | {c['model']} | {_ms(c['lab_step_s'])} | {_ms(c['plain_step_s'])} | "
            f"{c['ratio']:.3f} | {_range(c['ratio_pairs'])} | {_ms(c['overhead_s'])}/step |"
        )
    out += [
        "",
        f"Target: lab at most 10% slower than the plain loop at the default config (ratio <= "
        f"{sec['target']:.2f}): {_verdict(sec['ratio_default'], sec['target'])}.",
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
    for label, c in sec["configs"].items():
        lab, ph = c.get("lab_phases_s") or {}, c.get("plain_phases_s") or {}
        if not lab or not ph:
            continue
        for name, lab_keys, plain_keys in (*ALIGNED, ("total", ("total",), ("total",))):
            a = sum(lab[k]["median"] for k in lab_keys)
            b = sum(ph[k]["median"] for k in plain_keys)
            out.append(f"| {label} | {name} | {_ms(a)} | {_ms(b)} | {_ms(a - b)} |")
    return out + [""]


def _r_util(r: dict) -> list[str]:
    sec = r.get("utilisation", {"error": "not run"})
    out = ["## 2. Utilisation", ""]
    if "error" in sec:
        return out + _error(sec)
    sq = sec["square"]
    out += [
        "Training FLOPs per step: forward + backward of one batch, counted by FlopCounterMode "
        "(matmuls and attention; elementwise ops and the optimizer are not counted). Achieved "
        "FLOP/s = those FLOPs / the step time of section 1. Peaks measured in this process on "
        "1 thread: (a) the model's own GEMMs (every linear layer's forward, input-gradient and "
        "weight-gradient product, M = batch x sequence length, weighted by how often each "
        "runs); (b) a square fp32 matmul.",
        "",
        f"(b) {sq['n']}x{sq['n']} fp32 matmul: {_g(sq['flop_s'])} "
        f"[{_g(sq['flop_s_range'][0])}–{_g(sq['flop_s_range'][1])}].",
        "",
        "| config | train FLOPs/step | achieved (lab) | achieved (plain) | (a) model-GEMM peak "
        "| lab / (a) | lab / (b) | plain / (a) | plain / (b) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, c in sec["configs"].items():
        out.append(
            f"| {label} | {c['train_flops_per_step'] / 1e9:.3f} G | {_g(c['achieved_flop_s_lab'])} | "
            f"{_g(c['achieved_flop_s_plain'])} | {_g(c['gemm']['mix_flop_s'])} | "
            f"{100 * c['fraction_of_gemm_mix_lab']:.1f}% | {100 * c['fraction_of_square_lab']:.1f}% | "
            f"{100 * c['fraction_of_gemm_mix_plain']:.1f}% | {100 * c['fraction_of_square_plain']:.1f}% |"
        )
    out += ["", "Model GEMMs (median FLOP/s of each shape, M x K x N):", "",
            "| config | layer | product | M x K x N | runs/step | FLOP/s |", "|---|---|---|---|---:|---:|"]
    for label, c in sec["configs"].items():
        for s in c["gemm"]["shapes"]:
            out.append(f"| {label} | {s['layer']} | {s['kind']} | {s['m']}x{s['k']}x{s['n']} | "
                       f"{s['count']} | {_g(s['flop_s'])} |")
    out += [""]
    for label, c in sec["configs"].items():
        gm = c["gemm"]
        out.append(f"- {label}: forward-only GEMM mix {_g(gm['forward_mix_flop_s'])}; "
                   f"whole fwd+bwd mix {_g(gm['mix_flop_s'])} = "
                   f"{100 * gm['mix_flop_s'] / sq['flop_s']:.0f}% of the square matmul. Where the "
                   f"time goes: at these rates the step's GEMMs take {_ms(gm['time_per_step_s'])}, "
                   f"{100 * c['gemm_share_of_lab_step']:.0f}% of the lab step; the rest is outside "
                   "the GEMMs (attention, layer norms, GELU, embedding and loss, the optimizer, "
                   "the batch, Python and the harness).")
    return out + [""]


def _r_looping(r: dict) -> list[str]:
    sec = r.get("looping", {"error": "not run"})
    out = ["## 3. Looping overhead", ""]
    if "error" in sec:
        return out + _error(sec)
    s, ph = sec["step_s"], sec["phases_s"]
    out += [
        f"A looped stack (one block, {sec['loops']} loops, order {sec['orders']['looped']}) "
        f"against the uniform stack that executes the same blocks unrolled (order "
        f"{sec['orders']['unrolled']}), plain training loop, interleaved.",
        "",
        "| model | params | step | forward | backward | optimizer |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k in ("looped", "unrolled"):
        out.append(f"| {k} | {sec['params'][k]:,} | {_ms(s[k])} | {_ms(ph[k]['forward'])} | "
                   f"{_ms(ph[k]['backward'])} | {_ms(ph[k]['optimizer'])} |")
    out += [
        "",
        f"Step-time ratio looped / unrolled: **{sec['ratio']:.3f}** (per pair "
        f"{_range(sec['ratio_pairs'])}). Target <= {sec['target']:.2f}: "
        f"{_verdict(sec['ratio'], sec['target'])}.",
        "",
        f"Where the time goes: forward ratio {sec['ratio_forward']:.3f}, backward "
        f"{sec['ratio_backward']:.3f}, forward+backward {sec['ratio_forward_backward']:.3f}, "
        f"optimizer {sec['ratio_optimizer']:.3f} (the looped stack has "
        f"{sec['params']['looped'] / sec['params']['unrolled']:.2f}x the parameters, so its "
        "AdamW update and clipping are cheaper; its backward also accumulates the shared "
        "block's gradients over the loops).",
        "",
    ]
    return out


def _r_data(r: dict) -> list[str]:
    sec = r.get("data", {"error": "not run"})
    out = ["## 4. Data share", ""]
    if "error" in sec:
        return out + _error(sec)
    out += [
        "Generating one training batch (task.sample with the lab's per-step seeding; and the "
        "same through the lab's DataLoader) against one plain training step of the task's "
        "config (the default model), interleaved.",
        "",
        "| task | config | batch | sample | via DataLoader | step | share | share (DataLoader) "
        "| target < 5% |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, t in sec["tasks"].items():
        out.append(
            f"| {name} | {', '.join(t['config'])} | {t['batch_size']}x{t['seq_len']} | "
            f"{_ms(t['sample_s'])} | {_ms(t['loader_s'])} | {_ms(t['step_s'])} | "
            f"{100 * t['share']:.2f}% | {100 * t['share_loader']:.2f}% | "
            f"{_verdict(t['share'], sec['target'], unit='pp')} |"
        )
    return out + [""]


def _r_sweep(r: dict) -> list[str]:
    sec = r.get("sweep", {"error": "not run"})
    out = ["## 5. Sweep throughput", ""]
    if "error" in sec:
        return out + _error(sec)
    runs = sec["runs"]
    over = " ".join(sec["overrides"])
    out += [
        f"`lab sweep {sec['ablation']} --workers N{(' ' + over) if over else ''}` with a fresh "
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
        fit = _sec(s["fit_s"]) if s.get("fit_s") else "-"
        out.append(f"| {label} | {s['trials']} | {s['trials_per_hour']:.0f} | "
                   f"{s['command_wall_s']:.0f} s | {s['trial_span_s']:.0f} s | {_sec(s['trial_s'])} "
                   f"| {fit} |")
    out += ["", f"2 workers x 1 thread give **{sec['speedup_2x1']:.2f}x** the trials per hour of "
            "1 worker x 2 threads. Where the time goes: a trial is a full lab run (start-up, "
            "training, validation, cost measurements, extrapolation); per-trial time minus fit "
            "time is the part outside Lightning's fit.", ""]
    return out


def _r_compile(r: dict) -> list[str]:
    sec = r.get("compile", {"error": "not run"})
    out = ["## 6. Compilation", ""]
    if "error" in sec and "backend" not in sec:
        return out + _error(sec)
    out += [f"`train.compile=true` (`model.compile()`, backend {sec['backend']}) at the default "
            "config, plain training loop, compiled and eager models interleaved after warm-up; "
            "compile time measured cold (empty compile cache).", ""]
    if "error" in sec:
        return out + [f"Compilation failed on this machine: `{sec['error']}`", ""]
    out += [
        "| | step |", "|---|---:|",
        f"| eager | {_ms(sec['eager_step_s'])} |",
        f"| compiled | {_ms(sec['compiled_step_s'])} |",
        "",
        f"First three compiled steps: {', '.join(f'{x:.2f} s' for x in sec['first_steps_s'])}; "
        f"compile time ≈ {sec['compile_time_s']:.1f} s (first steps minus steady-state steps).",
        "",
    ]
    sp = sec["speedup"]
    if sp >= 1:
        be = sec["break_even_steps"]
        out.append(f"Compiled steps are **{sp:.2f}x** as fast as eager ones; the compile time is "
                   f"repaid after about {be:.0f} steps (a run of this config has "
                   f"{sec['run_steps']} steps)." if be else f"Speed-up {sp:.2f}x.")
    else:
        out.append(f"Compiled steps are **slower** on this CPU: {1 / sp:.2f}x the eager step time, "
                   "so train.compile does not pay off here.")
    return out + [""]
