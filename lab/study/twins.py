"""Settings that are one model under two names: run once, reported under both.

Two settings are twins when their resolved configs run the same computation: the same blocks
executed in the same order with the same widths (block ids compared by first appearance, so
a looped core run once is the same as distinct layers), the same recipe, training and task,
and the same knobs that act (input injection, loop supervision and the loop mode only act
with more than one loop). ``looped, loops=1`` and ``uniform, n_layers=3`` with one middle
block are such a pair. The first of them in the ablation's order owns the trials.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from lab.config import to_dict

if TYPE_CHECKING:
    from lab.study.spec import Ablation


def computation_key(cfg) -> str:
    """What a trial of this config computes, independent of how the setting is labelled."""
    from lab.model import resolve

    cfg, _, plan = resolve(cfg)
    m = cfg.model
    loops = {m.loops, m.eval_loops or m.loops}
    many = plan.looped and (max(loops) > 1 or m.loop_sampling != "fixed")
    canon: dict[int, int] = {}
    executed = []
    for r in sorted(loops):
        order = [canon.setdefault(b, len(canon)) for b in plan.order(r)]
        executed.append(order)
    blocks = {canon[b]: (plan.widths[b], plan.hidden[b]) for b in canon}
    key: dict[str, Any] = {
        "executed": executed,
        "blocks": sorted(blocks.items()),
        "resize": plan.resize if plan.resized_transitions() else None,
        "recipe": (plan.positions, plan.rope_base, plan.tied, plan.gated),
        # Knobs that only act between loops: part of the key only when loops repeat.
        "loops": None if not many else {
            "injection": m.injection, "supervision": m.supervision, "bptt": m.bptt_loops,
            "sampling": (m.loop_sampling, m.loops_range), "mode": m.loop_mode,
            "parallel": asdict(plan.parallel) if m.loop_mode == "parallel" else None,
            "exit": (m.exit, m.exit_threshold, m.exit_max_loops)},
        "dropout": m.dropout,
        "train": to_dict(cfg)["train"] | {"threads": None, "progress": None},
        "task": to_dict(cfg)["task"],
        "eval": to_dict(cfg)["eval"],
    }
    return json.dumps(key, sort_keys=True, default=str)


def twins(abl: Ablation) -> dict[str, str]:
    """{setting: the setting that owns its trials}, for every setting that repeats an earlier
    one (settings not listed own their trials). Grid ablations only."""
    if abl.sampler != "grid":
        return {}
    owner: dict[str, str] = {}
    out: dict[str, str] = {}
    for setting, cfg in abl.setting_configs():
        try:
            key = computation_key(cfg)
        except Exception:  # a setting that does not build is refused elsewhere, with its reason
            continue
        if key in owner:
            out[setting.label] = owner[key]
        else:
            owner[key] = setting.label
    return out
