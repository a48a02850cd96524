"""What identifies a trial in TensorBoard's HParams tab, and the study-wide domain of each.

A trial logs the swept config keys (every key of the space, read from its resolved config,
so a key of the other arm shows the value the trial actually ran with), its setting label,
its seed and its task. Every trial of a study declares the same domain (all values over the
study's settings and seeds), so every run of the study describes one experiment and the
HParams tab shows the same columns whichever run it reads the description from.
"""

from __future__ import annotations

from typing import Any

from lab.config import LabConfig, flatten, to_dict
from lab.study.space import Choice, Range, range_values, space_keys
from lab.study.spec import Ablation


def swept_keys(abl: Ablation) -> list[str]:
    """Every config key the ablation sweeps, arms' sub-spaces included, in file order."""
    return space_keys(abl.space)


def _add(domain: dict[str, list], key: str, value: Any) -> None:
    from lab.train.tensorboard import hparam_value  # Lightning: only where a run is logged

    v = hparam_value(value)
    values = domain.setdefault(key, [])
    if v not in values:
        values.append(v)


def hparam_domain(abl: Ablation) -> dict[str, list]:
    """Every value each trial hparam takes across the study (grid: exact; tpe: the declared
    choices and integer ranges, plus whatever the trials report)."""
    keys = swept_keys(abl)
    domain: dict[str, list] = {k: [] for k in keys}
    if abl.sampler == "grid":
        for setting, cfg in abl.setting_configs():
            flat = flatten(to_dict(cfg))
            for k in keys:
                _add(domain, k, flat.get(k))
            _add(domain, "setting", setting.label)
            _add(domain, "task", cfg.task["name"])
    else:
        def walk(space):
            for e in space:
                if isinstance(e, Choice):
                    for v in e.values:
                        _add(domain, e.key, v)
                    for sub in (e.arms or {}).values():
                        walk(sub)
                elif isinstance(e, Range) and e.is_int and (e.high - e.low) <= 64:
                    for v in range_values(e):
                        _add(domain, e.key, v)

        walk(abl.space)
        _add(domain, "task", abl.config().task["name"])
    for s in abl.seeds:
        _add(domain, "seed", s)
    return domain


def trial_hparams(abl: Ablation, cfg: LabConfig, label: str) -> dict[str, Any]:
    """The hparams of one trial: swept keys, setting, seed, task."""
    from lab.train.tensorboard import run_hparams

    return run_hparams(cfg, swept_keys(abl), setting=label)
