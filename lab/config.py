"""Typed configuration: dataclass defaults, then YAML files, then ``key=value`` overrides.

Layers are merged with OmegaConf onto the structured schema below, so an unknown key or a
value of the wrong type fails with the key named. Checks that need several keys at once
(heads dividing widths, a band inside the stack, ...) live in :func:`validate` and in the
plan builders of :mod:`lab.model.plan`; both raise :class:`~lab.errors.ConfigError`.

The ``task`` section is a free mapping whose ``name`` picks a task class; that class's own
``Config`` dataclass checks the remaining keys (see :mod:`lab.tasks`). Setting ``task.name``
in a layer starts the task section afresh, so ``task.name=word`` does not inherit the
pointer task's ``hops`` from the file below it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    GrammarParseError,
    InterpolationResolutionError,
    OmegaConfBaseException,
    ValidationError,
)

from lab.errors import ConfigError, LabError
from lab.yamlfile import read_yaml_mapping


@dataclass
class ModelConfig:
    # Which plan builder runs (lab.model.plan.FAMILIES): uniform | looped | banded.
    family: str = "uniform"
    d_model: int = 64
    n_heads: int = 4
    mlp_ratio: float = 4.0
    # Unique blocks. For `looped`, the band is the shared core, the layers before it the
    # prelude and the layers after it the coda.
    n_layers: int = 3
    # [first, last] layer index of the middle band (inclusive). Default: all layers but the
    # first and the last when n_layers >= 3, else the whole stack.
    band: list[int] | None = None
    # --- looped family -------------------------------------------------------------------
    loops: int = 1
    # Loop count at evaluation (test-time extrapolation); default: `loops`.
    eval_loops: int | None = None
    # "add": add the prelude output to the state before every loop after the first
    # (input injection, as in recurrent-depth models, Geiping et al. 2025).
    injection: Literal["none", "add"] = "none"
    # "every": average the loss over the readouts after every loop that carries gradient.
    supervision: Literal["final", "every"] = "final"
    # Backpropagate through only the last k loops (truncated BPTT); None = all loops.
    bptt_loops: int | None = None
    # Loop count per training step: fixed (= loops), uniform over loops_range, or Poisson
    # with mean `loops` clipped to loops_range.
    loop_sampling: Literal["fixed", "uniform", "poisson"] = "fixed"
    loops_range: list[int] | None = None
    # How the loops run (lab.model.parallel): "serial" (loop l+1 of a token after its loop l)
    # or "parallel" (Parallel Loop Transformer, Wu et al. 2025: loop l+1 of token t reads
    # loop l of token t-1, so at decode time all loops of a token run in one batched pass).
    # Causal tasks only.
    loop_mode: Literal["serial", "parallel"] = "serial"
    # Parallel mode, each part switchable for ablation:
    # cross-loop shift: loop l+1 at position t takes loop l's output at t-1 (+ the token's
    # prelude output); off: loop l's output at t, as in serial mode.
    plt_shift: bool = True
    # loops after the first attend to the first loop's keys/values instead of their own.
    plt_shared_kv: bool = True
    # gated sliding-window attention: later loops also attend to their own keys/values over
    # the last plt_window positions, mixed with the global attention by a per-head gate.
    plt_gswa: bool = True
    plt_window: int = 16
    # Adaptive exit at evaluation (serial mode): stop looping per token (causal tasks) or
    # per sequence once the relative update norm ("update_norm") or the KL divergence between
    # successive readouts ("kl") falls below exit_threshold, up to exit_max_loops loops
    # (default: the evaluation loop count). See Stack.adaptive.
    exit: Literal["none", "update_norm", "kl"] = "none"
    exit_threshold: float = 0.01
    exit_max_loops: int | None = None
    # --- width along depth ---------------------------------------------------------------
    width_profile: Literal["uniform", "wide_middle", "narrow_middle", "wide_ends", "explicit"] = (
        "uniform"
    )
    width_factor: float = 2.0
    widths: list[int] | None = None  # with width_profile=explicit: one width per layer
    # How the residual stream changes width between blocks: learned linear map, truncate /
    # zero-pad, or truncate / restore (parameter-free, as variable-width transformers do: the
    # dimensions a narrow layer drops come back, untouched, when the stream widens again; each
    # block's weights are initialised with std scaled by 1/sqrt(width); single-pass plans).
    resize: Literal["linear", "pad", "restore"] = "linear"
    # Model keys that define a reference model (relative to this one); when set, d_model
    # (and, for the last 2%, mlp_ratio) are solved so unique parameters match it.
    match_params: dict[str, Any] | None = None
    match_tolerance: float = 0.02
    dropout: float = 0.0
    # --- the recipe ----------------------------------------------------------------------
    # Where positions come from: rotary embeddings of queries and keys in every attention
    # call (rope; no table, any length), a learned absolute table added to the token
    # embedding (learned; the lab's recipe before RoPE, kept for comparison), or none (for
    # tasks that need no order).
    positions: Literal["rope", "learned", "none"] = "rope"
    rope_base: float = 10000.0
    # Share the token embedding with the output head (the first and last residual widths
    # must then be equal). Default from measurement: see README, "Calibration".
    tie_embeddings: bool = True


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    # After warm-up: cosine decay to min_lr_ratio; constant; or warm-up-stable-decay (wsd):
    # constant, then a linear decay to min_lr_ratio over the last decay_fraction of the steps.
    schedule: Literal["cosine", "constant", "wsd"] = "cosine"
    decay_fraction: float = 0.2
    # Budgets as fractions of `steps` (the largest is 1.0), each a real decayed model: with the
    # wsd schedule one run trains the stable phase and, at each smaller budget B, branches off
    # a copy that decays over the last decay_fraction of B steps and is evaluated (a branch
    # equals a run of `steps=B`; lab.train.budgets). None: the full budget only.
    budgets: list[float] | None = None
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # Threads per process (torch.set_num_threads). Results are bit-identical only at the
    # same thread count.
    threads: int = 1
    accelerator: str = "auto"
    # "auto": bf16-mixed on a GPU that supports it, 32-true otherwise.
    precision: str = "auto"
    devices: int = 1
    strategy: str = "auto"
    trials_per_gpu: int = 1  # sweeps on GPUs: trials sharing one GPU (lab.study.schedule)
    deterministic: bool = True
    val_every: int = 500
    val_size: int = 1024
    log_every: int = 50
    # Checkpoint every N steps into the run directory (0: only at the end).
    ckpt_every: int = 500
    compile: bool = False
    progress: bool = True


@dataclass
class EvalConfig:
    # Per-loop / per-layer readouts, update norms and readout drift on the validation set.
    diagnostics: bool = True
    # Loop counts for test-time extrapolation of looped models; None = 1..2*loops.
    extrapolate: list[int] | None = None
    # Measure cost (throughput, decode latency, KV cache, peak memory) after training.
    cost: bool = True
    decode_tokens: int = 32
    # Thresholds for the adaptive-exit curve (accuracy vs mean loops used,
    # lab.eval.adaptive.exit_curve) with criterion model.exit; None = the default thresholds
    # (of model.exit's criterion, or of both criteria when model.exit is none).
    exit_thresholds: list[float] | None = None
    # A difficulty value counts as solved when its accuracy reaches this (tasks with
    # difficulty labels: val/solved_difficulty, the largest value solved).
    solve_threshold: float = 0.95


@dataclass
class LabConfig:
    # Run name: runs/<name>/version_<n>. None = derived from task and family.
    name: str | None = None
    seed: int = 0
    # Added to `seed` for the model's initialization and the data stream: the same setting on
    # other seeds (an A/A control: two settings that differ only in this are one model on
    # independent seed streams). Studies sweep `seed`; this shifts a setting's every seed.
    seed_offset: int = 0
    resume: bool = False
    out_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: dict[str, Any] = field(default_factory=lambda: {"name": "pointer"})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------------------------
# Loading


def _schema() -> DictConfig:
    return OmegaConf.structured(LabConfig)


def _describe_keys(node: Any) -> list[str]:
    if isinstance(node, DictConfig):
        return [str(k) for k in node]
    return []


def _translate(err: OmegaConfBaseException, schema: DictConfig, source: str) -> ConfigError:
    """Turn an OmegaConf exception into one readable ConfigError naming the key."""
    key = getattr(err, "full_key", None) or "?"
    where = f" (from {source})" if source else ""
    if isinstance(err, ConfigKeyError | ConfigAttributeError):
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(schema, parent) if parent else schema
        valid = _describe_keys(node)
        hint = difflib.get_close_matches(leaf, valid, n=1)
        msg = f"unknown key{where}."
        if hint:
            msg += f" Did you mean '{(parent + '.') if parent else ''}{hint[0]}'?"
        if valid:
            msg += f" Valid keys{(' under ' + repr(parent)) if parent else ''}: {', '.join(valid)}."
        return ConfigError(key, msg)
    if isinstance(err, ValidationError):
        detail = str(err.msg).split("\n")[0]
        return ConfigError(key, f"invalid value{where}: {detail}")
    if isinstance(err, GrammarParseError | InterpolationResolutionError):
        return ConfigError(key, f"cannot parse value{where}: {str(err.msg).splitlines()[0]}")
    return ConfigError(key, f"{str(err).splitlines()[0]}{where}")


def _load_yaml(path: str | os.PathLike) -> DictConfig:
    return OmegaConf.create(read_yaml_mapping(path))


def parse_overrides(overrides: list[str]) -> DictConfig:
    """Parse ``key=value`` strings (values are YAML: 3, 0.1, true, [1, 2], null)."""
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise LabError(
            f"override '{bad[0]}' is not of the form key=value "
            "(for example model.loops=3 or task.hops=8)."
        )
    for o in overrides:
        try:
            OmegaConf.from_dotlist([o])
        except (OmegaConfBaseException, yaml.YAMLError) as e:
            key = o.partition("=")[0]
            detail = (getattr(e, "problem", None) or str(e).splitlines()[0]).strip()
            raise LabError(
                f"override '{key}': its value is not valid YAML ({detail}); quote it or fix the "
                "brackets, e.g. model.band=[0,1], or quote values that start with * & ! % @ or `"
                " (a glob such as task.include='\"*.txt\"')."
            ) from None
    return OmegaConf.from_dotlist(list(overrides))


def _merge_layer(cfg: DictConfig, layer: DictConfig, schema: DictConfig, source: str,
                 sources: dict[str, str] | None = None) -> DictConfig:
    # A layer that names a different task starts the task section afresh.
    new_task = OmegaConf.select(layer, "task.name", default=None)
    if new_task is not None and new_task != OmegaConf.select(cfg, "task.name", default=None):
        cfg.task = OmegaConf.create({"name": new_task})
    try:
        return OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", None) or "")
        raise _translate(e, schema, (sources or {}).get(key, source)) from None


# Model settings a task needs in place of the defaults, under every file, layer and override
# (what a config sets wins). The bidirectional pointer task addresses nodes by absolute
# position: rotary + tied leave 4 layers at chance, learned + untied reach 60% (README).
TASK_RECIPES: dict[tuple[str, bool], dict[str, Any]] = {
    ("pointer", False): {"model": {"positions": "learned", "tie_embeddings": False}},
}


def task_recipe(task: Any) -> dict[str, Any] | None:
    """The model settings `task` (a task config mapping) needs in place of the defaults."""
    return TASK_RECIPES.get((str(task.get("name")), bool(task.get("causal", False))))


def load_config(
    files: list[str | os.PathLike] | None = None,
    overrides: list[str] | None = None,
    layers: list[dict | DictConfig | tuple[str, dict | DictConfig]] | None = None,
    sources: dict[str, str] | None = None,
) -> LabConfig:
    """Defaults, the task's recipe (TASK_RECIPES), then each YAML file, then each extra
    mapping layer, then overrides.

    A layer may be (source, mapping); `sources` names where an override key came from when
    not the command line (an ablation's space): an error then says where the value was set."""
    schema = _schema()
    loaded = [_load_yaml(f) for f in files or []]

    def merged(base: DictConfig) -> DictConfig:
        cfg = base
        for f, data in zip(files or [], loaded, strict=True):
            cfg = _merge_layer(cfg, data, schema, str(f))
        for layer in layers or []:
            source, layer = layer if isinstance(layer, tuple) else ("", layer)
            cfg = _merge_layer(cfg, OmegaConf.create(layer), schema, source)
        if overrides:
            cfg = _merge_layer(cfg, parse_overrides(overrides), schema, "command line", sources)
        return cfg

    cfg = merged(schema.copy())
    recipe = task_recipe(cfg.task)
    if recipe:  # under every file and override: what a config sets itself still wins
        cfg = merged(_merge_layer(schema.copy(), OmegaConf.create(recipe), schema, "task recipe"))
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise _translate(e, schema, "") from None
    assert isinstance(obj, LabConfig)
    validate(obj)
    return obj


def run_seed(cfg: LabConfig) -> int:
    """The seed a run draws its initialization and data from: seed + seed_offset."""
    return cfg.seed + cfg.seed_offset


def to_dict(cfg: LabConfig) -> dict[str, Any]:
    """Plain, YAML-serialisable dict of a config."""
    out = dataclasses.asdict(cfg)
    return _plain(out)


def _plain(x: Any) -> Any:
    if isinstance(x, DictConfig | ListConfig):
        return OmegaConf.to_container(x, resolve=True)
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def to_yaml(cfg: LabConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'loops': 2}} -> {'model.loops': 2}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------------------------
# Validation of single keys and simple relations; structural checks live in the plan builders.


