"""The objective of one trial: pick its setting and seed, train, record the results."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from typing import Any

from lab.errors import LabError
from lab.provenance import git_info
from lab.study.attrs import (
    AXIS_ATTR,
    BUDGETS_ATTR,
    CONFIG_ERROR,
    CORRUPT_CHECKPOINT,
    CURVE_ATTR,
    ERROR,
    FAIL_ATTR,
    FIRST_TRIAL_ATTR,
    GIT_ATTR,
    GROUP_ATTR,
    INTERRUPTED,
    METRIC_PREFIX,
    OOM,
    QUEUED_ATTR,
    RECHECK_GROUP,
    RUNTIME_ATTR,
    SEED_HIGH,
    SEED_LOW,
    SETTING_ATTR,
    SPURIOUS_ATTR,
    THREADS_ATTR,
    TIMEOUT,
    TUNED_PARAMS_ATTR,
    WORKER_ATTR,
    decode,
    encode,
    pair_key,
)
from lab.study.hparams import hparam_domain, trial_hparams
from lab.study.outage import StorageUnavailable
from lab.study.queue import worker_identity
from lab.study.space import Choice, Setting, fmt_value, short_key
from lab.study.spec import Ablation
from lab.study.tune import TUNE_GROUP, point_label, tune_objective_key, tuned_params


class TrialFailed(Exception):
    """A trial that ran but failed (diverged, or an error inside training)."""

def failure_reason(e: BaseException) -> str:
    """`<kind>: <detail>` for an exception out of training; the kind says whether a retry can
    help (lab.study.attrs: interrupted is retried, the kinds here fail the same way again)."""
    import torch

    from lab.train import CheckpointError

    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, CheckpointError):
        kind = CORRUPT_CHECKPOINT
    elif isinstance(e, TrialTimeout):
        kind = TIMEOUT
    elif isinstance(e, torch.OutOfMemoryError | MemoryError) or any(
            m in str(e) for m in ("out of memory", "can't allocate memory", "alloc_cpu")):
        kind = OOM
    elif isinstance(e, LabError):
        kind = CONFIG_ERROR
    else:
        kind, text = ERROR, f"{type(e).__name__}: {text}"
    return f"{kind}: {text or type(e).__name__}"


class TrialTimeout(Exception):
    """The trial ran longer than the ablation's trial_timeout."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise TrialTimeout in this (main) thread after `seconds` (SIGALRM; POSIX only)."""
    if not seconds or not hasattr(signal, "setitimer") or (
            threading.current_thread() is not threading.main_thread()):
        yield
        return

    def on_alarm(signum, frame):
        raise TrialTimeout(f"the trial ran longer than trial_timeout={seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def ignored(signum, frame) -> None:
    """A handler that does nothing. Unlike SIG_IGN it cannot race with a signal that arrived
    just before it was installed (Python raises OSError "ignored due to race condition")."""


def ignore_stop_signals() -> None:
    """From the first interrupt on, ignore further ones (SIGINT, SIGTERM): they must not cut
    short its bookkeeping (failing the trial with its reason, stopping the workers)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread
            if signal.getsignal(s) is not signal.SIG_IGN:
                signal.signal(s, ignored)


def suggest(trial, space: tuple, seeds: list[int], seed_choices: list | None = None,
            sampled: bool = False) -> dict[str, Any]:
    """The trial's parameters. The seed is an integer over a fixed wide range (grid studies:
    the queue fixes its value, and more seeds later stay compatible), the stored choices of a
    study that recorded it as a categorical, or a choice among `seeds` (sampled studies)."""
    params: dict[str, Any] = {}
    # A key that sibling arms list with different values (model.loops: [1, 2, 3, 4] in one
    # arm, [4] in another) must keep one distribution across the study: the union of them.
    choices: dict[str, list] = {}

    def collect(entries):
        for e in entries:
            if isinstance(e, Choice):
                seen = choices.setdefault(e.key, [])
                seen += [x for x in (encode(v) for v in e.values) if x not in seen]
                for sub in (e.arms or {}).values():
                    collect(sub)

    collect(space)

    def walk(entries):
        for e in entries:
            if isinstance(e, Choice):
                v = trial.suggest_categorical(e.key, choices[e.key])
                params[e.key] = decode(v)
                if e.arms:
                    walk(e.arms.get(decode(v), e.arms.get(v, ())))
            elif e.is_int:
                params[e.key] = trial.suggest_int(e.key, int(e.low), int(e.high),
                                                  step=int(e.step or 1), log=e.log)
            else:
                params[e.key] = trial.suggest_float(e.key, e.low, e.high, step=e.step, log=e.log)

    walk(space)
    if seed_choices is not None:
        params["seed"] = trial.suggest_categorical("seed", seed_choices)
    elif sampled:
        params["seed"] = trial.suggest_categorical("seed", seeds)
    else:
        params["seed"] = trial.suggest_int("seed", SEED_LOW, SEED_HIGH)
    return params

def run_slug(label: str) -> str:
    """A setting's label as part of a directory name: `lr=1e+06` -> `lr-1e+06` (a '+' is kept:
    turned into '-' it would name another value)."""
    slug = "".join(c if c.isalnum() or c == "+" else "-" for c in label).strip("-")
    return "-".join(filter(None, slug.split("-")))

def setting_label(abl: Ablation, params: dict[str, Any]) -> tuple[str, str, float | None]:
    p = {k: v for k, v in params.items() if k != "seed"}
    for s in abl.settings():
        if pair_key(s.params) == pair_key(p):
            return s.label, s.group, s.axis
    label = ", ".join(f"{short_key(k)}={fmt_value(v)}" for k, v in p.items())
    return label or "base", "", None

def pruning_callback(trial, monitor: str, prune: bool = True):
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    class StepPruning(PyTorchLightningPruningCallback):
        """Report at the global step: a lab run is one long epoch, so reporting at the epoch
        (the stock behaviour) would collapse every validation onto step 0. Attached to every
        trial: the objective at each validation is the trial's intermediate value (plotted by
        optuna-dashboard), and with no pruner Optuna's NopPruner never prunes."""

        def __init__(self, trial, monitor: str):
            super().__init__(trial, monitor=monitor)
            self.lab_trial = trial
            self.reported: set[int] = set()
            self.prune = prune

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking or self.is_ddp_backend:
                return super().on_validation_end(trainer, pl_module)
            score = trainer.callback_metrics.get(self.monitor)
            if score is None:
                return None
            step = trainer.global_step
            if step in self.reported:  # the closing validation of a run at a validation step
                return None
            self.reported.add(step)
            self.lab_trial.report(float(score), step=step)
            if self.prune and self.lab_trial.should_prune():
                self.lab_trial.set_user_attr("steps", step)
                raise optuna.TrialPruned(f"pruned at step {step}: {self.monitor}={float(score):.4f}")
            return None

    return StepPruning(trial, monitor=monitor)

