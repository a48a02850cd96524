"""The typed sections of an ablation file: ``analysis:`` and ``tune:``."""

from __future__ import annotations

import dataclasses
import math
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
    values, log-spaced where log: true; a log range must have at least 5 points at most 2x
    apart) on the tuning `seeds` (disjoint from the measured ones), scored on the task's
    "tune" split (never the reported validation split), at `budget` times the training steps.
    No point is pruned before it is compared with its neighbours (`pruner: none`; only a run
    that diverges stops early). The learning rate chosen is the vertex of a quadratic fit in
    log lr around the best point (lab.stats.lrfit); a best point at the grid's edge extends
    the grid on that side by one step, at most `extend` times per side. `share: arm` tunes one
    learning rate per arm (its settings run alternate grid points, and one parabola with an
    offset per setting is fitted to all of them): about half the tuning trials.
    """

    space: tuple  # parsed entries (Choice / Range)
    space_spec: dict
    points: int = 5
    seeds: list[int] = field(default_factory=lambda: [100])
    budget: float = 1.0
    pruner: str = "none"
    share: str = "setting"  # "setting" | "arm"
    extend: int = 2

    @property
    def keys(self) -> list[str]:
        return [e.key for e in self.space]

    @property
    def lr_range(self) -> Range | None:
        """The log-scaled range the vertex fit applies to (train.lr), if tuned."""
        for e in self.space:
            if isinstance(e, Range) and e.log and e.key == "train.lr":
                return e
        return None

    def step(self) -> float:
        """The grid's ratio between neighbouring learning rates (1.0 without a log range)."""
        r = self.lr_range
        if r is None:
            return 1.0
        return (r.high / r.low) ** (1 / (max(2, self.points) - 1))

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
        out = {"space": self.space_spec, "points": self.points, "seeds": self.seeds,
               "budget": self.budget, "pruner": self.pruner}
        # Keys added later are in the identity only when they differ from their default.
        if self.share != "setting":
            out["share"] = self.share
        if self.extend != 2:
            out["extend"] = self.extend
        return out


TUNE_KEYS = {"space", "points", "seeds", "budget", "pruner", "share", "extend"}
MAX_STEP = 2.0  # the largest ratio between neighbouring learning rates of a tuning grid


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
    pruner = str(raw.get("pruner", "none"))
    if pruner not in ("none", "successive_halving"):
        raise LabError(f"ablation '{where}': tune.pruner must be none or successive_halving, "
                       f"got {pruner!r}.")
    share = str(raw.get("share", "setting"))
    if share not in ("setting", "arm"):
        raise LabError(f"ablation '{where}': tune.share must be setting (one value per setting) "
                       f"or arm (one per arm, from a pooled fit), got {share!r}.")
    extend = raw.get("extend", 2)
    if not isinstance(extend, int) or isinstance(extend, bool) or not 0 <= extend <= 5:
        raise LabError(f"ablation '{where}': tune.extend is how many grid steps a best point at "
                       f"the edge may add on its side, 0 to 5; got {extend!r}.")
    spec = TuneSpec(space, raw["space"], points, tseeds, float(budget), pruner, share, extend)
    r = spec.lr_range
    if r is not None and (points < 5 or spec.step() > MAX_STEP * (1 + 1e-9)):
        need = max(5, 1 + math.ceil(math.log(r.high / r.low) / math.log(MAX_STEP) - 1e-9))
        raise LabError(
            f"ablation '{where}': tune.points={points} over train.lr [{r.low:g}, {r.high:g}] "
            f"gives {points} rates {spec.step():.2f}x apart; a learning rate is bracketed only "
            f"with at least 5 rates at most {MAX_STEP:g}x apart: use tune.points: {need} (or "
            "a narrower range).")
    return spec
