"""The typed sections of an ablation file: ``analysis:`` and ``tune:``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lab.errors import LabError
from lab.study.space import Choice, Range, parse_space

CONTEXT_LENGTHS = [128, 256, 512, 1024, 2048]
CONTEXT_BATCHES = [1, 8]


@dataclass
class ContextCosts:
    """``analysis.context_costs``: measure KV-cache bytes and decode latency against context
    length after the sweep (lab.eval.context), at each of `lengths` cached tokens and each
    batch size in `batches`. Analysis only: it never changes the study's identity."""

    lengths: list[int] = field(default_factory=lambda: list(CONTEXT_LENGTHS))
    batches: list[int] = field(default_factory=lambda: list(CONTEXT_BATCHES))


@dataclass
class AnalysisSpec:
    """The ``analysis:`` section of an ablation file."""

    primary: str | None = None  # the arm whose curve the headline verdict is about
    reference: str | None = None  # the setting others are compared with (unordered arms)
    min_gain: float = 0.01  # smallest worthwhile gain, in objective units
    confidence: float = 0.95
    verdict: Literal["curve", "arms"] = "curve"  # arms: lead with the comparison of arms
    # A run "solves" the task when its objective reaches this value: success rates, steps to
    # solve. None: 0.95 for accuracy objectives, no threshold otherwise.
    solve_threshold: float | None = None
    # Costs against context length (true: the defaults of ContextCosts); None: not measured.
    context_costs: ContextCosts | None = None


