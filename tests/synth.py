"""Synthetic studies for report tests: an ablation file over the debug config and, for every
(setting, seed) pair, a completed trial with known values and attributes (costs, learning
curve, per-loop diagnostics, extrapolation, adaptive exit), added to the study's storage
without training. Reports written from them render in a second.

    abl, study = synthetic(tmp_path, "loops", SPACE, value=lambda s, seed: ...)

`value(setting, seed)` is the objective of a trial; `attrs(setting, seed)` adds or replaces
attributes; `latency` (setting label -> seconds per token, one per round) stores a paired
cost pass on the study.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution

from lab.study.attrs import LATENCY_ATTR, SEED_HIGH, SEED_LOW, encode, pair_key, pair_params
from lab.study.identity import create_or_load_study
from lab.study.spec import load_ablation

DEBUG = Path(__file__).resolve().parent.parent / "configs" / "debug.yaml"
optuna.logging.set_verbosity(optuna.logging.WARNING)

# A loops-like design: prelude, a middle block looped r = 1-3 with injection (and r = 3
# without), coda, against uniform stacks of equal effective depth (r = 1 is the same model as
# the 3-layer stack: its twin, whose trials it owns).
LOOPS = """
overrides: {model.n_layers: 3, model.band: [1, 1]}
space:
  model.family:
    looped:
      model.injection:
        add: {model.loops: [1, 2, 3]}
        none: {model.loops: [3]}
    uniform: {model.n_layers: [3, 4, 5]}
axis: {looped/add: model.loops, uniform: model.n_layers}
analysis: {primary: looped/add}
"""

# A loop_modes-like design: arms of one setting each, all looped r = 2.
MODES = """
overrides: {model.family: looped, model.loops: 2, model.injection: add, task.name: word}
space:
  model.loop_mode:
    serial: {}
    parallel:
      model.plt_shift:
        false: {}
        true: {}
analysis: {reference: serial}
"""


def loops_of(params: dict, base: dict) -> int:
    m = base.get("model", {})
    return int(params.get("model.loops", m.get("loops", 1)))


def default_attrs(setting, seed: int, value: float, base: dict, objective: str) -> dict:
    """Attributes a completed trial of this setting records, with plausible numbers."""
    p = setting.params
    family = p.get("model.family", base.get("model", {}).get("family"))
    looped = family == "looped"
    r = loops_of(p, base) if looped else 1
    n_layers = int(p.get("model.n_layers", base.get("model", {}).get("n_layers", 1)))
    depth = n_layers + r - 1 if looped else n_layers  # a one-block core: r - 1 extra blocks
    width = int(p.get("model.d_model", 16))
    flops = 6000.0 * depth * (width / 16) ** 2
    curve = {"step": [10, 20], objective: [value * (1.1 if "bpb" in objective else 0.9), value]}
    out = {
        "params": 3300 if looped else 3300 * depth * (width / 16) ** 2,
        "effective_depth": depth, "flops_per_token": flops, "train_flops_per_token": 3 * flops,
        "latency_s_per_token": 1e-5 * depth * (1 + 0.5 * seed),  # noisy per-trial timing
        "latency_mode": "kv-cache decode", "kv_bytes_per_token": 64.0 * depth,
        "train_tokens_per_s": 1e4 / depth, "wall_time_s": 2.0 * depth, "curve": curve,
        "metrics": {objective: value}, "plan": f"{setting.label}", "widths": [width],
        "mlp_hidden": [4 * width],
    }
    if not looped:  # a logit lens after every layer
        out["diagnostics"] = {f"readout_{k}/{i}": (0.4 + 0.1 * i / depth if k == "acc" else
                                                   2.2 - 0.2 * i / depth)
                              for i in range(1, depth + 1) for k in ("acc", "loss")}
    if looped:
        diag = {}
        inject = p.get("model.injection", base.get("model", {}).get("injection")) == "add"
        for i in range(1, r + 1):
            diag[f"readout_acc/{i}"] = 0.4 + 0.1 * i / r
            diag[f"readout_loss/{i}"] = 2.0 - 0.1 * i / r
            diag[f"block_norm/{i}"] = 0.5 / i ** (1 + 0.3 * r)
            diag[f"update_norm/{i}"] = 1.0 / i if inject else diag[f"block_norm/{i}"]
            if i > 1:
                diag[f"block_cos/{i}"] = 0.3 - 0.2 * i + 0.05 * r
                diag[f"update_cos/{i}"] = 0.99
                diag[f"inject_norm/{i}"] = 1.0 / i if inject else 0.0
                diag[f"readout_kl/{i}"] = 0.01 / i
        out["diagnostics"] = diag
        out["extrapolation"] = {split: {str(k): 0.5 + 0.02 * min(k, r) - 0.01 * max(0, k - r)
                                        for k in range(1, 2 * r + 1)} for split in ("val", "ood")}
        if p.get("model.loop_mode", "serial") == "serial":
            full = 0.5 + 0.02 * r
            out["adaptive"] = {"update_norm": [
                {"threshold": t, "mean_loops": loops, "acc_token": acc}
                for t, loops, acc in ((0.0, r, full), (0.1, r - 0.5, full - 0.02),
                                      (1e9, 1.0, 0.52))]}
    return out


def synthetic(tmp_path: Path, name: str, body: str, value, attrs=None, seeds=(0, 1, 2),
              objective: str = "val/bpb", latency: dict[str, list[float]] | None = None,
              mode: str = "kv-cache decode"):
    """An ablation file `name` (debug base, `body` adds space, axis, analysis, ...) and its
    study, every pair completed with `value(setting, seed)`; latencies timed as `mode`
    ("kv-cache decode", or "full-sequence pass" for a bidirectional task)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nbase: [{DEBUG}]\nseeds: {list(seeds)}\n"
                    f"objective: {objective}\n{body}")
    abl = load_ablation(path)
    study = create_or_load_study(abl)
    base = study.user_attrs["lab.base_config"]
    keys = {k for s in abl.settings() for k in s.params}
    dist = {k: CategoricalDistribution(sorted({encode(s.params[k]) for s in abl.settings()
                                               if k in s.params}, key=str)) for k in keys}
    dist["seed"] = IntDistribution(SEED_LOW, SEED_HIGH)
    twins = abl.twins()  # one model under two names: its owner's trials stand for both
    for s in abl.settings():
        if s.label in twins:
            continue
        for seed in seeds:
            v = float(value(s, seed))
            params = pair_params(s.params, seed)
            a = {**default_attrs(s, seed, v, base, objective), "latency_mode": mode}
            a.update(attrs(s, seed) if attrs else {})
            a.update({"lab.setting": s.label, "lab.group": s.group,
                      "lab.pair": pair_key(params), "lab.fail_reason": None,
                      "lab.git": {"revision": "0" * 40, "dirty": False}, "lab.threads": 1})
            if s.axis is not None:
                a["lab.axis"] = s.axis
            study.add_trial(optuna.trial.create_trial(
                value=v, params=params, distributions={k: dist[k] for k in params},
                user_attrs=json.loads(json.dumps(a, default=str)),
                intermediate_values={10: a["curve"][objective][0]}))
    if latency is not None:
        study.set_user_attr(LATENCY_ATTR, {"rounds": len(next(iter(latency.values()))),
                                           "seconds": latency, "mode": mode})
    return abl, study


def spread(mean: float, seed: int, sd: float = 0.01) -> float:
    """Three seeds at mean - sd, mean, mean + sd (seeds beyond 2 repeat the pattern)."""
    return mean + sd * ((seed % 3) - 1) * math.sqrt(1.5)