def measured_config(abl: Ablation, study, label: str, params: dict[str, Any], seed: int):
    """(config, tuned values) of the measured trial of setting `label` (its `params`) and
    `seed`: the ablation's config of the setting with the values tuned for it (the main
    study's lab.tuned). Trials and `lab rerun` build their config here."""
    tuned = tuned_params(study, label)
    return abl.config({**params, **tuned}, seed), tuned


def make_objective(abl: Ablation, threads: int, runs_dir: str, release=None,
                   tune_setting: Setting | None = None, seed_choices: list | None = None,
                   recheck: bool = False):
    """The objective of the measured trials, of one setting's tuning trials, or (recheck) of
    a setting measured again at another setting's learning rate (lab.study.recheck): the
    tuning machinery's point, the measured seeds, validation split and full budget."""
    import optuna

    domain = hparam_domain(abl)

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
        except (SystemExit, KeyboardInterrupt):
            # Lightning exits on Ctrl-C; to Optuna this is an interrupt. From here on, further
            # interrupts are ignored, so that Optuna can record the trial as failed.
            ignore_stop_signals()
            raise KeyboardInterrupt from None
        trial.set_user_attr(FAIL_ATTR, None)
        return value

    def run_trial(trial: optuna.trial.Trial) -> float:
        # Lightning, here: the sweep's own process imports this module without training.
        from lab.train import train
        from lab.train.data import EVAL_SPLITS

        if release is not None:
            release()
        if abl.sampler == "grid" and not trial.user_attrs.get(QUEUED_ATTR):
            # Another machine emptied the queue between our check and our ask.
            trial.set_user_attr(SPURIOUS_ATTR, True)
            raise optuna.TrialPruned("no queued work left")
        trial.set_user_attr(WORKER_ATTR, worker_identity())
        steps = None
        if tune_setting is None:
            params = suggest(trial, abl.space, abl.seeds, seed_choices,
                             sampled=abl.sampler != "grid")
            seed = params.pop("seed")
            label, group, axis = setting_label(abl, params)
            cfg, tuned = measured_config(abl, trial.study, label, params, seed)
            if tuned:
                trial.set_user_attr(TUNED_PARAMS_ATTR, tuned)
            name, objective_key, splits = abl.study, abl.objective, EVAL_SPLITS
        else:
            assert abl.tune is not None
            tuned = suggest(trial, abl.tune.space, abl.tune.seeds)
            seed = tuned.pop("seed")
            params, group, axis = tune_setting.params, TUNE_GROUP, None
            label = point_label(tuned)
            name, objective_key = f"{abl.study}-tune", tune_objective_key(abl.objective)
            splits = ("tune",)
            steps = max(1, round(abl.tune.budget * abl.config().train.steps))
            if recheck:
                group, name = RECHECK_GROUP, f"{abl.study}-recheck"
                objective_key, splits = abl.objective, EVAL_SPLITS
                steps = abl.config().train.steps
            cfg = abl.config({**params, **tuned}, seed)
        trial.set_user_attr(SETTING_ATTR, label)
        trial.set_user_attr(GROUP_ATTR, group)
        if axis is not None:
            trial.set_user_attr(AXIS_ATTR, axis)
        first = trial.user_attrs.get(FIRST_TRIAL_ATTR, trial.number)
        slug = run_slug(label if tune_setting is None else f"{tune_setting.label}-{label}")
        version = f"{first:04d}-{slug}-seed{seed}"
        retry = first != trial.number
        cfg.train.threads = threads
        cfg.train.progress = False
        cfg.resume = retry
        if steps is not None:  # tuning: its budget, no cost pass, diagnostics or branches
            cfg.train.steps = steps
            cfg.train.budgets = None
            cfg.eval.cost = cfg.eval.diagnostics = False
        trial.set_user_attr(GIT_ATTR, git_info())
        trial.set_user_attr(THREADS_ATTR, threads)
        # Reports the objective at every validation step (intermediate values); prunes only
        # when the ablation (or, for tuning, its tune section) names a pruner.
        prune = abl.pruner is not None if tune_setting is None else (
            abl.tune is not None and abl.tune.pruner != "none")
        callbacks = [pruning_callback(trial, objective_key, prune=prune)]
        try:
            with time_limit(abl.trial_timeout):
                res = train(cfg, save_dir=runs_dir, name=name, version=version,
                            callbacks=callbacks, progress=False, eval_splits=splits,
                            hparams=trial_hparams(abl, cfg, label), hparam_domain=domain)
        except (optuna.TrialPruned, StorageUnavailable):
            raise  # an outage is no failure of the trial: it stays RUNNING and is re-queued
        except (LabError, Exception) as e:
            reason = failure_reason(e)
            trial.set_user_attr(FAIL_ATTR, reason)
            raise TrialFailed(reason) from None
        for k, v in record(res).items():
            trial.set_user_attr(k, v)
        if res.status != "ok":
            trial.set_user_attr(FAIL_ATTR, f"diverged: {res.reason}")
            raise TrialFailed(res.reason or "diverged")
        value = res.metrics.get(objective_key)
        if value is None or not math.isfinite(value):
            trial.set_user_attr(FAIL_ATTR, f"diverged: objective {objective_key} = {value}")
            raise TrialFailed("objective is not finite")
        return float(value)

    return objective

