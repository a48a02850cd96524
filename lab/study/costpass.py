"""Paired latency: every setting's model timed in one process, interleaved, several rounds.

A latency measured once per trial, while another worker shares the machine, moved by 30-40%
between two runs of the same study. Here, after the measured trials, the sweep builds each
setting's model (latency does not depend on the trained weights) and times it in rounds: each
round times every setting once, in a shuffled order, so drifts of the machine hit all settings
alike. The ratio of two settings is then estimated from the per-round ratios, with a
t-interval on their logarithms (:func:`lab.stats.ratio_ci`), and a report names a ratio only when
that interval excludes 1.
"""

from __future__ import annotations

import random
from typing import Any

from lab.study.attrs import LATENCY_ATTR
from lab.study.spec import Ablation

ROUNDS = 7


def measure(abl: Ablation, rounds: int = ROUNDS, threads: int = 1) -> dict[str, Any]:
    """{"rounds": n, "seconds": {setting: [seconds per token, one per round]}, "mode": ...}."""
    import torch

    from lab.eval.cost import latency_costs
    from lab.model import build_model, resolve

    torch.set_num_threads(threads)
    models = {}
    for setting, cfg in abl.setting_configs():
        cfg, task, plan = resolve(cfg)
        torch.manual_seed(0)
        loops = cfg.model.eval_loops or cfg.model.loops
        models[setting.label] = (build_model(cfg, task, plan).eval(), task, loops,
                                 cfg.eval.decode_tokens)
    seconds: dict[str, list[float]] = {k: [] for k in models}
    mode = None
    order = list(models)
    rng = random.Random(0)
    with torch.no_grad():
        for _ in range(rounds):
            rng.shuffle(order)
            for k in order:
                model, task, loops, n = models[k]
                out = latency_costs(model, task, loops, n, repeats=3)
                seconds[k].append(out["latency_s_per_token"])
                mode = out["latency_mode"]
    return {"rounds": rounds, "seconds": seconds, "mode": mode}


def ensure(abl: Ablation, study, threads: int = 1) -> dict[str, Any] | None:
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
