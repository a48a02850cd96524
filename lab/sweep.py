"""Optuna studies over ablation files: settings x seeds, resumable, with parallel workers.

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

Space entries: ``key: [v1, v2]`` (categorical), ``key: {low: a, high: b, step: s, log: false}``
(int or float range; a grid needs a step), ``key: {value: {sub-space}, ...}`` (arms).

Trial parameters are named by their dotted config key, plus ``seed``. The trial value is
the objective; cost figures and all final metrics are trial user attributes (see README).

Grid studies are driven by Optuna's trial queue: the sweep enqueues every (setting, seed)
pair that is not done yet, and workers pop queued trials. Popping is atomic on PostgreSQL
(row locks); on SQLite, whose UPDATE is not conditional, workers on one machine serialise
the pop through a file lock, so a pair is never run twice. A worker that dies leaves its
trial RUNNING: workers on the same host see that its process is gone (each worker claims
the queued trial it is about to pop, so even one that dies inside the pop is known) and
re-queue the pair at once; other hosts' trials are failed and re-queued by Optuna's heartbeat
(``RetryHeartbeatStaleTrialCallback``). A retried pair resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab.config import LabConfig, flatten, load_config, parse_overrides, read_yaml_mapping, to_dict
from lab.errors import LabError

REPO = Path(__file__).resolve().parent.parent
ABLATION_KEYS = {
    "name", "description", "base", "overrides", "space", "axis", "seeds", "objective",
    "direction", "sampler", "n_trials", "pruner", "storage", "study", "workers", "analysis",
    "question",
}
# Keys a user may override on the command line that belong to the study, not the config.
STUDY_KEYS = {"storage", "study", "seeds", "workers", "n_trials", "sampler", "pruner",
              "objective", "direction"}
RANGE_KEYS = {"low", "high", "step", "log"}
OBJECTIVES = {
    "val/acc_token", "val/acc_seq", "val/loss", "ood/acc_token", "ood/acc_seq", "ood/loss",
}
HEARTBEAT_S, GRACE_S = 10, 60


# --------------------------------------------------------------------------------------------
# The search space


@dataclass(frozen=True)
class Choice:
    key: str
    values: tuple[Any, ...]
    arms: dict[Any, tuple] | None = None  # value -> sub-space (tuple of entries)


@dataclass(frozen=True)
class Range:
    key: str
    low: float
    high: float
    step: float | None
    log: bool
    is_int: bool


@dataclass
class Setting:
    label: str
    group: str
    params: dict[str, Any]  # dotted key -> value (no seed)
    axis: float | None = None

    @property
    def key(self) -> str:
        return json.dumps(self.params, sort_keys=True, default=str)


def _parse_space(spec: Any, where: str = "space") -> tuple:
    if not isinstance(spec, dict) or not spec:
        raise LabError(f"ablation '{where}' must be a non-empty mapping of config keys to choices.")
    entries = []
    for key, val in spec.items():
        key = str(key)
        if key == "seed":
            raise LabError(f"ablation {where}: list seeds under 'seeds:', not in the space.")
        if isinstance(val, list):
            if not val:
                raise LabError(
                    f"ablation {where}: '{key}' has an empty choice list; give at least one value."
                )
            entries.append(Choice(key, tuple(val)))
        elif isinstance(val, dict) and val and set(val) <= RANGE_KEYS:
            if "low" not in val or "high" not in val:
                raise LabError(f"ablation {where}: range '{key}' needs both low and high.")
            lo, hi = val["low"], val["high"]
            is_int = all(isinstance(v, int) for v in (lo, hi)) and not isinstance(
                val.get("step", 1), float)
            if hi < lo:
                raise LabError(f"ablation {where}: range '{key}' has high {hi} < low {lo}.")
            entries.append(Range(key, lo, hi, val.get("step"), bool(val.get("log", False)), is_int))
        elif isinstance(val, dict) and val:
            arms = {v: (_parse_space(sub, f"{where}.{key}.{v}") if sub else ())
                    for v, sub in val.items()}
            entries.append(Choice(key, tuple(val), arms))
        else:
            raise LabError(
                f"ablation {where}: '{key}' must be a list of values, a range "
                "{low, high[, step, log]}, or a mapping of values to sub-spaces; got "
                f"{val!r}."
            )
    return tuple(entries)


def _range_values(r: Range) -> list:
    if r.step is None:
        if not r.is_int:
            raise LabError(
                f"a grid over the float range '{r.key}' needs a step; add step: ... or use "
                "sampler: tpe."
            )
        step = 1
    else:
        step = r.step
    n = int(math.floor((r.high - r.low) / step + 1e-9)) + 1
    vals = [r.low + i * step for i in range(n)]
    return [int(v) for v in vals] if r.is_int else [round(v, 12) for v in vals]


def _expand(space: tuple, prefix: dict | None = None) -> Iterator[tuple[dict, str]]:
    """Every assignment of the space (a grid), with the arm (group) it belongs to."""
    prefix = dict(prefix or {})
    if not space:
        yield prefix, ""
        return
    head, rest = space[0], space[1:]
    values = head.values if isinstance(head, Choice) else _range_values(head)
    for v in values:
        here = {**prefix, head.key: v}
        sub = head.arms.get(v, ()) if isinstance(head, Choice) and head.arms else ()
        for assign, group in _expand(sub + rest, here):
            arm = str(v) if isinstance(head, Choice) and head.arms else ""
            yield assign, group or arm


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


# Optuna categorical choices must be scalars; lists and mappings travel as JSON strings.
def encode(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, list | dict) else v


def decode(v: Any) -> Any:
    if isinstance(v, str) and v[:1] in "[{":
        with contextlib.suppress(ValueError):
            return json.loads(v)
    return v


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
    analysis: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- configs
    def config(self, params: dict[str, Any] | None = None, seed: int | None = None) -> LabConfig:
        layers = [self.overrides] if self.overrides else []
        extra = [f"{k}={json.dumps(decode(v))}" for k, v in (params or {}).items()]
        if seed is not None:
            extra.append(f"seed={seed}")
        return load_config(self.base, [*self.config_overrides, *extra], layers=layers)

    def settings(self) -> list[Setting]:
        if self.sampler != "grid":
            return []
        out = []
        for params, group in _expand(self.space):
            varying = [k for k in params if len(self._values_of(k)) > 1 or k in self._arm_keys()]
            parts = []
            for k in varying:
                parts.append(_fmt(params[k]) if k in self._arm_keys() else
                             f"{_short(k)}={_fmt(params[k])}")
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
        return {json.dumps(p.get(key), default=str) for p, _ in _expand(self.space) if key in p}

    def setting_configs(self) -> list[tuple[Setting, LabConfig]]:
        seed = self.seeds[0]
        if self.sampler == "grid":
            return [(s, self.config(s.params, seed)) for s in self.settings()]
        return [(Setting("base", "", {}), self.config(None, seed))]

    def pairs(self) -> list[tuple[Setting, int]]:
        return [(s, seed) for s in self.settings() for seed in self.seeds]

    def fingerprint(self) -> tuple[str, dict]:
        """What must not change within one study: base config, space, objective."""
        base = flatten(to_dict(self.config()))
        for k in ("seed", "name", "resume", "out_dir", "train.threads", "train.progress",
                  "train.accelerator", "train.devices", "train.strategy", "train.precision"):
            base.pop(k, None)
        ident = {"base": base, "space": self.space_spec, "objective": self.objective,
                 "direction": self.direction, "sampler": self.sampler}
        blob = json.dumps(ident, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16], ident


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
        if key in STUDY_KEYS:
            study_over[key] = value if key in ("storage", "study") else yaml.safe_load(value)
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
    overrides_nested = _nest(ov)
    if "space" not in raw:
        raise LabError(f"ablation '{path}' has no 'space': name at least one config key to vary.")
    space = _parse_space(raw["space"])
    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int):
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise LabError(f"ablation '{path}': 'seeds' must be a non-empty list of integers.")
    objective = str(raw.get("objective", "val/acc_token"))
    if objective not in OBJECTIVES:
        raise LabError(
            f"ablation '{path}': objective '{objective}' is not one of {sorted(OBJECTIVES)}."
        )
    direction = str(raw.get("direction", "minimize" if objective.endswith("loss") else "maximize"))
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
    study = str(raw.get("study") or _study_name(name, config_over, ov))
    storage = str(raw.get("storage") or f"sqlite:///studies/{study}.db")
    workers = raw.get("workers")
    abl = Ablation(
        path=path, name=name, description=str(raw.get("description", "")).strip(),
        question=str(raw.get("question", "")).strip(), base=base_paths,
        overrides=overrides_nested, config_overrides=config_over, space=space,
        space_spec=raw["space"], axis=axis, seeds=seeds, objective=objective,
        direction=direction, sampler=sampler, n_trials=n_trials,
        pruner=None if pruner in (None, "none") else pruner, storage=storage, study=study,
        workers=workers, analysis=dict(raw.get("analysis") or {}),
    )
    _check_space_keys(abl)
    return abl


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


def _check_space_keys(abl: Ablation) -> None:
    """Every key of the space must be a config key: build the base with the first values."""
    from lab.errors import ConfigError

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


# --------------------------------------------------------------------------------------------
# Storage


class _LockedRDBStorage:
    """Mixin: serialise state changes of local workers through a file lock.

    SQLite has no row locks: two processes can both read a WAITING trial and both set it
    RUNNING. Holding an exclusive file lock around the read-check-write makes the queue pop
    (and the failing of a stale trial) atomic for every worker on this machine.
    """

    lock_path: str

    def set_trial_state_values(self, trial_id, state, values=None):
        with file_lock(self.lock_path):
            return super().set_trial_state_values(trial_id, state, values)


class FileLock:
    """An exclusive flock on a file, re-entrant within a process.

    flock treats two descriptors of one file as independent even in one process, so a
    nested acquire would deadlock; a per-path depth count makes nesting safe.
    """

    _held: dict[str, tuple[Any, int]] = {}

    def __init__(self, path: str):
        self.path = path

    def acquire(self) -> None:
        fh, depth = self._held.get(self.path, (None, 0))
        if fh is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+")  # noqa: SIM115 - held across calls
            fcntl.flock(fh, fcntl.LOCK_EX)
        self._held[self.path] = (fh, depth + 1)

    def release(self) -> None:
        fh, depth = self._held.get(self.path, (None, 0))
        if fh is None:
            return
        if depth > 1:
            self._held[self.path] = (fh, depth - 1)
            return
        del self._held[self.path]
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def file_lock(path: str) -> FileLock:
    return FileLock(path)


def lock_path_for(url: str) -> str:
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):] + ".lock"
    h = hashlib.sha256(url.encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"lab-study-{h}.lock")


def silence_optuna() -> None:
    """Optuna marks heartbeats and the brute-force sampler experimental; say it once, here."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_storage(url: str, heartbeat: bool = True):
    import optuna

    silence_optuna()
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    if url.startswith("journal:///") or url.endswith((".log", ".journal")):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url[len("journal:///"):] if url.startswith("journal:///") else url
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise LabError(
            f"storage '{url}' is not a storage URL; use sqlite:///path.db, "
            "postgresql://user:pass@host/db, mysql://..., or journal:///path.log."
        )
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 120}}
    elif url.startswith(("postgresql", "mysql")):
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}} \
            if url.startswith("postgresql") else {"pool_pre_ping": True}
    cls = type("LabRDBStorage", (_LockedRDBStorage, RDBStorage), {"lock_path": lock_path_for(url)})
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = dict(heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())
    try:
        with _quiet_optuna():
            return _create_storage(cls, url, engine_kwargs, kwargs)
    except ImportError as e:
        raise LabError(
            f"storage '{_redact(url)}' needs a database driver that is not installed ({e}). "
            'For PostgreSQL: pip install "psycopg[binary]" (the postgres extra of the lab).'
        ) from None
    except Exception as e:  # sqlalchemy errors: bad URL, unreachable server, bad credentials
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LabError(
            f"cannot open storage '{_redact(url)}': {msg}. Check the URL "
            "(sqlite:///studies/NAME.db, postgresql://user:pass@host:5432/db) and that the "
            "server is reachable."
        ) from None
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)


