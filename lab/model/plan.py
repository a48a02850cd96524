"""StackPlan: which block runs at each step of depth, and at what width.

A plan is data, computed by pure functions from the model config; one executor
(:class:`lab.model.stack.Stack`) runs every plan, so the three families share every line of
the forward pass. Block ids index the unique blocks (``*`` = shared weights)::

    uniform, 4 layers              0 1 2 3
    looped, band [1, 2], r = 3     0 | 1* 2* 1* 2* 1* 2* | 3
    banded, wide_middle x2         widths 64 128 128 64

A plan is ``prelude + core * r + coda``; a uniform or banded stack is all prelude. A looped
plan runs its loops serially (loop l+1 of a token after its loop l) or in parallel
(``loop_mode="parallel"``, the Parallel Loop Transformer: see :mod:`lab.model.parallel`);
the order of blocks, and so the FLOPs, are the same either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from lab.config import ModelConfig
from lab.errors import ConfigError

EMBED = -1  # pseudo block id of the token embedding, for width transitions


@dataclass(frozen=True)
class ParallelSpec:
    """The switchable parts of parallel looping (see :mod:`lab.model.parallel`)."""

    shift: bool = True  # cross-loop shift: loop l+1 at t reads loop l at t-1
    shared_kv: bool = True  # later loops attend to the first loop's keys/values
    gswa: bool = True  # gated sliding-window attention over a later loop's own keys/values
    window: int = 16


@dataclass(frozen=True)
class StackPlan:
    family: str
    widths: tuple[int, ...]  # residual width of each unique block
    hidden: tuple[int, ...]  # MLP hidden size of each unique block
    n_heads: int
    prelude: tuple[int, ...]
    core: tuple[int, ...]
    coda: tuple[int, ...]
    loops: int
    resize: str = "linear"
    injection: str = "none"
    loop_mode: str = "serial"  # "serial" | "parallel"
    parallel: ParallelSpec = ParallelSpec()
    # The recipe: where positions come from ("rope" | "learned" | "none") and whether the
    # output head shares the token embedding's weights.
    positions: str = "learned"
    rope_base: float = 10000.0
    tied: bool = False

    @property
    def n_blocks(self) -> int:
        return len(self.widths)

    def order(self, loops: int | None = None) -> tuple[int, ...]:
        r = self.loops if loops is None else loops
        return self.prelude + self.core * r + self.coda

    def effective_depth(self, loops: int | None = None) -> int:
        return len(self.order(loops))

    @property
    def looped(self) -> bool:
        return bool(self.core)

    @property
    def gated(self) -> bool:
        """Whether the core blocks own a G-SWA gate (parallel mode with plt_gswa)."""
        return self.looped and self.loop_mode == "parallel" and self.parallel.gswa

    @property
    def embed_width(self) -> int:
        return self.widths[self.order(1)[0]]

    @property
    def out_width(self) -> int:
        return self.widths[self.order(1)[-1]]

    def width_of(self, block: int) -> int:
        return self.embed_width if block == EMBED else self.widths[block]

    def transitions(self) -> list[tuple[int, int]]:
        """Every (from, to) pair of consecutive blocks that can occur, whatever the loop count.

        Loop count 2 shows every kind of step (into the core, core to core, out of it); the
        first core block after the prelude is also the target of input injection.
        """
        seq = (EMBED, *self.order(2 if self.core else 1))
        pairs = {(a, b) for a, b in zip(seq, seq[1:], strict=False)}
        if self.core and self.injection != "none":
            src = self.prelude[-1] if self.prelude else EMBED
            pairs.add((src, self.core[0]))
        return sorted(pairs)

    def resized_transitions(self) -> list[tuple[int, int]]:
        return [(a, b) for a, b in self.transitions() if self.width_of(a) != self.width_of(b)]

    def describe(self, loops: int | None = None) -> str:
        r = self.loops if loops is None else loops
        parts = [" ".join(map(str, self.prelude))] if self.prelude else []
        if self.core:
            core = " ".join(f"{b}*" for b in self.core)
            parts.append(f"({core}) x{r}")
        if self.coda:
            parts.append(" ".join(map(str, self.coda)))
        return " | ".join(parts)


# --------------------------------------------------------------------------------------------
# Pure helpers


def default_band(n_layers: int) -> tuple[int, int]:
    return (1, n_layers - 2) if n_layers >= 3 else (0, n_layers - 1)


def resolve_band(cfg: ModelConfig) -> tuple[int, int]:
    if cfg.band is None:
        return default_band(cfg.n_layers)
    band = list(cfg.band)
    if len(band) != 2:
        raise ConfigError("model.band", f"must be [first, last], got {band}.")
    a, b = int(band[0]), int(band[1])
    if not 0 <= a <= b <= cfg.n_layers - 1:
        raise ConfigError(
            "model.band",
            f"[{a}, {b}] lies outside the stack of model.n_layers={cfg.n_layers} layers; "
            f"valid bands are [first, last] with 0 <= first <= last <= {cfg.n_layers - 1}.",
        )
    return a, b


def _round_width(w: float, multiple: int) -> int:
    return max(multiple, int(round(w / multiple)) * multiple)


def width_unit(cfg: ModelConfig) -> int:
    """What every width is a multiple of: the head count, twice that with rotary positions
    (which rotate pairs of a head's dimensions)."""
    return cfg.n_heads * (2 if cfg.positions == "rope" else 1)


def profile_widths(cfg: ModelConfig) -> tuple[int, ...]:
    """Per-layer widths from the named profile (named profiles round to a width_unit)."""
    L, d, f, h = cfg.n_layers, cfg.d_model, cfg.width_factor, cfg.n_heads
    u = width_unit(cfg)
    a, b = resolve_band(cfg)
    in_band = [a <= i <= b for i in range(L)]
    p = cfg.width_profile
    if cfg.widths is not None and p != "explicit":
        raise ConfigError(
            "model.widths", f"is only used with model.width_profile=explicit (profile is '{p}')."
        )
    if p == "uniform":
        widths = [d] * L
    elif p == "wide_middle":
        widths = [_round_width(d * f, u) if m else d for m in in_band]
    elif p == "narrow_middle":
        widths = [_round_width(d / f, u) if m else d for m in in_band]
    elif p == "wide_ends":
        widths = [d if m else _round_width(d * f, u) for m in in_band]
    elif p == "explicit":
        if cfg.widths is None:
            raise ConfigError(
                "model.widths", "model.width_profile=explicit needs a list of widths, one per layer."
            )
        widths = [int(w) for w in cfg.widths]
        if len(widths) != L:
            raise ConfigError(
                "model.widths",
                f"has {len(widths)} entries but model.n_layers={L}; give one width per layer.",
            )
    else:  # unreachable: the schema restricts the profile names
        raise ConfigError("model.width_profile", f"unknown profile '{p}'.")
    for i, w in enumerate(widths):
        if w < 1 or w % h:
            raise ConfigError(
                "model.widths" if p == "explicit" else "model.n_heads",
                f"layer {i} has width {w}, which model.n_heads={h} does not divide; "
                f"widths must be positive multiples of the head count.",
            )
    return tuple(widths)


def _hidden(widths: tuple[int, ...], ratio: float) -> tuple[int, ...]:
    return tuple(max(1, int(round(ratio * w))) for w in widths)


# --------------------------------------------------------------------------------------------
# Family builders: the registry. Each checks the knobs that do not apply to it.


def _single_pass(cfg: ModelConfig, family: str) -> None:
    if cfg.loops != 1:
        raise ConfigError(
            "model.loops",
            f"is {cfg.loops}, but family '{family}' runs each layer once; "
            "use model.family=looped to loop the band.",
        )
    if cfg.supervision != "final":
        raise ConfigError(
            "model.supervision", f"'{cfg.supervision}' needs model.family=looped."
        )
    if cfg.loop_mode != "serial":
        raise ConfigError(
            "model.loop_mode", f"'{cfg.loop_mode}' needs model.family=looped (family '{family}' "
            "has no loops)."
        )
    if cfg.exit != "none":
        raise ConfigError(
            "model.exit", f"'{cfg.exit}' (adaptive exit over loops) needs model.family=looped."
        )


def recipe(cfg: ModelConfig, widths: tuple[int, ...], ends: tuple[int, int]) -> dict:
    """The plan's position and embedding keys, checked against its widths: rotary positions
    rotate pairs of a head's dimensions, and a tied head needs the embedding's width."""
    if cfg.positions == "rope":
        odd = sorted({w // cfg.n_heads for w in widths if (w // cfg.n_heads) % 2})
        if odd:
            raise ConfigError(
                "model.positions",
                f"'rope' rotates pairs of a head's dimensions, but a head here has {odd[0]} "
                f"(width / model.n_heads={cfg.n_heads}); use widths whose head size is even, "
                "or model.positions=learned.",
            )
    first, last = (widths[i] for i in ends)
    if cfg.tie_embeddings and first != last:
        raise ConfigError(
            "model.tie_embeddings",
            f"a tied output head reuses the token embedding ({first} wide), but the last "
            f"layer is {last} wide; set model.tie_embeddings=false or give the first and "
            "last layers one width.",
        )
    return {"positions": cfg.positions, "rope_base": float(cfg.rope_base),
            "tied": bool(cfg.tie_embeddings)}


def _single_pass_plan(cfg: ModelConfig, family: str) -> StackPlan:
    _single_pass(cfg, family)
    widths = profile_widths(cfg)
    return StackPlan(
        family=family,
        widths=widths,
        hidden=_hidden(widths, cfg.mlp_ratio),
        n_heads=cfg.n_heads,
        prelude=tuple(range(cfg.n_layers)),
        core=(),
        coda=(),
        loops=1,
        resize=cfg.resize,
        **recipe(cfg, widths, (0, cfg.n_layers - 1)),
    )


def uniform_plan(cfg: ModelConfig) -> StackPlan:
    if cfg.width_profile != "uniform":
        raise ConfigError(
            "model.width_profile",
            f"is '{cfg.width_profile}', but family 'uniform' has one width; "
            "use model.family=banded (or looped) for a width profile.",
        )
    return _single_pass_plan(cfg, "uniform")


def banded_plan(cfg: ModelConfig) -> StackPlan:
    return _single_pass_plan(cfg, "banded")


def looped_plan(cfg: ModelConfig) -> StackPlan:
    a, b = resolve_band(cfg)
    widths = profile_widths(cfg)
    if cfg.resize == "restore":
        raise ConfigError(
            "model.resize",
            "'restore' carries the dimensions a narrow layer drops along one pass of distinct "
            "layers; a looped band revisits its blocks, so use model.resize=linear or pad with "
            "model.family=looped (or family uniform / banded for restore).",
        )
    if cfg.bptt_loops is not None and cfg.loop_sampling == "fixed" and cfg.bptt_loops > cfg.loops:
        raise ConfigError(
            "model.bptt_loops",
            f"is {cfg.bptt_loops} but the model runs model.loops={cfg.loops} loops; "
            f"use 1..{cfg.loops} (or null for all).",
        )
    return StackPlan(
        family="looped",
        widths=widths,
        hidden=_hidden(widths, cfg.mlp_ratio),
        n_heads=cfg.n_heads,
        prelude=tuple(range(a)),
        core=tuple(range(a, b + 1)),
        coda=tuple(range(b + 1, cfg.n_layers)),
        loops=cfg.loops,
        resize=cfg.resize,
        injection=cfg.injection,
        loop_mode=cfg.loop_mode,
        parallel=ParallelSpec(
            shift=cfg.plt_shift,
            shared_kv=cfg.plt_shared_kv,
            gswa=cfg.plt_gswa,
            window=cfg.plt_window,
        ),
        **recipe(cfg, widths, (0, cfg.n_layers - 1)),
    )


FAMILIES: dict[str, Callable[[ModelConfig], StackPlan]] = {
    "uniform": uniform_plan,
    "looped": looped_plan,
    "banded": banded_plan,
}


def make_plan(cfg: ModelConfig) -> StackPlan:
    try:
        builder = FAMILIES[cfg.family]
    except KeyError:
        raise ConfigError(
            "model.family", f"unknown family '{cfg.family}'; valid: {', '.join(FAMILIES)}."
        ) from None
    return builder(cfg)


# --------------------------------------------------------------------------------------------
# Unique parameters, by formula (tests check it against the built module).


def block_params(width: int, hidden: int) -> int:
    # 2 LayerNorms (weight + bias), q/k/v/o projections, two MLP matrices; no linear biases.
    return 4 * width + 4 * width * width + 2 * width * hidden


def gate_params(width: int, n_heads: int) -> int:
    # G-SWA gate: one weight vector over the head dimension and one bias per head.
    return width + n_heads


def count_params(plan: StackPlan, vocab_size: int, max_len: int) -> int:
    n = sum(block_params(w, h) for w, h in zip(plan.widths, plan.hidden, strict=True))
    if plan.gated:
        n += sum(gate_params(plan.widths[b], plan.n_heads) for b in plan.core)
    n += vocab_size * plan.embed_width  # token embedding
    if plan.positions == "learned":
        n += max_len * plan.embed_width  # the positional table (rotary positions have none)
    n += 2 * plan.out_width  # final norm
    if not plan.tied:
        n += plan.out_width * vocab_size  # the head (tied: the embedding's weights)
    if plan.resize == "linear":
        n += sum(plan.width_of(a) * plan.width_of(b) for a, b in plan.resized_transitions())
    return n


# --------------------------------------------------------------------------------------------
# Parameter matching: same unique parameters, different allocation.


@dataclass(frozen=True)
class Match:
    d_model: int
    mlp_ratio: float
    params: int
    target: int

    @property
    def rel_error(self) -> float:
        return abs(self.params - self.target) / self.target


def match_params(cfg: ModelConfig, vocab_size: int, max_len: int) -> Match:
    """Choose d_model (then, if needed, mlp_ratio) so unique params match the reference.

    The reference is this config with the keys in ``cfg.match_params`` replaced. Widths move
    in steps of n_heads, which at small widths changes parameters by more than the
    tolerance, so a second stage tunes the MLP ratio (the same for every block, so the
    allocation along depth is still the profile's).
    """
    ref_keys = dict(cfg.match_params or {})
    known = set(ModelConfig.__dataclass_fields__)
    bad = [k for k in ref_keys if k not in known or k in ("match_params", "match_tolerance")]
    if bad:
        raise ConfigError(
            f"model.match_params.{bad[0]}",
            f"is not a model key that defines a reference; valid: {', '.join(sorted(known))}.",
        )
    ref_cfg = replace(cfg, match_params=None, **ref_keys)
    target = count_params(make_plan(ref_cfg), vocab_size, max_len)

    def params_at(d: int, ratio: float) -> int:
        return count_params(make_plan(replace(cfg, d_model=d, mlp_ratio=ratio, match_params=None)),
                            vocab_size, max_len)

    h = width_unit(cfg)  # widths move in these steps (rotary positions need even head sizes)
    candidates = range(h, 8 * max(cfg.d_model, ref_cfg.d_model) + h, h)
    best_d = min(candidates, key=lambda d: (abs(params_at(d, cfg.mlp_ratio) - target), d))
    best = Match(best_d, cfg.mlp_ratio, params_at(best_d, cfg.mlp_ratio), target)
    if best.rel_error > cfg.match_tolerance / 2:
        # Bisection on the MLP ratio at the two widths around the target.
        for d in (best_d, best_d - h, best_d + h):
            if d < h:
                continue
            lo, hi = 0.25, 16.0
            if not params_at(d, lo) <= target <= params_at(d, hi):
                continue
            for _ in range(40):
                mid = (lo + hi) / 2
                if params_at(d, mid) < target:
                    lo = mid
                else:
                    hi = mid
            for ratio in (lo, hi):
                m = Match(d, round(ratio, 4), params_at(d, round(ratio, 4)), target)
                if m.rel_error < best.rel_error:
                    best = m
    if best.rel_error > cfg.match_tolerance:
        raise ConfigError(
            "model.match_params",
            f"no width matches the reference's {target:,} unique parameters within "
            f"{cfg.match_tolerance:.0%} (closest: d_model={best.d_model}, "
            f"{best.params:,} parameters). Loosen model.match_tolerance or change the reference.",
        )
    return best


def check_loop_mode(loop_mode: str, causal: bool, task_name: str = "this task") -> None:
    """Parallel looping needs a causal task: refuse it with the key named."""
    if loop_mode == "parallel" and not causal:
        raise ConfigError(
            "model.loop_mode",
            f"'parallel' needs a causal task, but {task_name} is bidirectional "
            "(task.causal=false): the cross-loop shift feeds loop l+1 at position t with loop "
            "l at t-1, which only makes sense left to right.",
        )
