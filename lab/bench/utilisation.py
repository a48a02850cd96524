"""Section 2, utilisation: achieved training FLOP/s (from the step times of section 1)
against the peak matmul FLOP/s measured here, on the model's own GEMMs and on a square one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lab.bench.common import PlainLoop, Sizes, bench_config, error_lines, gflop_s, interleave, ms, summary
from lab.config import LabConfig
from lab.eval.device import autocast_dtype, clock
from lab.model import resolve
from lab.train.machine import resolve_precision, train_device

CPU = torch.device("cpu")

TITLE = "## 2. Utilisation"


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


def gemm_format(cfg: LabConfig) -> tuple[torch.device, torch.dtype]:
    """Where and in what number format the training step of `cfg` runs its matmuls: the
    device the lab trains on, bf16/fp16 under mixed precision on a GPU, else fp32."""
    device = train_device(cfg)
    dtype = autocast_dtype(resolve_precision(cfg.train)) if device.type == "cuda" else None
    return device, dtype or torch.float32


def _gemm_timer(m: int, k: int, n: int, kind: str, target_s: float,
                device: torch.device = CPU, dtype: torch.dtype = torch.float32
                ) -> tuple[Callable[[], float], int]:
    """A timed matmul of the kind autograd runs for a linear layer x (m, k) -> (m, n):
    forward x @ W^T, input gradient g @ W, weight gradient g^T @ x. Returns seconds per call."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g).to(device, dtype)
    w = torch.randn(n, k, generator=g).to(device, dtype)
    gr = torch.randn(m, n, generator=g).to(device, dtype)
    if kind == "fwd":
        a, b = x, w.t()
    elif kind == "dx":
        a, b = gr, w
    else:
        a, b = gr.t(), x
    out = torch.empty(a.shape[0], b.shape[1], device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    t0 = clock(device)
    torch.mm(a, b, out=out)
    once = max(clock(device) - t0, 1e-7)
    inner = max(1, min(10_000, int(target_s / once)))

    def timed() -> float:
        t0 = clock(device)
        for _ in range(inner):
            torch.mm(a, b, out=out)
        return (clock(device) - t0) / inner

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


def peak_gemm(shapes: list[dict], reps: int, target_s: float = 0.02, device: torch.device = CPU,
              dtype: torch.dtype = torch.float32) -> dict:
    timers = {}
    for s in shapes:
        fn, flops = _gemm_timer(s["m"], s["k"], s["n"], s["kind"], target_s, device, dtype)
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


def peak_square(n: int, reps: int, device: torch.device = CPU,
                dtype: torch.dtype = torch.float32) -> dict:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    inner = 1 if device.type == "cpu" else 20  # a GPU matmul is too short to time alone

    def timed() -> float:
        t0 = clock(device)
        for _ in range(inner):
            torch.mm(a, b, out=out)
        return (clock(device) - t0) / inner

    t = summary(interleave({"mm": timed}, reps)["mm"])
    flops = 2 * n**3
    return {"n": n, "time_s": t, "flop_s": flops / t["median"],
            "flop_s_range": [flops / t["max"], flops / t["min"]]}


def run(sizes: Sizes, workdir: Path, results: dict) -> dict:
    """Needs results["harness"], the step times of section 1."""
    if "error" in results.get("harness", {"error": 1}):
        raise RuntimeError("needs the step times of section 1, which failed")
    harness = results["harness"]
    device, dtype = gemm_format(bench_config(sizes))
    square = peak_square(sizes.square, sizes.gemm_reps, device, dtype)
    out: dict[str, Any] = {"square": square, "configs": {}, "device": device.type,
                           "dtype": str(dtype).removeprefix("torch.")}
    for label, h in harness["configs"].items():
        overrides = sizes.large if label == "large" else []
        cfg = bench_config(sizes, *overrides)
        flops = train_step_flops(cfg)
        gemm = peak_gemm(model_gemms(cfg), sizes.gemm_reps, device=device, dtype=dtype)
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


def render(result: dict) -> list[str]:
    out = [TITLE, ""]
    if "error" in result:
        return out + error_lines(result)
    sq = result["square"]
    dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(
        result.get("dtype", "float32"), result.get("dtype"))
    where = ("1 thread" if result.get("device", "cpu") == "cpu"
             else f"the {result['device']} device the lab trains on")
    out += [
        "Training FLOPs per step: forward + backward of one batch, counted by FlopCounterMode "
        "(matmuls and attention; elementwise ops and the optimizer are not counted). Achieved "
        "FLOP/s = those FLOPs / the step time of section 1. Peaks measured in this process on "
        f"{where}: (a) the model's own GEMMs (every linear layer's forward, input-gradient and "
        "weight-gradient product, M = batch x sequence length, weighted by how often each "
        f"runs); (b) a square {dtype} matmul.",
        "",
        f"(b) {sq['n']}x{sq['n']} {dtype} matmul: {gflop_s(sq['flop_s'])} "
        f"[{gflop_s(sq['flop_s_range'][0])}–{gflop_s(sq['flop_s_range'][1])}].",
        "",
        "| config | train FLOPs/step | achieved (lab) | achieved (plain) | (a) model-GEMM peak "
        "| lab / (a) | lab / (b) | plain / (a) | plain / (b) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, c in result["configs"].items():
        out.append(
            f"| {label} | {c['train_flops_per_step'] / 1e9:.3f} G | {gflop_s(c['achieved_flop_s_lab'])} | "
            f"{gflop_s(c['achieved_flop_s_plain'])} | {gflop_s(c['gemm']['mix_flop_s'])} | "
            f"{100 * c['fraction_of_gemm_mix_lab']:.1f}% | {100 * c['fraction_of_square_lab']:.1f}% | "
            f"{100 * c['fraction_of_gemm_mix_plain']:.1f}% | {100 * c['fraction_of_square_plain']:.1f}% |"
        )
    out += ["", "Model GEMMs (median FLOP/s of each shape, M x K x N):", "",
            "| config | layer | product | M x K x N | runs/step | FLOP/s |", "|---|---|---|---|---:|---:|"]
    for label, c in result["configs"].items():
        for s in c["gemm"]["shapes"]:
            out.append(f"| {label} | {s['layer']} | {s['kind']} | {s['m']}x{s['k']}x{s['n']} | "
                       f"{s['count']} | {gflop_s(s['flop_s'])} |")
    out += [""]
    for label, c in result["configs"].items():
        gm = c["gemm"]
        out.append(f"- {label}: forward-only GEMM mix {gflop_s(gm['forward_mix_flop_s'])}; "
                   f"whole fwd+bwd mix {gflop_s(gm['mix_flop_s'])} = "
                   f"{100 * gm['mix_flop_s'] / sq['flop_s']:.0f}% of the square matmul. Where the "
                   f"time goes: at these rates the step's GEMMs take {ms(gm['time_per_step_s'])}, "
                   f"{100 * c['gemm_share_of_lab_step']:.0f}% of the lab step; the rest is outside "
                   "the GEMMs (attention, layer norms, GELU, embedding and loss, the optimizer, "
                   "the batch, Python and the harness).")
    return out + [""]