def _create_storage(cls, url: str, engine_kwargs: dict, kwargs: dict, attempts: int = 6):
    """Create the storage, retrying when another process creates the same tables right now.

    Several machines starting on a fresh database race to create Optuna's schema; the losers
    see "already exists" / unique-violation errors, and a second try finds the tables.
    """
    import random

    for attempt in range(attempts):
        try:
            return cls(url, engine_kwargs=engine_kwargs, **kwargs)
        except ImportError:
            raise
        except Exception as e:
            text = str(e).lower()
            racing = any(m in text for m in ("already exists", "duplicate key", "uniqueviolation",
                                             "database is locked"))
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.5 + random.random() * (attempt + 1))
    raise AssertionError("unreachable")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


@contextlib.contextmanager
def _quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield


# --------------------------------------------------------------------------------------------
# Trials, pairs and the queue

WORKER_ATTR, SETTING_ATTR, FAIL_ATTR = "lab.worker", "lab.setting", "lab.fail_reason"
CLAIM_ATTR = "lab.claimed_by"  # set on a queued trial by the worker about to pop it
INTERRUPTED = "interrupted"  # the fail reason of a trial until it ends otherwise
FINAL_FAILURES = ("diverged",)


def pair_key(params: dict[str, Any]) -> str:
    return json.dumps({k: encode(v) for k, v in params.items()}, sort_keys=True, default=str)


