"""Section 3, looping overhead: a looped stack against the unrolled uniform stack of the
same blocks, plain training loop, interleaved."""

from __future__ import annotations

from pathlib import Path

from lab.bench.common import (
    PHASES,
    PlainLoop,
    Sizes,
    bench_config,
    deterministic,
    error_lines,
    interleave,
    ms,
    range_str,
    ratio,
    summary,
    verdict,
)
from lab.model import resolve

TITLE = "## 3. Looping overhead"


def run(sizes: Sizes, workdir: Path, results: dict) -> dict:
    r = sizes.loops
    cfgs = {
        "looped": bench_config(sizes, "model.family=looped", "model.n_layers=1", f"model.loops={r}"),
        "unrolled": bench_config(sizes, "model.family=uniform", f"model.n_layers={r}"),
    }
    loops = {k: PlainLoop(c) for k, c in cfgs.items()}
    deterministic(cfgs["looped"])
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


def render(result: dict) -> list[str]:
    out = [TITLE, ""]
    if "error" in result:
        return out + error_lines(result)
    s, ph = result["step_s"], result["phases_s"]
    out += [
        f"A looped stack (one block, {result['loops']} loops, order {result['orders']['looped']}) "
        f"against the uniform stack that executes the same blocks unrolled (order "
        f"{result['orders']['unrolled']}), plain training loop, interleaved.",
        "",
        "| model | params | step | forward | backward | optimizer |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k in ("looped", "unrolled"):
        out.append(f"| {k} | {result['params'][k]:,} | {ms(s[k])} | {ms(ph[k]['forward'])} | "
                   f"{ms(ph[k]['backward'])} | {ms(ph[k]['optimizer'])} |")
    out += [
        "",
        f"Step-time ratio looped / unrolled: **{result['ratio']:.3f}** (per pair "
        f"{range_str(result['ratio_pairs'])}). Target <= {result['target']:.2f}: "
        f"{verdict(result['ratio'], result['target'])}.",
        "",
        f"Where the time goes: forward ratio {result['ratio_forward']:.3f}, backward "
        f"{result['ratio_backward']:.3f}, forward+backward {result['ratio_forward_backward']:.3f}, "
        f"optimizer {result['ratio_optimizer']:.3f} (the looped stack has "
        f"{result['params']['looped'] / result['params']['unrolled']:.2f}x the parameters, so its "
        "AdamW update and clipping are cheaper; its backward also accumulates the shared "
        "block's gradients over the loops).",
        "",
    ]
    return out
