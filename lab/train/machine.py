"""The machine a run trains on: its CPU cores, its GPUs, its memory, and what a config asks of them.

:func:`check_machine` refuses, before anything is allocated or any process started, a config
that this machine cannot run: more devices than it has, more threads than cores, a GPU
accelerator without a GPU, or a model and task whose memory estimate exceeds what the machine
has. Values that are valid in general but wrong for this machine are the ones that otherwise
end in a hang (98 DDP processes for ``train.devices=99`` on a CPU), a kernel OOM kill or a
traceback deep inside PyTorch.

The memory estimate (:func:`memory_estimate`) is a lower bound, kept simple so that a refusal
is always right: a config it refuses cannot fit, one it passes may still not. It counts

- the weights, their gradients and AdamW's two moments (4 copies of the parameters, at the
  parameters' width: 4 bytes, 2 for ``bf16-true`` / ``16-true``);
- the activations one training step keeps for the backward pass: per token and executed
  block, 8 x width + 2 x MLP hidden numbers (the layer norms' inputs and outputs, q, k, v, the
  attention output, the MLP's hidden layer before and after GELU), plus the logits (and their
  gradient) of every supervised readout, at the activations' width (2 bytes under bf16/fp16
  mixed precision, else 4); attention kernels that would store a T x T score matrix are not
  counted (flash and memory-efficient kernels do not);
- one evaluation batch's logits (``EVAL_BATCH`` sequences of the longest split, fp32, with
  their log-softmax);
- the task tables: the fixed evaluation sets (``train.val_size`` sequences of x and y, int64,
  per evaluated split) and one training batch.

On a CPU all of it is compared with the memory available now (``psutil``); on a GPU the
model's part with the GPU's memory and the task tables with the host's.
"""

from __future__ import annotations

import os

import torch

from lab.config import LabConfig, TrainConfig
from lab.errors import ConfigError, LabError
from lab.eval.metrics import EVAL_BATCH
from lab.model.plan import StackPlan, count_params

GPU_ACCELERATORS = ("auto", "gpu", "cuda")
EVAL_SPLITS_HELD = 2  # a run holds the val and OOD sets (lab.train.data.EVAL_SPLITS)


def cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cuda_count() -> int:
    """CUDA devices visible to this process (after CUDA_VISIBLE_DEVICES)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def uses_cuda(t: TrainConfig) -> bool:
    """Whether a run of these trainer settings trains on CUDA GPUs here."""
    return t.accelerator in GPU_ACCELERATORS and cuda_count() > 0


def train_device(cfg: LabConfig) -> torch.device:
    """The device a run trains (and is measured) on: the first visible GPU, or the CPU."""
    return torch.device("cuda", 0) if uses_cuda(cfg.train) else torch.device("cpu")


def native_bf16() -> bool:
    """Whether the GPU computes bf16 in hardware. torch.cuda.is_bf16_supported() also says
    yes where bf16 is emulated (V100, T4, compute capability < 8), which is slower than fp16."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(t: TrainConfig) -> str:
    """The precision a run actually uses: `train.precision`, or for `auto` bf16 mixed
    precision on a GPU with native bf16, fp16 mixed precision on an older GPU, fp32 on a CPU."""
    if t.precision != "auto":
        return t.precision
    if uses_cuda(t):
        return "bf16-mixed" if native_bf16() else "16-mixed"
    return "32-true"


def gpu_memory() -> int:
    """Bytes of memory of the smallest visible GPU."""
    return min(torch.cuda.get_device_properties(i).total_memory for i in range(cuda_count()))


def host_memory() -> int:
    """Bytes of memory available to a new process now (free plus reclaimable caches)."""
    import psutil

    return int(psutil.virtual_memory().available)


# --------------------------------------------------------------------------------------------
# The memory estimate


def train_loops(cfg: LabConfig) -> int:
    """The most loops a training step runs (sampled loop counts: the top of their range)."""
    m = cfg.model
    if m.loop_sampling == "fixed":
        return m.loops
    return max(m.loops_range) if m.loops_range else 2 * m.loops


def memory_estimate(cfg: LabConfig, task, plan: StackPlan) -> dict[str, int]:
    """Bytes a run holds at once, by part (see the module docstring): `weights` (parameters,
    gradients, AdamW state), `step` (activations of one training step), `evaluation` (one
    evaluation batch's logits) and `tables` (evaluation sets and a training batch)."""
    t, m = cfg.train, cfg.model
    precision = resolve_precision(t)
    p_bytes = {"64-true": 8, "64": 8, "bf16-true": 2, "16-true": 2}.get(precision, 4)
    a_bytes = 8 if precision.startswith("64") else 2 if precision.startswith(("bf16", "16")) else 4
    params = count_params(plan, task.vocab_size, task.max_seq_len)
    loops = train_loops(cfg)
    readouts = loops if plan.looped and m.supervision == "every" else 1
    per_token = sum(8 * plan.widths[b] + 2 * plan.hidden[b] for b in plan.order(loops))
    tokens = t.batch_size // max(1, t.devices) * task.seq_len  # one device's share
    step = tokens * (per_token * a_bytes + readouts * task.vocab_size * (a_bytes + 4))
    evaluation = EVAL_BATCH * task.max_seq_len * task.vocab_size * 4 * 2
    tables = (EVAL_SPLITS_HELD * t.val_size * task.max_seq_len + tokens) * 2 * 8
    return {"params": params, "weights": 4 * params * p_bytes, "step": step,
            "evaluation": evaluation, "tables": tables}


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} EB"