PAIR_ATTR = "lab.pair"


def trial_pair(trial) -> str | None:
    """The (setting, seed) pair of a trial: recorded when queued, else read from its params."""
    key = trial.user_attrs.get(PAIR_ATTR)
    if key is not None:
        return key
    return pair_key(dict(trial.params)) if trial.params else None


def pair_params(setting: Setting, seed: int) -> dict[str, Any]:
    return {**{k: encode(v) for k, v in setting.params.items()}, "seed": seed}


def is_done(trial) -> bool:
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    reason = trial.user_attrs.get(FAIL_ATTR) or ""
    return trial.state == TrialState.FAIL and reason.startswith(FINAL_FAILURES)


def _proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[19] if stat and len(stat) > 19 else None


def worker_identity() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _process_start(pid)}


def _alive(ident: dict) -> bool:
    pid = ident.get("pid")
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_stat(pid)
    if stat and stat[0] in ("Z", "X"):  # exited, not yet reaped by its parent
        return False
    start = stat[19] if stat and len(stat) > 19 else None
    return ident.get("start") is None or start is None or start == ident["start"]


def reclaim_dead_local_trials(study) -> list[int]:
    """Fail RUNNING trials whose worker process on this host is gone, and re-queue them."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    host = socket.gethostname()
    requeued = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        ident = t.user_attrs.get(WORKER_ATTR, t.user_attrs.get(CLAIM_ATTR))
        if not isinstance(ident, dict) or ident.get("host") != host or _alive(ident):
            continue
        storage = study._storage
        try:
            storage.set_trial_user_attr(t._trial_id, FAIL_ATTR, f"{INTERRUPTED}: worker process died")
            ok = storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue
        if ok:
            requeued.append(t.number)
    return requeued


def queue_missing(study, abl: Ablation) -> tuple[int, int]:
    """Enqueue every (setting, seed) pair not done, queued or running. Returns (done, queued)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = {trial_pair(t) for t in trials if is_done(t)}
    pending = {trial_pair(t) for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
    first_attempt = _first_attempts(trials)
    n_new = 0
    for setting, seed in abl.pairs():
        params = pair_params(setting, seed)
        key = pair_key(params)
        if key in done or key in pending:
            continue
        attrs = {SETTING_ATTR: setting.label, "lab.group": setting.group, "lab.queued": True,
                 PAIR_ATTR: key}
        if key in first_attempt:
            attrs["lab.first_trial"] = first_attempt[key]
        study.enqueue_trial(params, user_attrs=attrs)
        n_new += 1
    return sum(1 for s, seed in abl.pairs() if pair_key(pair_params(s, seed)) in done), n_new


def _first_attempts(trials) -> dict[str, int]:
    """Trial number of each pair's first attempt: retries reuse its run directory."""
    first: dict[str, int] = {}
    for t in sorted(trials, key=lambda t: t.number):
        k = trial_pair(t)
        if k is not None and k not in first:
            first[k] = t.user_attrs.get("lab.first_trial", t.number)
    return first


# --------------------------------------------------------------------------------------------
# The objective


class TrialFailed(Exception):
    """A trial that ran but failed (diverged, or an error inside training)."""


def _suggest(trial, space: tuple, seeds: list[int]) -> dict[str, Any]:
    params: dict[str, Any] = {}

    def walk(entries):
        for e in entries:
            if isinstance(e, Choice):
                v = trial.suggest_categorical(e.key, [encode(x) for x in e.values])
                params[e.key] = decode(v)
                if e.arms:
                    walk(e.arms.get(decode(v), e.arms.get(v, ())))
            elif e.is_int:
                params[e.key] = trial.suggest_int(e.key, int(e.low), int(e.high),
                                                  step=int(e.step or 1), log=e.log)
            else:
                params[e.key] = trial.suggest_float(e.key, e.low, e.high, step=e.step, log=e.log)

    walk(space)
    params["seed"] = trial.suggest_categorical("seed", seeds)
    return params


def _setting_label(abl: Ablation, params: dict[str, Any]) -> tuple[str, str, float | None]:
    p = {k: v for k, v in params.items() if k != "seed"}
    for s in abl.settings():
        if pair_key(s.params) == pair_key(p):
            return s.label, s.group, s.axis
    label = ", ".join(f"{_short(k)}={_fmt(v)}" for k, v in p.items())
    return label or "base", "", None


def _pruning_callback(trial, monitor: str):
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    class StepPruning(PyTorchLightningPruningCallback):
        """Report at the global step: a lab run is one long epoch, so reporting at the epoch
        (the stock behaviour) would collapse every validation onto step 0."""

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking or self.is_ddp_backend:
                return super().on_validation_end(trainer, pl_module)
            score = trainer.callback_metrics.get(self.monitor)
            if score is None:
                return None
            step = trainer.global_step
            self._trial.report(float(score), step=step)
            if self._trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}: {self.monitor}={float(score):.4f}")
            return None

    return StepPruning(trial, monitor=monitor)


