"""Ablation files: the search space, settings x seeds, and the study's identity.

An ablation file (``ablations/*.yaml``) names a base config, a search space over any config
key, the seeds, the objective and the sampler::

    name: loops
    base: [configs/looped.yaml]         # config files, then `overrides`, then the space
    overrides: {train.steps: 2000}
    space:
      model.family:                     # a choice whose values open sub-spaces (arms)
        looped:  {model.loops: [1, 2, 3, 4, 6]}
        uniform: {model.n_layers: [1, 2, 3, 4, 6]}
    axis: {looped: model.loops, uniform: model.n_layers}
    seeds: [0, 1, 2]
    objective: val/acc_token
    direction: maximize
    sampler: grid                       # grid (every setting x seed) | tpe (n_trials samples)
    analysis: {primary: looped, min_gain: 0.01, confidence: 0.95}

Space entries: ``key: [v1, v2]`` (categorical), ``key: {low: a, high: b, step: s, log: false}``
(int or float range; a grid needs a step), ``key: {value: {sub-space}, ...}`` (arms).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab.config import LabConfig, flatten, load_config, parse_overrides, to_dict
from lab.errors import ConfigError, LabError
from lab.provenance import REPO
from lab.study.attrs import SEED_HIGH, SEED_LOW, decode
from lab.study.schedule import check_workers
from lab.study.sections import (
    AnalysisSpec,
    ContextCosts,
    TuneSpec,
    parse_analysis,
    parse_tune,
)
from lab.study.space import NAMED_BY_KEY, Choice, Setting, expand, fmt_value, parse_space, short_key
from lab.yamlfile import read_yaml_mapping

ABLATION_KEYS = {
    "name", "description", "base", "overrides", "space", "axis", "seeds", "objective",
    "direction", "sampler", "n_trials", "pruner", "storage", "study", "workers", "analysis",
    "question", "tune", "trial_timeout",
}

STUDY_KEYS = {"storage", "study", "seeds", "workers", "n_trials", "sampler", "pruner",
              "objective", "direction", "trial_timeout"}


OBJECTIVES = {
    f"{split}/{metric}" for split in ("val", "ood")
    for metric in ("acc_token", "acc_seq", "loss", "bpb", "solved_difficulty", "auc_difficulty")
}
MINIMIZED = ("loss", "bpb")  # objectives whose default direction is minimize

# Config keys left out of the study's identity, each with the reason it cannot change a
# trial's result. Every other config key is part of the identity (tests/test_robust.py walks
# the config dataclasses to keep it so): a study never mixes trials run differently.
NON_IDENTITY_KEYS = {
    "seed": "the sweep sets it per trial (and records it as a parameter)",
    "name": "the sweep names each run after its study and trial",
    "resume": "the sweep sets it on retries, which resume from their checkpoint",
    "out_dir": "where runs are written (the sweep passes its runs directory)",
    "train.threads": "the sweep sets it per worker and records it on each trial (lab.threads)",
    "train.progress": "display only; the sweep turns it off",
    "train.trials_per_gpu": "how many trials share a GPU at a time: scheduling, not results",
}
# Keys added to the identity after studies were made: the value each had then (the stored
# fingerprint of an older study is migrated when these hold these values, see
# lab.study.identity.stored_identity).
ADDED_IDENTITY_KEYS = {
    "train.accelerator": "auto", "train.devices": 1, "train.strategy": "auto",
    "train.precision": "auto",
    "train.decay_fraction": 0.2,  # the wsd schedule's decay (unused by cosine and constant)
    "eval.solve_threshold": 0.95,  # per-difficulty summaries
    # The recipe before rotary positions and tied embeddings: studies made then ran with a
    # learned positional table and an untied head, and their identity says so.
    "model.positions": "learned", "model.rope_base": 10000.0, "model.tie_embeddings": False,
    "train.budgets": None, "seed_offset": 0,
}


# Configs built by Ablation.config, by every input (building one through OmegaConf takes tens
# of milliseconds, and a report or a worker asks for the same ones many times).
_CONFIGS: dict[str, LabConfig] = {}


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


# --------------------------------------------------------------------------------------------
# The ablation file


@dataclass
class Ablation:
    path: Path
    name: str
    description: str
    question: str
    base: list[Path]
    overrides: dict[str, Any]
    config_overrides: list[str]  # from the command line
    space: tuple
    space_spec: dict
    axis: dict[str, str]
    seeds: list[int]
    objective: str
    direction: str
    sampler: str
    n_trials: int | None
    pruner: str | None
    storage: str
    study: str
    workers: int | None
    analysis: dict[str, Any] = field(default_factory=dict)  # the keys given (AnalysisSpec)
    tune: TuneSpec | None = None
    trial_timeout: float | None = None  # seconds; a longer trial fails with reason timeout
    # Sequential seeds (seeds: {min, max}): `seeds` are the first round, and a setting whose
    # comparisons are still open gets the next seed of `seed_pool` after each round
    # (lab.stats.sequential); None for a fixed list of seeds.
    seed_max: int | None = None
    _twins: dict[str, str] | None = field(default=None, repr=False, compare=False)

    # ---------------------------------------------------------------- configs
    def config(self, params: dict[str, Any] | None = None, seed: int | None = None) -> LabConfig:
        # A bad key or value names the ablation file it came from, not the command line.
        layers = [(f"the overrides of {self.path}", self.overrides)] if self.overrides else []
        extra = [f"{k}={json.dumps(decode(v))}" for k, v in (params or {}).items()]
        if seed is not None:
            extra.append(f"seed={seed}")
        sources = {k: f"the space of {self.path}" for k in params or {}}
        # Every input of the config, the base files' modification times included.
        key = json.dumps([str(self.path), [[str(b), _mtime(b)] for b in self.base],
                          self.overrides, self.config_overrides, extra], default=str)
        if key not in _CONFIGS:
            if len(_CONFIGS) > 1024:
                _CONFIGS.clear()
            _CONFIGS[key] = load_config(self.base, [*self.config_overrides, *extra],
                                        layers=layers, sources=sources)
        return copy.deepcopy(_CONFIGS[key])

    def settings(self) -> list[Setting]:
        if self.sampler != "grid":
            return []
        out = []
        for params, group in expand(self.space):
            varying = [k for k in params if len(self._values_of(k)) > 1 or k in self._arm_keys()]
            parts = []
            for k in varying:
                # An arm is named by its value ("looped"), a switch by key and value.
                bare = (k in self._arm_keys() and not isinstance(params[k], bool)
                        and k not in NAMED_BY_KEY)
                parts.append(fmt_value(params[k]) if bare else
                             f"{short_key(k)}={fmt_value(params[k])}")
            label = ", ".join(parts) or "base"
            axis_key = self.axis.get(group) or self.axis.get("")
            axis = params.get(axis_key) if axis_key else None
            out.append(Setting(label, group, params,
                               float(axis) if isinstance(axis, int | float) else None))
        return out

    def _arm_keys(self) -> set[str]:
        keys: set[str] = set()

        def walk(space):
            for e in space:
                if isinstance(e, Choice) and e.arms:
                    keys.add(e.key)
                    for sub in e.arms.values():
                        walk(sub)

        walk(self.space)
        return keys

    def _values_of(self, key: str) -> set:
        return {json.dumps(p.get(key), default=str) for p, _ in expand(self.space) if key in p}

    def setting_configs(self) -> list[tuple[Setting, LabConfig]]:
        seed = self.seeds[0]
        if self.sampler == "grid":
            return [(s, self.config(s.params, seed)) for s in self.settings()]
        return [(Setting("base", "", {}), self.config(None, seed))]

    @property
    def analysis_spec(self) -> AnalysisSpec:
        opts = dict(self.analysis)
        if opts.get("context_costs") is not None:
            opts["context_costs"] = ContextCosts(**opts["context_costs"])
        return AnalysisSpec(**opts)

    def pairs(self) -> list[tuple[Setting, int]]:
        """Every (setting, seed) of the first round; settings that repeat an earlier one
        (twins) are left out: their owner's trials stand for them."""
        tw = self.twins()
        return [(s, seed) for s in self.settings() if s.label not in tw for seed in self.seeds]

    @property
    def sequential(self) -> bool:
        return self.seed_max is not None

    @property
    def seed_pool(self) -> list[int]:
        """Every seed a setting may run: the fixed list, or the first seed_max sequential ones."""
        if self.seed_max is None:
            return list(self.seeds)
        return list(range(self.seeds[0], self.seeds[0] + self.seed_max))

    def twins(self) -> dict[str, str]:
        """{setting: the earlier setting that is the same model} (lab.study.twins), cached."""
        if self._twins is None:
            from lab.study.twins import twins

            self._twins = twins(self)
        return self._twins

    def fingerprint(self) -> tuple[str, dict]:
        """What must not change within one study: base config, space, objective."""
        base = flatten(to_dict(self.config()))
        for k in NON_IDENTITY_KEYS:
            base.pop(k, None)
        ident = {"base": base, "space": self.space_spec, "objective": self.objective,
                 "direction": self.direction, "sampler": self.sampler}
        if self.tune is not None:  # absent from studies without tuning: their ids are unchanged
            ident["tune"] = self.tune.spec()
        return identity_hash(ident), ident