def _need(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(key, msg)


# The most loops a config may ask for (training, evaluation, adaptive exit); test-time
# extrapolation may go to twice as many. Evaluation cost grows with the square of the loop
# count (every loop count up to r' is evaluated), so larger values would run for hours.
MAX_LOOPS = 64
SEED_MAX = 2**32 - 1  # numpy's and Lightning's limit


def validate(cfg: LabConfig) -> None:
    m, t, e = cfg.model, cfg.train, cfg.eval
    _need(0 <= cfg.seed <= SEED_MAX, "seed", f"must be in [0, {SEED_MAX}], got {cfg.seed}.")
    _need(cfg.seed_offset >= 0 and cfg.seed + cfg.seed_offset <= SEED_MAX, "seed_offset",
          f"must be >= 0 with seed + seed_offset <= {SEED_MAX}, got {cfg.seed_offset}.")
    for key, value in (("model.loops", m.loops), ("model.eval_loops", m.eval_loops),
                       ("model.exit_max_loops", m.exit_max_loops),
                       ("model.loops_range", max(m.loops_range or [0]))):
        _need(value is None or value <= MAX_LOOPS, key,
              f"{value} loops is over the limit of {MAX_LOOPS} (evaluation cost grows with the "
              "square of the loop count).")
    if e.extrapolate is not None:
        _need(all(int(r) <= 2 * MAX_LOOPS for r in e.extrapolate), "eval.extrapolate",
              f"loop counts must be at most {2 * MAX_LOOPS}, got {max(e.extrapolate)}.")
    _need(math.isfinite(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay",
          f"must be a finite number >= 0, got {t.weight_decay}.")
    _need(m.d_model >= 1, "model.d_model", f"must be a positive integer, got {m.d_model}.")
    _need(m.n_heads >= 1, "model.n_heads", f"must be a positive integer, got {m.n_heads}.")
    _need(
        m.d_model % m.n_heads == 0,
        "model.n_heads",
        f"{m.n_heads} heads do not divide model.d_model={m.d_model}; "
        f"use a head count that divides it (e.g. {_divisors(m.d_model)}).",
    )
    _need(m.mlp_ratio > 0, "model.mlp_ratio", f"must be > 0, got {m.mlp_ratio}.")
    _need(m.n_layers >= 1, "model.n_layers", f"must be at least 1, got {m.n_layers}.")
    _need(
        m.loops >= 1,
        "model.loops",
        f"must be at least 1 (1 = the band runs once), got {m.loops}.",
    )
    if m.eval_loops is not None:
        _need(m.eval_loops >= 1, "model.eval_loops", f"must be at least 1, got {m.eval_loops}.")
    if m.bptt_loops is not None:
        _need(m.bptt_loops >= 1, "model.bptt_loops", f"must be at least 1, got {m.bptt_loops}.")
    if m.loops_range is not None:
        _need(
            len(m.loops_range) == 2 and 1 <= m.loops_range[0] <= m.loops_range[1],
            "model.loops_range",
            f"must be [low, high] with 1 <= low <= high, got {list(m.loops_range)}.",
        )
    if m.loop_sampling == "uniform":
        _need(
            m.loops_range is not None,
            "model.loops_range",
            "model.loop_sampling=uniform needs model.loops_range=[low, high].",
        )
    _need(m.plt_window >= 1, "model.plt_window", f"must be at least 1, got {m.plt_window}.")
    _need(
        m.exit_threshold >= 0,
        "model.exit_threshold",
        f"must be >= 0 (0 = never exit early), got {m.exit_threshold}.",
    )
    if m.exit_max_loops is not None:
        _need(m.exit_max_loops >= 1, "model.exit_max_loops",
              f"must be at least 1, got {m.exit_max_loops}.")
    _need(
        m.exit == "none" or m.loop_mode == "serial",
        "model.exit",
        f"'{m.exit}' needs model.loop_mode=serial: in parallel mode a token's later loops run "
        "before its earlier ones have finished for the next token, so there is no point at "
        "which a token can stop.",
    )
    _need(m.rope_base > 1, "model.rope_base", f"must be > 1, got {m.rope_base}.")
    _need(m.width_factor > 0, "model.width_factor", f"must be > 0, got {m.width_factor}.")
    _need(0 <= m.dropout < 1, "model.dropout", f"must be in [0, 1), got {m.dropout}.")
    _need(
        0 < m.match_tolerance < 1,
        "model.match_tolerance",
        f"must be a fraction in (0, 1), got {m.match_tolerance}.",
    )
    _need(t.steps >= 1, "train.steps", f"must be at least 1, got {t.steps}.")
    _need(t.batch_size >= 1, "train.batch_size", f"must be at least 1, got {t.batch_size}.")
    _need(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}.")
    _need(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", f"must be in [0, 1], got {t.min_lr_ratio}.")
    _need(t.warmup >= 0, "train.warmup", f"must be >= 0, got {t.warmup}.")
    _need(0 < t.decay_fraction <= 1, "train.decay_fraction",
          f"must be in (0, 1], got {t.decay_fraction}.")
    if t.budgets is not None:
        check_budgets(t)
    _need(t.threads >= 1, "train.threads", f"must be at least 1, got {t.threads}.")
    _need(t.val_every >= 1, "train.val_every", f"must be at least 1, got {t.val_every}.")
    _need(t.val_size >= 1, "train.val_size", f"must be at least 1, got {t.val_size}.")
    _need(t.log_every >= 1, "train.log_every", f"must be at least 1, got {t.log_every}.")
    _need(t.ckpt_every >= 0, "train.ckpt_every", f"must be >= 0, got {t.ckpt_every}.")
    _need(t.grad_clip >= 0, "train.grad_clip", f"must be >= 0 (0 = off), got {t.grad_clip}.")
    valid_precisions = {"auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true"}
    _need(
        t.precision in valid_precisions,
        "train.precision",
        f"'{t.precision}' is not one of {sorted(valid_precisions)}.",
    )
    _need(e.decode_tokens >= 1, "eval.decode_tokens", f"must be at least 1, got {e.decode_tokens}.")
    if e.exit_thresholds is not None:
        _need(
            len(e.exit_thresholds) > 0 and all(float(v) >= 0 for v in e.exit_thresholds),
            "eval.exit_thresholds",
            f"must be a non-empty list of thresholds >= 0, got {list(e.exit_thresholds)}.",
        )
    if e.extrapolate is not None:
        _need(
            len(e.extrapolate) > 0 and all(int(r) >= 1 for r in e.extrapolate),
            "eval.extrapolate",
            f"must be a non-empty list of loop counts >= 1, got {list(e.extrapolate)}.",
        )
    _need(
        isinstance(cfg.task, dict) and isinstance(cfg.task.get("name"), str),
        "task.name",
        "every config needs a task name (a registry name such as 'pointer', or an import path "
        "'package.module:ClassName').",
    )


def check_budgets(t: TrainConfig) -> None:
    """train.budgets: increasing fractions in (0, 1] ending at 1.0; with more than one, the wsd
    schedule, and every branch's decay starting after the warm-up."""
    b = [float(x) for x in t.budgets or []]
    _need(bool(b) and all(0 < x <= 1 for x in b) and all(x < y for x, y in zip(b, b[1:], strict=False)),
          "train.budgets", f"must be increasing fractions of train.steps in (0, 1], e.g. "
          f"[0.25, 0.5, 1.0]; got {b}.")
    _need(b[-1] == 1.0, "train.budgets",
          f"must end at 1.0 (train.steps is the largest budget); got {b}.")
    if len(b) > 1:
        _need(t.schedule == "wsd", "train.budgets",
              f"{b} branches decayed models off one stable run, which needs "
              f"train.schedule=wsd (warm-up, stable, decay); the schedule is '{t.schedule}'.")
        for x in b[:-1]:
            steps = budget_steps(t.steps, x)
            start = decay_start(steps, t.decay_fraction)
            _need(start >= t.warmup and start > 0, "train.budgets",
                  f"the budget {x:g} ({steps} steps) would start decaying at step {start}, "
                  f"before the warm-up ends (train.warmup={t.warmup}); use larger budgets or "
                  f"more train.steps.")


def budget_steps(steps: int, fraction: float) -> int:
    """Training steps of a budget given as a fraction of train.steps."""
    return max(1, round(fraction * steps))


def decay_start(steps: int, decay_fraction: float) -> int:
    """The step at which the wsd schedule of a `steps`-step run starts its decay."""
    return steps - max(1, round(decay_fraction * steps))


def _divisors(n: int) -> str:
    ds = [d for d in range(1, min(n, 16) + 1) if n % d == 0]
    return ", ".join(map(str, ds))