def make_objective(abl: Ablation, threads: int, runs_dir: str, release=None):
    import optuna

    from lab.provenance import git_info
    from lab.train import train

    def objective(trial: optuna.trial.Trial) -> float:
        # Until the trial ends otherwise, its reason is "interrupted": wherever an interrupt
        # or a kill lands, a trial that stops early says why (grid workers also stamp it on
        # the queued trial before popping it).
        trial.set_user_attr(FAIL_ATTR, INTERRUPTED)
        try:
            value = run_trial(trial)
        except optuna.TrialPruned:
            trial.set_user_attr(FAIL_ATTR, None)
            raise
        except SystemExit:  # Lightning exits on Ctrl-C; to Optuna this is an interrupt
            raise KeyboardInterrupt from None
        trial.set_user_attr(FAIL_ATTR, None)
        return value

    def run_trial(trial: optuna.trial.Trial) -> float:
        if release is not None:
            release()
        if abl.sampler == "grid" and not trial.user_attrs.get("lab.queued"):
            # Another machine emptied the queue between our check and our ask.
            trial.set_user_attr("lab.spurious", True)
            raise optuna.TrialPruned("no queued work left")
        trial.set_user_attr(WORKER_ATTR, worker_identity())
        params = _suggest(trial, abl.space, abl.seeds)
        seed = params.pop("seed")
        label, group, axis = _setting_label(abl, params)
        trial.set_user_attr(SETTING_ATTR, label)
        trial.set_user_attr("lab.group", group)
        if axis is not None:
            trial.set_user_attr("lab.axis", axis)
        first = trial.user_attrs.get("lab.first_trial", trial.number)
        slug = "".join(c if c.isalnum() else "-" for c in label).strip("-")
        slug = "-".join(filter(None, slug.split("-")))
        version = f"{first:04d}-{slug}-seed{seed}"
        retry = first != trial.number
        cfg = abl.config(params, seed)
        cfg.train.threads = threads
        cfg.train.progress = False
        cfg.resume = retry
        trial.set_user_attr("lab.git", git_info())
        trial.set_user_attr("lab.threads", threads)
        callbacks = [_pruning_callback(trial, abl.objective)] if abl.pruner else []
        try:
            res = train(cfg, save_dir=runs_dir, name=abl.study, version=version,
                        callbacks=callbacks, progress=False,
                        hparams={"trial": trial.number, "setting": label})
        except optuna.TrialPruned:
            raise
        except LabError as e:
            trial.set_user_attr(FAIL_ATTR, f"error: {e}")
            raise TrialFailed(str(e)) from None
        except Exception as e:
            trial.set_user_attr(FAIL_ATTR, f"error: {type(e).__name__}: {e}")
            raise TrialFailed(str(e)) from e
        for k, v in _record(res).items():
            trial.set_user_attr(k, v)
        if res.status != "ok":
            trial.set_user_attr(FAIL_ATTR, f"diverged: {res.reason}")
            raise TrialFailed(res.reason or "diverged")
        value = res.metrics.get(abl.objective)
        if value is None or not math.isfinite(value):
            trial.set_user_attr(FAIL_ATTR, f"diverged: objective {abl.objective} = {value}")
            raise TrialFailed("objective is not finite")
        return float(value)

    return objective