def parse_analysis(raw: Any, where: str) -> dict[str, Any]:
    """Check the analysis section against AnalysisSpec; returns the keys given."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise LabError(f"ablation '{where}': 'analysis' must be a mapping of "
                       f"{', '.join(f.name for f in dataclasses.fields(AnalysisSpec))}.")
    raw = dict(raw)
    context = parse_context_costs(raw.pop("context_costs", None), where)
    try:
        OmegaConf.merge(OmegaConf.structured(AnalysisSpec), raw)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        valid = ", ".join(f.name for f in dataclasses.fields(AnalysisSpec))
        raise LabError(f"ablation '{where}': analysis.{key}: "
                       f"{str(getattr(e, 'msg', e)).splitlines()[0]} (valid keys: {valid}).") from None
    conf = raw.get("confidence")
    if conf is not None and not 0 < float(conf) < 1:
        raise LabError(f"ablation '{where}': analysis.confidence must be in (0, 1), got {conf}.")
    if context is not None:
        raw["context_costs"] = context
    return raw


def parse_context_costs(raw: Any, where: str) -> dict[str, list[int]] | None:
    """`true`, `false` or {lengths: [...], batches: [...]}: the lengths and batch sizes to
    measure (sorted), or None when off."""
    if raw is None or raw is False:
        return None
    key = "analysis.context_costs"
    usage = (f"{key} takes true (context lengths {CONTEXT_LENGTHS}, batch sizes "
             f"{CONTEXT_BATCHES}), false, or a mapping such as {{lengths: [128, 512, 2048], "
             "batches: [1, 8]}")
    if raw is True:
        raw = {}
    if not isinstance(raw, dict):
        raise LabError(f"ablation '{where}': {usage}; got {raw!r}.")
    unknown = sorted(set(raw) - {"lengths", "batches"})
    if unknown:
        raise LabError(f"ablation '{where}': unknown key '{key}.{unknown[0]}'. Valid keys: "
                       f"lengths (context lengths in tokens, default {CONTEXT_LENGTHS}) and "
                       f"batches (batch sizes, default {CONTEXT_BATCHES}).")
    out = {}
    for name, what in (("lengths", "context lengths in tokens"), ("batches", "batch sizes")):
        v = raw.get(name, getattr(ContextCosts(), name))
        v = [v] if isinstance(v, int) and not isinstance(v, bool) else v
        if not (isinstance(v, list) and v and all(
                isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
                and len(set(v)) == len(v)):
            raise LabError(f"ablation '{where}': {key}.{name} must be a non-empty list of "
                           f"distinct positive integers ({what}), e.g. "
                           f"{getattr(ContextCosts(), name)}; got {v!r}.")
        out[name] = sorted(v)
    return out


@dataclass
class TuneSpec:
    """The ``tune:`` section: hyperparameters tuned per setting before the measured seeds run.

    Every setting gets its own small grid search over `space` (each range gets `points`
    values, log-spaced where log: true) on the tuning `seeds` (disjoint from the measured
    ones), scored on the task's "tune" split (never the reported validation split), at
    `budget` times the training steps; `pruner` stops losing points early (successive
    halving on the tuning objective at every validation). The measured seeds then run at the
    best point of their setting.
    """

    space: tuple  # parsed entries (Choice / Range)
    space_spec: dict
    points: int = 5
    seeds: list[int] = field(default_factory=lambda: [100])
    budget: float = 1.0
    pruner: str = "successive_halving"

    @property
    def keys(self) -> list[str]:
        return [e.key for e in self.space]

    def grid(self) -> list[dict[str, Any]]:
        """Every point of the tuning grid."""
        axes = []
        for e in self.space:
            if isinstance(e, Choice):
                axes.append([(e.key, v) for v in e.values])
            else:
                n = max(2, self.points)
                if e.log:
                    vals = [e.low * (e.high / e.low) ** (i / (n - 1)) for i in range(n)]
                else:
                    vals = [e.low + (e.high - e.low) * i / (n - 1) for i in range(n)]
                vals = [int(round(v)) for v in vals] if e.is_int else [float(f"{v:.6g}") for v in vals]
                axes.append([(e.key, v) for v in dict.fromkeys(vals)])
        out: list[dict[str, Any]] = [{}]
        for axis in axes:
            out = [{**p, k: v} for p in out for k, v in axis]
        return out

    def spec(self) -> dict[str, Any]:
        return {"space": self.space_spec, "points": self.points, "seeds": self.seeds,
                "budget": self.budget, "pruner": self.pruner}


TUNE_KEYS = {"space", "points", "seeds", "budget", "pruner"}


def parse_tune(raw: Any, seeds: list[int], where: str) -> TuneSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or "space" not in raw:
        raise LabError(f"ablation '{where}': 'tune' must be a mapping with a 'space' of config keys "
                       "to tune per setting, e.g. tune: {space: {train.lr: {low: 3e-4, high: 1e-2, "
                       "log: true}}}.")
    unknown = sorted(set(raw) - TUNE_KEYS)
    if unknown:
        raise LabError(f"ablation '{where}': unknown key 'tune.{unknown[0]}'. Valid keys: "
                       f"{', '.join(sorted(TUNE_KEYS))}.")
    space = parse_space(raw["space"], "tune.space")
    if any(isinstance(e, Choice) and e.arms for e in space):
        raise LabError(f"ablation '{where}': tune.space takes ranges and value lists, not arms.")
    for e in space:
        if isinstance(e, Range) and e.log and e.low <= 0:
            raise LabError(f"ablation '{where}': tune.space.{e.key} is log-scaled, so low must be "
                           f"positive (got {e.low}).")
    tseeds = raw.get("seeds", [100])
    tseeds = [tseeds] if isinstance(tseeds, int) else tseeds
    if not isinstance(tseeds, list) or not tseeds or not all(isinstance(x, int) for x in tseeds):
        raise LabError(f"ablation '{where}': tune.seeds must be a non-empty list of integers.")
    shared = sorted(set(tseeds) & set(seeds))
    if shared:
        raise LabError(f"ablation '{where}': tune.seeds and seeds share {shared}; tuning seeds must "
                       "be disjoint from the measured seeds (e.g. tune.seeds: [100]).")
    points, budget = raw.get("points", 5), raw.get("budget", 1.0)
    if not isinstance(points, int) or points < 2:
        raise LabError(f"ablation '{where}': tune.points must be an integer >= 2, got {points!r}.")
    if not isinstance(budget, int | float) or not 0 < budget <= 1:
        raise LabError(f"ablation '{where}': tune.budget is a fraction of train.steps in (0, 1], "
                       f"got {budget!r}.")
    pruner = str(raw.get("pruner", "successive_halving"))
    if pruner not in ("none", "successive_halving"):
        raise LabError(f"ablation '{where}': tune.pruner must be none or successive_halving, "
                       f"got {pruner!r}.")
    return TuneSpec(space, raw["space"], points, tseeds, float(budget), pruner)