def identity_hash(ident: dict) -> str:
    blob = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

def _resolve_path(p: str, rel_to: Path) -> Path:
    path = Path(p)
    if path.is_absolute():
        return path
    for root in (Path.cwd(), rel_to, REPO):
        if (root / path).exists():
            return root / path
    return REPO / path

def find_ablation(name_or_path: str) -> Path:
    p = Path(name_or_path)
    candidates = [p, Path("ablations") / p, Path("ablations") / f"{p}.yaml",
                  REPO / "ablations" / p, REPO / "ablations" / f"{p}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    avail = sorted(x.stem for x in (REPO / "ablations").glob("*.yaml"))
    raise LabError(
        f"ablation file '{name_or_path}' does not exist. Shipped ablations: {', '.join(avail)} "
        "(give a path such as ablations/loops.yaml)."
    )

def load_ablation(path: str | Path, overrides: list[str] | None = None) -> Ablation:
    path = find_ablation(str(path))
    raw = read_yaml_mapping(path, "ablation file")
    unknown = sorted(set(raw) - ABLATION_KEYS)
    if unknown:
        raise LabError(
            f"ablation file '{path}': unknown key '{unknown[0]}'. Valid keys: "
            f"{', '.join(sorted(ABLATION_KEYS))}."
        )
    study_over, config_over = {}, []
    for o in overrides or []:
        parse_overrides([o])  # checks the key=value form
        key, _, value = o.partition("=")
        if key == "seed":
            raise LabError("override 'seed': a sweep sets each trial's seed from 'seeds'; give "
                           "seeds=[...] instead.")
        if key in STUDY_KEYS:
            try:
                study_over[key] = value if key in ("storage", "study") else yaml.safe_load(value)
            except yaml.YAMLError as e:
                detail = (getattr(e, "problem", None) or str(e).splitlines()[0]).strip()
                raise LabError(f"override '{key}': its value is not valid YAML ({detail}).") from None
        else:
            config_over.append(o)
    raw = {**raw, **study_over}

    name = str(raw.get("name") or path.stem)
    base = raw.get("base") or []
    base = [base] if isinstance(base, str) else list(base)
    base_paths = [_resolve_path(b, path.parent) for b in base]
    for b in base_paths:
        if not b.is_file():
            raise LabError(f"ablation '{path}': base config '{b}' does not exist.")
    ov = raw.get("overrides") or {}
    if not isinstance(ov, dict):
        raise LabError(f"ablation '{path}': 'overrides' must be a mapping of config keys.")
    if "seed" in ov:
        raise LabError(f"ablation '{path}': 'overrides' sets 'seed'; list seeds under 'seeds:'.")
    overrides_nested = _nest(ov)
    if "space" not in raw:
        raise LabError(f"ablation '{path}' has no 'space': name at least one config key to vary.")
    space = parse_space(raw["space"])
    seeds = raw.get("seeds", [0])
    seeds, seed_max = parse_seeds(seeds, path)
    if isinstance(seeds, int):
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise LabError(f"ablation '{path}': 'seeds' must be a non-empty list of integers.")
    if len(set(seeds)) != len(seeds):
        dup = next(s for s in seeds if seeds.count(s) > 1)
        raise LabError(f"ablation '{path}': 'seeds' lists seed {dup} more than once.")
    if not all(SEED_LOW <= s <= SEED_HIGH for s in seeds):
        bad = next(s for s in seeds if not SEED_LOW <= s <= SEED_HIGH)
        raise LabError(f"ablation '{path}': 'seeds' must be between {SEED_LOW} and {SEED_HIGH}, "
                       f"got {bad}.")
    trial_timeout = raw.get("trial_timeout")
    if trial_timeout is not None and not (
            isinstance(trial_timeout, int | float) and not isinstance(trial_timeout, bool)
            and math.isfinite(trial_timeout) and trial_timeout > 0):
        raise LabError(f"ablation '{path}': 'trial_timeout' must be a positive number of "
                       f"seconds, got {trial_timeout!r}.")
    objective = str(raw.get("objective", "val/acc_token"))
    if objective not in OBJECTIVES:
        raise LabError(
            f"ablation '{path}': objective '{objective}' is not one of {sorted(OBJECTIVES)}."
        )
    direction = str(raw.get("direction", "minimize" if objective.endswith(MINIMIZED) else "maximize"))
    if direction not in ("maximize", "minimize"):
        raise LabError(f"ablation '{path}': direction must be maximize or minimize.")
    sampler = str(raw.get("sampler", "grid"))
    if sampler not in ("grid", "tpe"):
        raise LabError(f"ablation '{path}': sampler '{sampler}' is not one of grid, tpe.")
    n_trials = raw.get("n_trials")
    if sampler == "tpe" and not (isinstance(n_trials, int) and n_trials > 0):
        raise LabError(f"ablation '{path}': sampler tpe needs n_trials (a positive integer).")
    pruner = raw.get("pruner")
    if pruner not in (None, "none", "median", "hyperband"):
        raise LabError(f"ablation '{path}': pruner '{pruner}' is not one of none, median, hyperband.")
    axis = raw.get("axis") or {}
    axis = {"": axis} if isinstance(axis, str) else {str(k): str(v) for k, v in axis.items()}
    given = raw.get("study")
    study = _study_name(name, config_over, ov) if given is None else str(given)
    check_study_name(study, f"ablation '{path}': name" if given is None else "study")
    storage = str(raw.get("storage") or f"sqlite:///studies/{study}.db")
    workers = check_workers(raw.get("workers"), f"ablation '{path}': workers")
    abl = Ablation(
        path=path, name=name, description=str(raw.get("description", "")).strip(),
        question=str(raw.get("question", "")).strip(), base=base_paths,
        overrides=overrides_nested, config_overrides=config_over, space=space,
        space_spec=raw["space"], axis=axis, seeds=seeds, objective=objective,
        direction=direction, sampler=sampler, n_trials=n_trials,
        pruner=None if pruner in (None, "none") else pruner, storage=storage, study=study,
        workers=workers, analysis=parse_analysis(raw.get("analysis"), str(path)),
        tune=parse_tune(raw.get("tune"), seeds, str(path)),
        trial_timeout=trial_timeout, seed_max=seed_max,
    )
    if abl.tune is not None and abl.sampler != "grid":
        raise LabError(f"ablation '{path}': tune needs sampler: grid (settings x seeds).")
    check_space_keys(abl)
    check_analysis_names(abl)
    return abl

SEED_KEYS = {"min", "max", "start"}


def parse_seeds(raw: Any, path) -> tuple[Any, int | None]:
    """`seeds`: a list, a count, or {min, max, start} (sequential: the first `min` seeds from
    `start`, then one more per round where a verdict is open, up to `max`)."""
    if not isinstance(raw, dict):
        return raw, None
    unknown = sorted(set(raw) - SEED_KEYS)
    if unknown:
        raise LabError(f"ablation '{path}': unknown key 'seeds.{unknown[0]}'; sequential seeds "
                       "take min, max and start, e.g. seeds: {min: 3, max: 12}.")
    lo, hi, start = raw.get("min"), raw.get("max"), raw.get("start", 0)
    ok = all(isinstance(x, int) and not isinstance(x, bool) for x in (lo, hi, start))
    if not ok or not 2 <= lo <= hi or start < SEED_LOW or start + hi - 1 > SEED_HIGH:
        raise LabError(f"ablation '{path}': seeds: {{min, max}} must be integers with "
                       f"2 <= min <= max (and start >= 0), e.g. seeds: {{min: 3, max: 12}}; "
                       f"got {raw!r}.")
    return list(range(start, start + lo)), hi


# A study names files and folders (studies/<study>.db, runs/<study>/, reports/<study>/): a
# plain name, never a path.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_study_name(study: str, key: str) -> None:
    if STUDY_NAME.fullmatch(study) and ".." not in study:
        return
    raise LabError(
        f"{key} {study!r} is not a plain name. A study names studies/<study>.db, runs/<study>/ "
        "and reports/<study>/, so its name takes letters, digits, '.', '_' and '-' (first a "
        "letter or digit, no '..', at most 100 characters), e.g. study=loops-v2."
    )

def _nest(d: dict) -> dict:
    out: dict = {}
    for k, v in d.items():
        cur = out
        parts = str(k).split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        if isinstance(v, dict) and parts[-1] in cur and isinstance(cur[parts[-1]], dict):
            cur[parts[-1]].update(v)
        else:
            cur[parts[-1]] = v
    return out

def _study_name(name: str, config_overrides: list[str], _file_overrides: dict) -> str:
    if not config_overrides:
        return name
    h = hashlib.sha256("\n".join(sorted(config_overrides)).encode()).hexdigest()[:6]
    return f"{name}-{h}"

def check_analysis_names(abl: Ablation) -> None:
    """analysis.primary names an arm and analysis.reference a setting of the space: a
    misspelt name would otherwise silently change which arm or setting a verdict is about."""
    if abl.sampler != "grid":
        return
    settings = abl.settings()
    arms = list(dict.fromkeys(s.group for s in settings if s.group))
    labels = [s.label for s in settings]
    for key, name, valid, what, a in (("primary", abl.analysis.get("primary"), arms, "arm", "an"),
                                      ("reference", abl.analysis.get("reference"), labels,
                                       "setting", "a")):
        if name is None or str(name) in valid:
            continue
        if not valid:
            raise LabError(f"ablation '{abl.path}': analysis.{key} is '{name}', but the space "
                           f"has no {what}s to name; remove analysis.{key}.")
        close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise LabError(f"ablation '{abl.path}': analysis.{key} '{name}' is not {a} {what} of the "
                       f"space.{hint} Valid {what}s: {', '.join(repr(v) for v in valid)}.")


def check_space_keys(abl: Ablation) -> None:
    """Every key of the space must be a config key: build the base with the first values."""
    seen: set[str] = set()
    if abl.sampler == "grid":
        for s in abl.settings():
            try:
                abl.config(s.params, abl.seeds[0])
            except ConfigError as e:
                raise LabError(
                    f"ablation '{abl.path}', setting '{s.label}': {e}"
                ) from None
    else:
        def keys(space):
            for e in space:
                seen.add(e.key)
                if isinstance(e, Choice) and e.arms:
                    for sub in e.arms.values():
                        keys(sub)
        keys(abl.space)
        schema = flatten(to_dict(abl.config()))
        for k in seen:
            if k not in schema and not k.startswith("task."):
                raise LabError(f"ablation '{abl.path}': '{k}' in the space is not a config key.")
    for group, key in abl.axis.items():
        if group and group not in {s.group for s in abl.settings()}:
            raise LabError(f"ablation '{abl.path}': axis names arm '{group}', which the space lacks.")
        if key and abl.sampler == "grid" and not any(key in s.params for s in abl.settings()):
            raise LabError(f"ablation '{abl.path}': axis key '{key}' is not varied by the space.")