def _record(res) -> dict[str, Any]:
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        return x

    out = {k: clean(v) for k, v in res.costs.items()}
    out.update({
        "wall_time_s": res.wall_time_s,
        "steps": res.steps,
        "resumed_from_step": res.resumed_from_step,
        "run_dir": res.run_dir,
        "metrics": clean({k: v for k, v in res.metrics.items() if not k.startswith("diag/")}),
        "diagnostics": clean({k[5:]: v for k, v in res.metrics.items() if k.startswith("diag/")}),
        "extrapolation": clean(res.extrapolation),
        "adaptive": clean(res.adaptive),
        "plan": res.plan["description"],
        "widths": res.plan["widths"],
        "mlp_hidden": res.plan["hidden"],
    })
    return out


# --------------------------------------------------------------------------------------------
# Creating / checking a study


def create_or_load_study(abl: Ablation, storage=None):
    import optuna

    storage = storage or open_storage(abl.storage)
    fp, ident = abl.fingerprint()
    sampler = (optuna.samplers.TPESampler(seed=abl.seeds[0]) if abl.sampler == "tpe"
               else optuna.samplers.BruteForceSampler(seed=0))
    pruner = {"median": optuna.pruners.MedianPruner(n_warmup_steps=1),
              "hyperband": optuna.pruners.HyperbandPruner()}.get(abl.pruner or "",
                                                                 optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=abl.study, storage=storage, sampler=sampler,
                                pruner=pruner, direction=abl.direction, load_if_exists=True)
    old = study.user_attrs.get("lab.fingerprint")
    if old is None:
        from lab.model import resolve
        from lab.provenance import provenance
        from lab.tasks import describe

        cfg, task, _ = resolve(abl.config())
        study.set_user_attr("lab.fingerprint", fp)
        study.set_user_attr("lab.identity", ident)
        study.set_user_attr("lab.ablation", {
            "name": abl.name, "file": str(abl.path), "description": abl.description,
            "question": abl.question, "seeds": abl.seeds, "objective": abl.objective,
            "direction": abl.direction, "sampler": abl.sampler, "n_trials": abl.n_trials,
            "pruner": abl.pruner, "axis": abl.axis, "analysis": abl.analysis,
            "config_overrides": abl.config_overrides,
        })
        study.set_user_attr("lab.base_config", to_dict(cfg))
        study.set_user_attr("lab.task", {"description": describe(task), "chance": task.chance,
                                         "causal": bool(task.causal)})
        study.set_user_attr("lab.provenance", provenance())
        study.set_user_attr("lab.created", time.time())
    elif old != fp:
        prev = study.user_attrs.get("lab.identity", {})
        raise LabError(
            f"study '{abl.study}' in {_redact(abl.storage)} was created with a different "
            f"{_first_difference(prev, ident)}. Resuming would mix incomparable trials. Start a new "
            f"study with study=<new-name> (e.g. study={abl.study}-v2), or remove the old one "
            f"(rm {abl.storage[len('sqlite:///'):]} for the default SQLite storage)."
        )
    else:
        # Seeds may grow between runs; keep the latest list for the report.
        meta = dict(study.user_attrs.get("lab.ablation", {}))
        if meta.get("seeds") != abl.seeds:
            meta["seeds"] = sorted(set(meta.get("seeds", [])) | set(abl.seeds))
            study.set_user_attr("lab.ablation", meta)
    return study


