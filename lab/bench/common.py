"""What the bench's sections share: sizes, statistics, the plain training loop, the machine
description and the report's number formatting."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from lab.config import LabConfig, load_config
from lab.eval.device import autocast, clock
from lab.model import Stack, build_model, resolve
from lab.provenance import REPO, cpu_model, versions
from lab.tasks import IGNORE
from lab.train.machine import resolve_precision, train_device

# --------------------------------------------------------------------------------------------
# Sizes: the full benchmark (under 10 minutes on two cores) and a tiny one for the tests.

QUICK_BASE = ["model.d_model=16", "model.n_heads=2", "model.n_layers=2", "train.batch_size=16",
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
    # Section 7 (GPU): lab steps before timing, steps per timed chunk, chunks; the square
    # matmul's side; overrides of the GPU preset; steps per trial of the study's throughput.
    gpu_harness: tuple[int, int, int] = (40, 20, 10)
    gpu_square: int = 8192
    gpu_overrides: list[str] = field(default_factory=list)
    gpu_study_steps: int = 200
    gpu_study: bool = True  # the study's trials per hour (minutes: not at the test sizes)


FULL = Sizes(
    base=[], pointer=[],
    large=["model.d_model=256", "model.n_layers=6"],
    harness={"default": (30, 20, 20), "large": (3, 3, 5)},
    square=2048, gemm_reps=7,
    loops=4, loop_chunk=20, loop_reps=9,
    data_chunk=20, data_reps=9,
    # A fixed set of seeds: sequential seeds would make the two runs' trial counts differ.
    sweep_ablation="ablations/smoke.yaml", sweep_overrides=["seeds=[0,1]"],
    compile_backend=None, compile_chunk=20, compile_reps=7,
    tasks={"pointer": [], "induction": ["configs/induction.yaml"], "word": ["configs/word.yaml"]},
)

QUICK = Sizes(
    base=QUICK_BASE, pointer=["task.nodes=4", "task.hops=2"],
    large=["model.d_model=32", "model.n_layers=3"],
    harness={"default": (3, 3, 3), "large": (2, 2, 3)},
    square=128, gemm_reps=3,
    loops=2, loop_chunk=3, loop_reps=3,
    data_chunk=3, data_reps=3,
    sweep_ablation="tests/data/tiny.yaml", sweep_overrides=["seeds=[0]"],
    compile_backend="eager", compile_chunk=3, compile_reps=3,
    tasks={"pointer": [], "induction": ["configs/induction.yaml"], "word": ["configs/word.yaml"]},
    gpu_harness=(2, 2, 2), gpu_square=64, gpu_study_steps=20, gpu_study=False,
    gpu_overrides=["model.d_model=32", "model.n_heads=2", "model.n_layers=2", "task.seq_len=32",
                   "train.batch_size=8"],
)


# --------------------------------------------------------------------------------------------
# Statistics, configs and timing helpers


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


def bench_config(sizes: Sizes, *overrides: str, files: list[str] | None = None) -> LabConfig:
    """The config of a measurement: the sizes' base overrides, then the config files (or the
    default pointer task's overrides when there are none), then overrides."""
    task = [] if files else sizes.pointer
    return load_config([REPO / f for f in files or []], [*sizes.base, *task, *overrides])


def deterministic(cfg: LabConfig) -> None:
    """As the Trainer does it (deterministic=cfg.train.deterministic), so the plain loop and
    the lab run the same kernels."""
    torch.use_deterministic_algorithms(cfg.train.deterministic)


def first_line(e: BaseException) -> str:
    """An exception as one short line: its type and the first non-blank line of its message."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:500]


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


# --------------------------------------------------------------------------------------------
# The plain-PyTorch training loop the harness is compared with


PHASES = ("data", "forward", "backward", "clip", "optimizer")


class PlainLoop:
    """A minimal training loop: the lab's model, batches, AdamW param groups, LambdaLR
    schedule and gradient clipping, without Lightning; on the device and in the number format
    the lab's own training of `cfg` uses (lab.train.machine), so the two are comparable on a
    GPU as on a CPU."""

    def __init__(self, cfg: LabConfig, compile_backend: str | None | bool = False,
                 device: torch.device | None = None):
        from lab.train.data import mix
        from lab.train.optim import build_optimizer

        self._mix = mix
        cfg, task, plan = resolve(cfg)
        self.cfg, self.task = cfg, task
        self.device = train_device(cfg) if device is None else device
        self.precision = resolve_precision(cfg.train)
        torch.manual_seed(cfg.seed)
        self.model: Stack = build_model(cfg, task, plan).train().to(self.device)
        if self.device.type == "cuda" and callable(getattr(task, "to_device", None)):
            task.to_device(self.device)  # as the lab's data module does on a GPU
        if compile_backend is not False:
            self.model.compile_blocks(**({"backend": compile_backend} if compile_backend else {}))
        t = cfg.train
        self.params = list(self.model.parameters())
        self.opt, self.sched = build_optimizer(self.params, cfg)  # fused on a GPU, as the lab's
        self.clip = t.grad_clip or None
        self.g = torch.Generator()
        self.step = 0

    def clock(self) -> float:
        """A time stamp after the device's queued work (lab.eval.device.clock)."""
        return clock(self.device)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.g.manual_seed(self._mix(self.cfg.seed, self.step))
        x, y = self.task.sample(self.cfg.train.batch_size, self.g, "train")
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
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
        """Seconds per step over n training steps (batch generation included); on a GPU the
        clock waits for the last step's kernels."""
        t0 = self.clock()
        for _ in range(n):
            x, y = self.batch()
            self.loss(x, y).backward()
            self.update()
        return (self.clock() - t0) / n

    def run_phases(self, n: int) -> dict[str, float]:
        """Seconds per step of each phase over n steps, and in all (total). On a GPU every
        phase boundary waits for the device, which the total then includes."""
        acc = dict.fromkeys(PHASES, 0.0)
        clock = self.clock
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


# --------------------------------------------------------------------------------------------
# Report formatting


def ms(s: dict | float | None) -> str:
    """Milliseconds: a summary as median [min–max], a number alone, None as '-'."""
    if s is None:
        return "-"
    if isinstance(s, dict):
        return f"{1e3 * s['median']:.2f} ms [{1e3 * s['min']:.2f}–{1e3 * s['max']:.2f}]"
    return f"{1e3 * s:.2f} ms"


def sec(s: dict) -> str:
    """Seconds of a summary, as median [min–max]."""
    return f"{s['median']:.1f} s [{s['min']:.1f}–{s['max']:.1f}]"


def range_str(s: dict, fmt: str = "{:.3f}") -> str:
    """A summary as median [min–max], each formatted with fmt."""
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}–{fmt.format(s['max'])}]"


def gflop_s(x: float) -> str:
    return f"{x / 1e9:.2f} GFLOP/s"


def verdict(value: float, target: float, unit: str = "") -> str:
    """Met or not, for an upper bound, and by how much."""
    ok = value <= target
    margin = abs(target - value)
    by = f"{margin * 100:.2f} percentage points" if unit == "pp" else f"{margin:.3f}"
    return f"{'**met**' if ok else '**not met**'} ({'under' if ok else 'over'} the target by {by})"


def error_lines(section: dict) -> list[str]:
    """The report's lines for a section that failed."""
    return [f"This section failed: `{section['error']}`", ""]