def record(res) -> dict[str, Any]:
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
        # The same metrics flat, one numeric attribute each, for optuna-dashboard's plots.
        **{f"{METRIC_PREFIX}{k}": clean(float(v)) for k, v in res.metrics.items()
           if not k.startswith("diag/") and isinstance(v, int | float)},
        "diagnostics": clean({k[5:]: v for k, v in res.metrics.items() if k.startswith("diag/")}),
        "extrapolation": clean(res.extrapolation),
        "adaptive": clean(res.adaptive),
        "plan": res.plan["description"],
        "widths": res.plan["widths"],
        "mlp_hidden": res.plan["hidden"],
        RUNTIME_ATTR: res.runtime,
        CURVE_ATTR: curve_columns(res.curve),
    })
    if res.budgets:
        out[BUDGETS_ATTR] = clean(res.budgets)
        # Training steps of the decayed branches (lab.train.budgets), beyond the run's own.
        out["branch_steps"] = sum(b["steps"] - b["branch_point"] for b in res.budgets.values()
                                  if b.get("branch_point") is not None)
    return out


def curve_columns(curve: list[dict[str, float]]) -> dict[str, list[float | None]]:
    """The learning curve as columns: {"step": [...], "val/acc_token": [...], ...}."""
    keys = sorted({k for row in curve for k in row} - {"step"})
    out: dict[str, list[float | None]] = {"step": [int(r["step"]) for r in curve]}
    for k in keys:
        out[k] = [None if (v := r.get(k)) is None or not math.isfinite(v) else float(v)
                  for r in curve]
    return out