def _first_difference(a: dict, b: dict) -> str:
    fa, fb = flatten(a), flatten(b)
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k) != fb.get(k):
            what = "search space" if k.startswith("space") else (
                "config" if k.startswith("base") else k)
            key = k.split(".", 1)[1] if "." in k else k
            return f"{what} (first difference at '{key}': was {fa.get(k)!r}, now {fb.get(k)!r})"
    return "setup"


def load_existing_study(abl: Ablation):
    import optuna

    if abl.storage.startswith("sqlite:///") and not Path(abl.storage[len("sqlite:///"):]).is_file():
        raise LabError(
            f"no study '{abl.study}': its storage {abl.storage[len('sqlite:///'):]} does not exist. "
            f"Run it first: lab sweep {abl.path}."
        )
    storage = open_storage(abl.storage, heartbeat=False)
    try:
        return optuna.load_study(study_name=abl.study, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise LabError(
            f"no study '{abl.study}' in {_redact(abl.storage)}"
            + (f" (it holds: {', '.join(names)})" if names else " (it holds no studies)")
            + f". Run it first: lab sweep {abl.path}."
        ) from None


# --------------------------------------------------------------------------------------------
# Workers


def default_workers(abl: Ablation, requested: int | None) -> int:
    n = requested or abl.workers or os.cpu_count() or 1
    return max(1, int(n))


def _interrupt_once() -> None:
    """Raise KeyboardInterrupt on the first SIGINT and ignore later ones.

    Ctrl-C reaches a worker twice (from the terminal's process group and from `lab sweep`
    stopping its workers); a second interrupt must not cut short the bookkeeping of the first.
    """

    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a background sweep ignores it
        signal.signal(signal.SIGINT, handler)


def worker_main(argv: list[str]) -> int:
    """Entry point of one worker process: pop queued trials until none are left."""
    import argparse

    import optuna
    from optuna.trial import TrialState

    from lab.train import quiet_lightning

    ap = argparse.ArgumentParser(prog="lab-worker")
    ap.add_argument("ablation")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("overrides", nargs="*")
    args, extra = ap.parse_known_args(argv)
    args.overrides = [*args.overrides, *extra]
    _interrupt_once()
    quiet_lightning()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    abl = load_ablation(args.ablation, args.overrides)
    storage = open_storage(abl.storage)
    study = optuna.load_study(study_name=abl.study, storage=storage)
    lock = FileLock(lock_path_for(abl.storage))
    held = {"n": 0}

    def acquire():
        lock.acquire()
        held["n"] += 1

    def release():
        # Called by the objective once the queued trial is ours, and again in `finally`.
        while held["n"]:
            lock.release()
            held["n"] -= 1

    objective = make_objective(abl, args.threads, args.runs, release=release)
    if abl.sampler == "tpe":
        from optuna.study import MaxTrialsCallback

        # Workers stop once n_trials are done; concurrent ones may add up to workers - 1 more.
        if _count_done(study.get_trials(deepcopy=False), abl) < abl.n_trials:
            study.optimize(objective, catch=(TrialFailed,), callbacks=[
                MaxTrialsCallback(abl.n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))])
        return 0
    while True:
        reclaim_and_requeue(study, abl)
        acquire()
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not waiting:
            release()
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return 0
            # Another worker is busy; wait in case its trial goes stale and is re-queued.
            with _quiet_optuna(), warnings_off():
                optuna.storages.fail_stale_trials(study)
            time.sleep(2.0)
            continue
        # Optuna pops the oldest waiting trial. Claim it first, so that if this process dies
        # between the pop and the objective's first line, the trial is still known to be ours.
        claimed = waiting[0]._trial_id
        study._storage.set_trial_user_attr(claimed, CLAIM_ATTR, worker_identity())
        study._storage.set_trial_user_attr(claimed, FAIL_ATTR, INTERRUPTED)
        try:
            # The objective releases the lock as soon as the queued trial is ours.
            study.optimize(objective, n_trials=1, catch=(TrialFailed,))
        finally:
            release()


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def reclaim_and_requeue(study, abl: Ablation) -> list[int]:
    with file_lock(lock_path_for(abl.storage)):
        dead = reclaim_dead_local_trials(study)
        if dead:
            queue_missing(study, abl)
    return dead