def check_memory(cfg: LabConfig, task, plan: StackPlan, concurrent: int = 1,
                 on_gpu: bool | None = None) -> dict[str, int]:
    """Refuse a config whose memory estimate exceeds the machine's memory; `concurrent` runs
    share it (a sweep's workers on one host, or its trials packed on one GPU)."""
    est = memory_estimate(cfg, task, plan)
    on_gpu = uses_cuda(cfg.train) if on_gpu is None else on_gpu
    model_part = est["weights"] + max(est["step"], est["evaluation"])
    if on_gpu:
        budgets = [("GPU memory", gpu_memory(), model_part), ("host memory", host_memory(),
                                                                 est["tables"])]
    else:
        budgets = [("memory available", host_memory(), model_part + est["tables"])]
    for what, have, need in budgets:
        if need * concurrent > have:
            raise LabError(_memory_message(cfg, task, est, what, have, need, concurrent))
    return est


def _memory_message(cfg: LabConfig, task, est: dict[str, int], what: str, have: int,
                    need: int, concurrent: int) -> str:
    t, m = cfg.train, cfg.model
    parts = [
        (est["weights"], f"parameters with gradients and AdamW state {fmt_bytes(est['weights'])} "
                         f"({est['params']:,} parameters: model.d_model={m.d_model}, "
                         f"model.n_layers={m.n_layers}, vocabulary {task.vocab_size:,})"),
        (est["step"], f"activations of one training step {fmt_bytes(est['step'])} "
                      f"(train.batch_size={t.batch_size} x {task.seq_len:,} tokens)"),
        (est["evaluation"], f"one evaluation batch {fmt_bytes(est['evaluation'])} "
                            f"({EVAL_BATCH} sequences of the task's {task.max_seq_len:,} tokens, "
                            f"vocabulary {task.vocab_size:,})"),
        (est["tables"], f"evaluation sets {fmt_bytes(est['tables'])} (train.val_size={t.val_size} "
                        f"sequences of up to {task.max_seq_len:,} tokens per split)"),
    ]
    parts.sort(key=lambda p: -p[0])
    shared = f" x {concurrent} runs at once" if concurrent > 1 else ""
    return (f"this run needs at least {fmt_bytes(need)}{shared} of memory, more than the "
            f"{fmt_bytes(have)} of {what} here; largest parts: {parts[0][1]}; {parts[1][1]}. "
            "Make the model, the task's sequences, train.batch_size or train.val_size smaller"
            + (", or run fewer at once (--workers, train.trials_per_gpu)." if concurrent > 1
               else "."))


# --------------------------------------------------------------------------------------------
# Devices and threads


def check_devices(t: TrainConfig) -> None:
    """Refuse a device or thread count this machine does not have."""
    for key, value in (("train.devices", t.devices), ("train.trials_per_gpu", t.trials_per_gpu)):
        if value < 1:
            raise ConfigError(key, f"must be at least 1, got {value}.")
    n_cores, n_gpus = cores(), cuda_count()
    if t.accelerator in ("gpu", "cuda") and n_gpus == 0:
        raise ConfigError("train.accelerator", f"'{t.accelerator}' needs a CUDA GPU, and none is "
                          f"visible here (torch {torch.__version__}"
                          + (", a CPU-only build" if torch.version.cuda is None else "")
                          + "); use train.accelerator=auto (GPU when there is one) or cpu.")
    if t.threads > n_cores:
        raise ConfigError("train.threads", f"{t.threads} threads per process, but this machine "
                          f"has {n_cores} cores; use at most {n_cores}.")
    if t.accelerator in GPU_ACCELERATORS and n_gpus:
        if t.devices > n_gpus:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise ConfigError("train.devices", f"{t.devices} GPUs asked for, {n_gpus} visible "
                              + (f"(CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
                              + f"; use at most {n_gpus}.")
    elif t.accelerator in (*GPU_ACCELERATORS, "cpu") and t.devices > n_cores:
        raise ConfigError("train.devices", f"{t.devices} devices on a CPU means {t.devices} "
                          f"training processes (Lightning's DDP), and this machine has no GPU "
                          f"and {n_cores} cores; use train.devices=1.")
    if t.devices > 1 and t.batch_size % t.devices:
        raise ConfigError("train.batch_size", f"{t.batch_size} does not split evenly over "
                          f"train.devices={t.devices} (each device trains on its share of every "
                          "batch); use a multiple of the device count.")


def check_machine(cfg: LabConfig, task, plan: StackPlan, concurrent: int = 1) -> dict[str, int]:
    """Everything this machine must have for the run: devices, threads, memory."""
    check_devices(cfg.train)
    return check_memory(cfg, task, plan, concurrent)
