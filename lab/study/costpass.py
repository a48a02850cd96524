"""Paired latency: every setting's model timed in one process, interleaved, several rounds.

A latency measured once per trial, while another worker shares the machine, moved by 30-40%
between two runs of the same study. Here, after the measured trials, the sweep builds each
setting's model (latency does not depend on the trained weights) and times it in rounds: each
round times every setting once, in a shuffled order, so drifts of the machine hit all settings
alike. The ratio of two settings is then estimated from the per-round ratios, with a
t-interval on their logarithms (:func:`lab.stats.ratio_ci`), and a report names a ratio only when
that interval excludes 1.

When the ablation asks for it (``analysis.context_costs``), the same pass also measures KV-cache
bytes and decode latency against context length and batch size (lab.eval.context), stored in
CONTEXT_ATTR.
"""

from __future__ import annotations

import random
from typing import Any

from lab.study.attrs import CONTEXT_ATTR, LATENCY_ATTR
from lab.study.spec import Ablation

ROUNDS = 7
CONTEXT_ROUNDS = 3  # rounds of the context-length pass (each times every setting at every point)
CONTEXT_STEPS = 4  # timed single-token steps per point and round (the fastest counts)


def measure(abl: Ablation, rounds: int = ROUNDS, threads: int = 1) -> dict[str, Any]:
    """{"rounds": n, "seconds": {setting: [seconds per token, one per round]}, "mode": ...}."""
    import torch

    from lab.eval.cost import latency_costs
    from lab.model import build_model, resolve
    from lab.train.machine import resolve_precision, train_device

    torch.set_num_threads(threads)
    models = {}
    for setting, cfg in abl.setting_configs():
        cfg, task, plan = resolve(cfg)
        torch.manual_seed(0)
        loops = cfg.model.eval_loops or cfg.model.loops
        # Timed where the trials ran, in their number format.
        model = build_model(cfg, task, plan).to(train_device(cfg)).eval()
        models[setting.label] = (model, task, loops, cfg.eval.decode_tokens,
                                 resolve_precision(cfg.train))
    seconds: dict[str, list[float]] = {k: [] for k in models}
    mode = None
    order = list(models)
    rng = random.Random(0)
    with torch.no_grad():
        for _ in range(rounds):
            rng.shuffle(order)
            for k in order:
                model, task, loops, n, precision = models[k]
                out = latency_costs(model, task, loops, n, repeats=3, precision=precision)
                seconds[k].append(out["latency_s_per_token"])
                mode = out["latency_mode"]
    return {"rounds": rounds, "seconds": seconds, "mode": mode}


def measure_context(abl: Ablation, lengths: list[int], batches: list[int],
                    rounds: int = CONTEXT_ROUNDS, steps: int = CONTEXT_STEPS,
                    threads: int = 1) -> dict[str, Any]:
    """Every setting's KV bytes and decode latency at each context length and batch size
    (lab.eval.context.measure_contexts), with each setting's loop mode and the formula's
    bytes; settings of a bidirectional task are skipped (they do not decode)."""
    import torch

    from lab.eval.context import context_model, measure_contexts, needed_positions, setting_info
    from lab.eval.device import autocast_dtype
    from lab.model import resolve
    from lab.train.machine import resolve_precision, train_device

    torch.set_num_threads(threads)
    max_len = needed_positions(lengths, steps)
    models, info, skipped = {}, {}, {}
    precision = None
    for setting, cfg in abl.setting_configs():
        cfg, task, plan = resolve(cfg)
        if not task.causal:
            skipped[setting.label] = "bidirectional task: no token-by-token decoding"
            continue
        loops = cfg.model.eval_loops or cfg.model.loops
        precision = resolve_precision(cfg.train)  # the study's: one for every setting
        models[setting.label] = (context_model(plan, task.vocab_size, max_len)
                                 .to(train_device(cfg)), loops)
        # The formula in the number format the cache is measured in (2 bytes under autocast).
        size = 4 if autocast_dtype(precision) is None else 2
        info[setting.label] = setting_info(plan, loops, sorted(lengths), size)
    out = measure_contexts(models, lengths, batches, rounds, steps,
                           precision=precision) if models else {
        "lengths": sorted(lengths), "batches": sorted(batches), "rounds": rounds,
        "steps": steps, "settings": {}}
    for k, v in out["settings"].items():
        v.update(info[k])
    out["skipped"] = skipped
    return out


def ensure_context(abl: Ablation, study, threads: int = 1) -> dict[str, Any] | None:
    """The context-length pass, when the ablation asks for it: once per set of settings,
    lengths and batch sizes (a rerun with the same ones keeps the stored result)."""
    spec = abl.analysis_spec.context_costs
    if spec is None:
        return None
    lengths, batches = sorted(spec.lengths), sorted(spec.batches)
    stored = study.user_attrs.get(CONTEXT_ATTR)
    labels = sorted(s.label for s, _ in abl.setting_configs())
    if (stored and stored.get("lengths") == lengths and stored.get("batches") == batches
            and sorted([*stored.get("settings", {}), *stored.get("skipped", {})]) == labels):
        return stored
    result = measure_context(abl, lengths, batches, threads=threads)
    study.set_user_attr(CONTEXT_ATTR, result)
    return result


def ensure(abl: Ablation, study, threads: int = 1) -> dict[str, Any] | None:
    """The paired latency (ensure_latency), then the context-length pass (ensure_context);
    returns the paired latency."""
    latency = ensure_latency(abl, study, threads)
    ensure_context(abl, study, threads)
    return latency


def ensure_latency(abl: Ablation, study, threads: int = 1) -> dict[str, Any] | None:
    """Measure once per set of settings and store it on the study (a rerun keeps it)."""
    if abl.sampler != "grid":
        return None
    stored = study.user_attrs.get(LATENCY_ATTR)
    labels = sorted(s.label for s in abl.settings())
    if stored and sorted(stored.get("seconds", {})) == labels:
        return stored
    result = measure(abl, threads=threads)
    study.set_user_attr(LATENCY_ATTR, result)
    return result