# --------------------------------------------------------------------------------------------
# The parent: set up, start workers, show progress, write the report


def run_sweep(path: str, overrides: list[str] | None = None, workers: int | None = None) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True, soft_wrap=True)
    abl = load_ablation(path, overrides)
    study = create_or_load_study(abl)
    with file_lock(lock_path_for(abl.storage)):
        reclaim_dead_local_trials(study)
        if abl.sampler == "grid":
            done, _ = queue_missing(study, abl)
        else:
            done = _count_done(study.get_trials(deepcopy=False), abl)
    total = len(abl.pairs()) if abl.sampler == "grid" else abl.n_trials
    n_workers = default_workers(abl, workers)
    if abl.sampler == "grid":
        n_workers = min(n_workers, max(1, total - done))
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    shape = (f"{len(abl.settings())} settings x {len(abl.seeds)} seeds" if abl.sampler == "grid"
             else f"sampled by {abl.sampler}")
    console.print(
        f"[bold]{abl.study}[/bold]: {total} trials ({shape}), {done} already done; "
        f"{n_workers} worker(s) x {threads} thread(s); storage {_redact(abl.storage)}"
    )
    remaining = total - done
    if remaining > 0:
        argv = [str(abl.path), "--threads", str(threads), *(overrides or [])]
        t0 = time.time()
        seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        procs: list[subprocess.Popen] = []
        try:
            with Progress(TextColumn("[bold blue]{task.description}"), BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                          TimeRemainingColumn(), console=console, transient=False) as progress:
                bar = progress.add_task(abl.study, total=total, completed=done)
                procs = [_spawn_worker(argv) for _ in range(n_workers)]
                respawns = 0
                while True:
                    time.sleep(1.0)
                    trials = study.get_trials(deepcopy=False)
                    for t in trials:
                        if t.state.is_finished() and t.number not in seen:
                            seen.add(t.number)
                            if not t.user_attrs.get("lab.spurious"):
                                progress.console.print(_trial_line(t, abl))
                    progress.update(bar, completed=_count_done(trials, abl))
                    alive = [p for p in procs if p.poll() is None]
                    if len(alive) < len(procs):
                        died = [p for p in procs if p.poll() not in (None, 0)]
                        if died:
                            reclaim_and_requeue(study, abl)
                        if _has_work(study) and respawns < 3 * n_workers:
                            need = n_workers - len(alive)
                            alive += [_spawn_worker(argv) for _ in range(need)]
                            respawns += need
                        procs = alive
                    if not procs:
                        break
                progress.update(bar, completed=_count_done(study.get_trials(deepcopy=False), abl))
        except KeyboardInterrupt:
            _stop_workers(procs)
            console.print(
                f"[yellow]interrupted[/yellow]: {_count_done(study.get_trials(deepcopy=False), abl)}"
                f"/{total} trials done; run the same command again to resume."
            )
            return 130
        console.print(f"sweep finished in {time.time() - t0:.0f}s")
        missing = total - _count_done(study.get_trials(deepcopy=False), abl)
        if missing > 0:
            console.print(
                f"[red]{missing} of {total} trials did not complete: the workers stopped "
                f"(see the messages above). Run the same command again to resume.[/red]"
            )
            if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
                return 1
    from lab.report import print_results, write_report

    print_results(abl)
    return write_report(str(abl.path), overrides or [], quiet=False)


