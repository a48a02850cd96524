"""Section 6, compilation: step time with and without ``train.compile``, and the compile time."""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any

from lab.bench.common import (
    PlainLoop,
    Sizes,
    bench_config,
    deterministic,
    error_lines,
    first_line,
    interleave,
    ms,
    ratio,
    summary,
)

TITLE = "## 6. Compilation"


def run(sizes: Sizes, workdir: Path, results: dict) -> dict:
    cfg = bench_config(sizes)
    deterministic(cfg)
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
        out["error"] = first_line(e)
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


def render(result: dict) -> list[str]:
    out = [TITLE, ""]
    if "error" in result and "backend" not in result:
        return out + error_lines(result)
    out += [f"`train.compile=true` (`model.compile_blocks()`: each block compiled, backend "
            f"{result['backend']}) at the default config, plain training loop, compiled and eager "
            "models interleaved after warm-up; compile time measured cold (empty compile cache).", ""]
    if "error" in result:
        return out + [f"Compilation failed on this machine: `{result['error']}`", ""]
    out += [
        "| | step |", "|---|---:|",
        f"| eager | {ms(result['eager_step_s'])} |",
        f"| compiled | {ms(result['compiled_step_s'])} |",
        "",
        f"First three compiled steps: {', '.join(f'{x:.2f} s' for x in result['first_steps_s'])}; "
        f"compile time ≈ {result['compile_time_s']:.1f} s (first steps minus steady-state steps).",
        "",
    ]
    sp = result["speedup"]
    if sp >= 1:
        be = result["break_even_steps"]
        out.append(f"Compiled steps are **{sp:.2f}x** as fast as eager ones; the compile time is "
                   f"repaid after about {be:.0f} steps (a run of this config has "
                   f"{result['run_steps']} steps)." if be else f"Speed-up {sp:.2f}x.")
    else:
        out.append(f"Compiled steps are **slower** on this CPU: {1 / sp:.2f}x the eager step time, "
                   "so train.compile does not pay off here.")
    return out + [""]
