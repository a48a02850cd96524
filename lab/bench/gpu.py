"""Section 7, the GPU: the GPU preset's training step against the GPU's peak, where its time
goes, and the GPU study's throughput. Skipped without a CUDA device.

- model FLOP utilisation (MFU): training FLOPs of one step of ``configs/gpu.yaml`` (forward
  + backward, FlopCounterMode; attention counted over the full T x T score matrix, as torch
  counts it) / the lab's step time / the GPU's dense bf16 peak from :data:`PEAKS` (by device
  name), and against a bf16 matmul measured here;
- the lab's step time against a plain PyTorch loop on the same device (section 1's
  machinery, both compiled as the preset says);
- data time / step time: drawing one batch of the preset (the text task samples on the GPU)
  and the lab's time between steps (data loader, Lightning's loop and hooks);
- the compile speed-up on the preset (eager against compiled blocks, interleaved);
- trials per hour of the GPU study (``ablations/loops_gpu.yaml`` without its tuning phase, one
  seed, a short budget) with 1 and 2 trials per GPU.

The same measurements run on any device through :func:`measure` (the tests run them on the
CPU at tiny sizes); :func:`run` runs them only on a GPU, and then ``lab bench`` also writes
them to ``gpu.md``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml

from lab.bench.common import (
    PlainLoop,
    Sizes,
    bench_config,
    error_lines,
    interleave,
    ms,
    ratio,
    summary,
)
from lab.provenance import REPO

TITLE = "## 7. GPU"
PRESET = "configs/gpu.yaml"
STUDY = "ablations/loops_gpu.yaml"

# Dense (no sparsity) tensor-core peaks in TFLOP/s from the vendors' datasheets, for the
# number format `train.precision=auto` picks: bf16, or fp16 on GPUs without native bf16.
# Matched in order against torch.cuda.get_device_name() (more specific names first).
PEAKS: tuple[tuple[str, float, str], ...] = (
    ("H100 PCIe", 756.0, "bf16"),
    ("H100 NVL", 835.0, "bf16"),
    ("H100", 989.4, "bf16"),  # SXM
    ("H200", 989.4, "bf16"),
    ("GH200", 989.4, "bf16"),
    ("B200", 2250.0, "bf16"),
    ("A100", 312.0, "bf16"),
    ("A800", 312.0, "bf16"),
    ("L40S", 362.1, "bf16"),
    ("L4", 121.0, "bf16"),
    ("A10", 125.0, "bf16"),
    ("RTX 4090", 165.2, "bf16"),
    ("RTX A6000", 154.8, "bf16"),
    ("V100", 125.0, "fp16"),
    ("T4", 65.0, "fp16"),
)


def peak_of(name: str) -> dict | None:
    """The datasheet peak of a GPU by its device name: {"tflops", "format", "matched"}."""
    for pattern, tflops, fmt in PEAKS:
        if pattern.lower() in name.lower():
            return {"tflops": tflops, "format": fmt, "matched": pattern}
    return None


def study_file(workdir: Path, steps: int, seeds: list[int]) -> str:
    """The GPU study as its trials run, without the tuning phase (a throughput measure, not
    a result): one seed, `steps` steps."""
    from lab.yamlfile import read_yaml_mapping

    raw = read_yaml_mapping(REPO / STUDY, "ablation file")
    raw.pop("tune", None)
    raw["base"] = [str(REPO / b) for b in raw["base"]]
    raw["seeds"] = seeds
    raw["overrides"] = {**raw.get("overrides", {}), "train.steps": steps,
                        "train.val_every": steps}
    path = workdir / "loops_gpu_bench.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def measure(sizes: Sizes, workdir: Path, files: list[str], overrides: list[str],
            study: dict | None) -> dict[str, Any]:
    """Every measurement of the section on the device the lab trains `files` + `overrides`
    on. `study`: {"ablation", "overrides", "workers"} of the throughput runs (None: none)."""
    from lab.bench.harness import harness_pair
    from lab.bench.sweep import run_study
    from lab.bench.utilisation import gemm_format, peak_square, train_step_flops
    from lab.eval.device import clock

    cfg = bench_config(sizes, *overrides, files=files)
    device, dtype = gemm_format(cfg)
    out: dict[str, Any] = {"config": [*files, *overrides], "device": device.type,
                           "gemm_dtype": str(dtype).removeprefix("torch.")}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        out.update(gpu=name, peak=peak_of(name),
                   memory_gb=torch.cuda.get_device_properties(device).total_memory / 1e9)
    warmup, chunk, reps = sizes.gpu_harness
    h = harness_pair(sizes, overrides, warmup, chunk, reps, workdir, files=files)
    flops = train_step_flops(cfg)
    square = peak_square(sizes.gpu_square, sizes.gemm_reps, device, dtype)
    step = h["lab_step_s"]["median"]
    out.update(harness=h, train_flops_per_step=flops, square=square,
               achieved_flop_s=flops / step, achieved_flop_s_plain=flops / h["plain_step_s"]["median"],
               fraction_of_square=flops / step / square["flop_s"])
    if out.get("peak"):
        out["mfu"] = flops / step / (out["peak"]["tflops"] * 1e12)
        out["mfu_plain"] = out["achieved_flop_s_plain"] / (out["peak"]["tflops"] * 1e12)

    # Data: one batch of the preset's task, drawn where the lab draws it.
    loop = PlainLoop(cfg, compile_backend=None if cfg.train.compile else False)
    n = sizes.data_chunk

    def sample() -> float:
        t0 = clock(device)
        for _ in range(n):
            loop.batch()
        return (clock(device) - t0) / n

    loop.run(max(2, n // 2))
    t = interleave({"sample": sample, "step": lambda: loop.run(n)}, sizes.data_reps)
    s = {k: summary(v) for k, v in t.items()}
    lab_loop = h["lab_phases_s"].get("loop+data", {}).get("median")
    out["data"] = {"sample_s": s["sample"], "step_s": s["step"],
                   "share": ratio(s["sample"], s["step"]),
                   "lab_between_steps_s": lab_loop,
                   "lab_between_steps_share": lab_loop / step if lab_loop else None,
                   "on_device": isinstance(getattr(loop.task, "data", {}).get("train"),
                                           torch.Tensor)}

    # Compilation: eager against compiled blocks on the preset, interleaved.
    eager = PlainLoop(bench_config(sizes, *overrides, "train.compile=false", files=files))
    compiled = PlainLoop(cfg, compile_backend=sizes.compile_backend)
    t0 = clock(device)
    compiled.run(3)
    first = clock(device) - t0
    eager.run(max(2, sizes.compile_chunk // 2))
    compiled.run(max(2, sizes.compile_chunk // 2))
    m = sizes.compile_chunk
    t = interleave({"eager": lambda: eager.run(m), "compiled": lambda: compiled.run(m)},
                   sizes.compile_reps)
    c = {k: summary(v) for k, v in t.items()}
    out["compile"] = {"backend": sizes.compile_backend or "inductor (default)",
                      "eager_step_s": c["eager"], "compiled_step_s": c["compiled"],
                      "speedup": ratio(c["eager"], c["compiled"]),
                      "compile_time_s": first - 3 * c["compiled"]["median"]}

    if study is not None:
        runs = {}
        for per_gpu in (1, 2):
            workers = study["workers"] * per_gpu
            runs[f"{per_gpu} per GPU"] = run_study(  # the study file's own seed
                replace(sizes, sweep_overrides=[]), workers, workdir, f"gpu-{per_gpu}",
                ablation=study["ablation"],
                overrides=[*study["overrides"], f"train.trials_per_gpu={per_gpu}"])
        out["study"] = {"ablation": STUDY, "file": study["ablation"], "runs": runs,
                        "speedup_2": runs["2 per GPU"]["trials_per_hour"]
                        / runs["1 per GPU"]["trials_per_hour"]}
    return out


def run(sizes: Sizes, workdir: Path, results: dict) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device is visible: the GPU section needs one"}
    from lab.train.machine import cuda_count

    study = {"ablation": study_file(workdir, sizes.gpu_study_steps, [0]), "overrides": [],
             "workers": cuda_count()} if sizes.gpu_study else None
    return {"ran": True, **measure(sizes, workdir, [PRESET], sizes.gpu_overrides, study)}


def render(result: dict) -> list[str]:
    out = [TITLE, ""]
    if "skipped" in result:
        return out + [f"Skipped: {result['skipped']}. The GPU path has not been measured by "
                      "this run.", ""]
    if "error" in result:
        return out + error_lines(result)
    h, d, c = result["harness"], result["data"], result["compile"]
    peak = result.get("peak")
    out += [
        f"Device: {result.get('gpu', result['device'])}"
        + (f", {result['memory_gb']:.0f} GB" if result.get("memory_gb") else "")
        + f"; config `{' '.join(result['config'])}` ({h['model']}, d={h['d_model']}, batch "
        f"{h['batch_size']}x{h['seq_len']}).",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| training FLOPs per step (FlopCounterMode, fwd + bwd) | "
        f"{result['train_flops_per_step'] / 1e12:.3f} TFLOP |",
        f"| lab step | {ms(h['lab_step_s'])} |",
        f"| plain PyTorch loop step, same device | {ms(h['plain_step_s'])} |",
        f"| lab / plain | {h['ratio']:.3f} |",
        f"| achieved (lab) | {result['achieved_flop_s'] / 1e12:.1f} TFLOP/s |",
        f"| {result['gemm_dtype']} {result['square']['n']}-square matmul here | "
        f"{result['square']['flop_s'] / 1e12:.1f} TFLOP/s |",
        f"| lab / that matmul | {100 * result['fraction_of_square']:.1f}% |",
    ]
    if peak:
        out += [f"| datasheet peak ({peak['matched']}, dense {peak['format']}) | "
                f"{peak['tflops']:.0f} TFLOP/s |",
                f"| **MFU** (lab; plain loop) | **{100 * result['mfu']:.1f}%**; "
                f"{100 * result['mfu_plain']:.1f}% |"]
    out += [
        f"| one batch drawn{' on the device' if d['on_device'] else ''} | {ms(d['sample_s'])} |",
        f"| data time / step time | {100 * d['share']:.2f}% |",
    ]
    if d.get("lab_between_steps_s") is not None:
        out.append(f"| lab, between two steps (loader, loop, hooks) / step | "
                   f"{100 * d['lab_between_steps_share']:.2f}% |")
    out += [
        f"| eager step / compiled step ({c['backend']}) | {ms(c['eager_step_s'])} / "
        f"{ms(c['compiled_step_s'])}: **{c['speedup']:.2f}x** |",
        f"| compile time (first 3 steps minus steady state) | {c['compile_time_s']:.1f} s |",
        "",
    ]
    if not peak and result["device"] == "cuda":
        out += ["No datasheet peak is known for this GPU's name (lab.bench.gpu.PEAKS): MFU is "
                "given against the measured matmul only.", ""]
    st = result.get("study")
    if st:
        out += [f"GPU study throughput: `{st['ablation']}` without its tuning phase, one seed, "
                "a short budget, all visible GPUs:", "",
                "| trials per GPU | workers | trials | trials/hour | command wall |",
                "|---|---:|---:|---:|---:|"]
        for label, r in st["runs"].items():
            out.append(f"| {label} | {r['workers']} | {r['trials']} | {r['trials_per_hour']:.0f} "
                       f"| {r['command_wall_s']:.0f} s |")
        out += ["", f"2 trials per GPU give **{st['speedup_2']:.2f}x** the trials per hour of 1.",
                ""]
    return out