def _spawn_worker(argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "lab.worker", *argv], env=env)


def _stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)
    deadline = time.time() + 30
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.time()))
        if p.poll() is None:
            p.kill()


def _has_work(study) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _count_done(trials, abl: Ablation) -> int:
    if abl.sampler != "grid":
        return sum(1 for t in trials if t.state.name in ("COMPLETE", "PRUNED"))
    wanted = {pair_key(pair_params(s, seed)) for s, seed in abl.pairs()}
    return len({trial_pair(t) for t in trials if is_done(t)} & wanted)


def _trial_line(t, abl: Ablation) -> str:
    from optuna.trial import TrialState

    label = t.user_attrs.get(SETTING_ATTR, "?")
    seed = t.params.get("seed", "?")
    wall = t.user_attrs.get("wall_time_s")
    wall_s = f" {wall:.0f}s" if isinstance(wall, int | float) else ""
    if t.state == TrialState.COMPLETE:
        v = t.value
        shown = f"{100 * v:.1f}%" if "acc" in abl.objective else f"{v:.4f}"
        return f"  [green]done[/green]   #{t.number:<4} {label}, seed {seed}: {abl.objective} {shown}{wall_s}"
    if t.state == TrialState.PRUNED:
        return f"  [yellow]pruned[/yellow] #{t.number:<4} {label}, seed {seed}{wall_s}"
    reason = t.user_attrs.get(FAIL_ATTR) or "no reason recorded (its worker stopped reporting)"
    return f"  [red]failed[/red] #{t.number:<4} {label}, seed {seed}: {reason}"


__all__ = [
    "Ablation", "Setting", "create_or_load_study", "load_ablation", "load_existing_study",
    "open_storage", "queue_missing", "run_sweep", "worker_main",
]
