"""Every name a study stores, and the trial <-> (setting, seed) mapping, in one place.

Anything that reads a study (the report, the export, a user's notebook, optuna-dashboard)
relies on these names; they are part of the lab's storage format, so existing studies keep
loading only while they stay the same.

Trial parameters are the swept config keys (dotted, e.g. ``model.loops``) plus ``seed``.
"""

from __future__ import annotations

import json
from typing import Any

# Trial user attributes set by the lab.
WORKER_ATTR = "lab.worker"  # {host, pid, start} of the worker process running the trial
CLAIM_ATTR = "lab.claimed_by"  # set on a queued trial by the worker about to pop it
SETTING_ATTR = "lab.setting"  # the setting's label
GROUP_ATTR = "lab.group"  # the arm (value of an arm-opening choice), "" if none
AXIS_ATTR = "lab.axis"  # the setting's value on its arm's axis key
FAIL_ATTR = "lab.fail_reason"  # why the trial failed; None once it ends otherwise
PAIR_ATTR = "lab.pair"  # the (setting, seed) pair, as recorded when queued
QUEUED_ATTR = "lab.queued"  # the trial was enqueued by the lab (grid studies)
FIRST_TRIAL_ATTR = "lab.first_trial"  # number of the pair's first attempt (its run directory)
SPURIOUS_ATTR = "lab.spurious"  # a trial asked for after the queue had emptied: not a result
GIT_ATTR = "lab.git"
TUNED_PARAMS_ATTR = "lab.tuned_params"  # the tuned values a measured trial ran with
THREADS_ATTR = "lab.threads"
# How a trial ran: {device, devices, precision (the one actually used), compile, fused_adamw}.
# On the study: {device, precision} of the machine that made it; a machine that would run
# its trials otherwise is refused (lab.study.schedule.check_runtime).
RUNTIME_ATTR = "lab.runtime"

# Trial user attributes holding results (see lab.study.objective.record).
METRICS_ATTR = "metrics"  # final metrics {name: value}, diagnostics excluded
DIAGNOSTICS_ATTR = "diagnostics"  # per-loop / per-layer diagnostics
EXTRAPOLATION_ATTR = "extrapolation"  # {split: {loops: accuracy}}
ADAPTIVE_ATTR = "adaptive"  # {criterion: [rows]}
CURVE_ATTR = "curve"  # the learning curve: {"step": [...], metric: [...]} at every validation
# train.budgets: {fraction: {"steps", "branch_point", "metrics"}} (lab.train.budgets)
BUDGETS_ATTR = "budgets"
METRIC_PREFIX = "metric/"  # the final metrics again, flat: "metric/val/acc_token" (dashboard)
RESULT_ATTRS = ("metrics", "diagnostics", "extrapolation", "adaptive", "plan", "widths",
                "mlp_hidden", "latency_mode", "run_dir", "wall_time_s", "steps",
                "resumed_from_step", "curve", "budgets", "branch_steps")

# Study user attributes.
FINGERPRINT_ATTR = "lab.fingerprint"
IDENTITY_ATTR = "lab.identity"
ABLATION_ATTR = "lab.ablation"
BASE_CONFIG_ATTR = "lab.base_config"
TASK_ATTR = "lab.task"
PROVENANCE_ATTR = "lab.provenance"
CREATED_ATTR = "lab.created"
TUNED_ATTR = "lab.tuned"  # {setting: {params, value, points, trials, pruned, steps, ...}}
LATENCY_ATTR = "lab.latency"  # paired latency rounds: {"rounds", "seconds": {setting: [...]}}
# KV bytes and decode latency against context length (lab.eval.context, analysis.context_costs):
# {"lengths", "batches", "rounds", "steps", "settings": {setting: {...}}, "skipped": {setting: why}}
CONTEXT_ATTR = "lab.context_costs"
TUNE_OF_ATTR = "lab.tune_of"  # on a tuning study: the main study it tunes for
# Sequential seeds (seeds: {min, max}): the seeds each setting runs, {setting: [seeds]}, and
# the looks taken so far, [{"n": seeds per setting of the round, "seeds": {setting: count}}].
SEED_PLAN_ATTR = "lab.seed_plan"
LOOKS_ATTR = "lab.looks"
# On a tuning study: grid points added beyond the ablation's grid (the best point was at an
# edge), [{key: value}, ...].
TUNE_EXTRA_ATTR = "lab.tune_extra"
# The headline comparison at one learning rate (lab.study.recheck): on the recheck study its
# plan {setting, label, reference, point, seeds}; on the main study the plan with "values".
RECHECK_ATTR = "lab.recheck"

# Seeds are suggested as an integer over this range (grid studies), so that asking for more
# seeds later keeps the distribution compatible; studies made before stored a categorical.
SEED_LOW, SEED_HIGH = 0, 2**31 - 1

# Fail reasons ("<kind>: <detail>"), by how a pair that failed so is treated:
INTERRUPTED = "interrupted"  # the fail reason of a trial until it ends otherwise
FINAL_FAILURES = ("diverged",)  # results: never retried
TRANSIENT_FAILURES = (INTERRUPTED,)  # killed or interrupted: retried on every start
# Anything else (out of memory, config error, corrupt checkpoint, cannot resume, timeout,
# error) fails the same way again: retried once, then the pair is final.
OOM, CONFIG_ERROR, CORRUPT_CHECKPOINT, TIMEOUT, ERROR = (
    "out of memory", "config error", "corrupt checkpoint", "timeout", "error")
DETERMINISTIC_ATTEMPTS = 2  # attempts after which a deterministic failure is final


# Optuna categorical choices must be scalars; lists and mappings travel as JSON strings.
def encode(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, list | dict) else v


def decode(v: Any) -> Any:
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def pair_key(params: dict[str, Any]) -> str:
    return json.dumps({k: encode(v) for k, v in params.items()}, sort_keys=True, default=str)


def pair_params(params: dict[str, Any], seed: int) -> dict[str, Any]:
    """A setting's parameters and a seed, as the trial's Optuna parameters."""
    return {**{k: encode(v) for k, v in params.items()}, "seed": seed}


def trial_pair(trial) -> str | None:
    """The (setting, seed) pair of a trial: recorded when queued, else read from its params."""
    key = trial.user_attrs.get(PAIR_ATTR)
    if key is not None:
        return key
    return pair_key(dict(trial.params)) if trial.params else None


def is_done(trial) -> bool:
    """Completed, pruned, or failed for a reason that is itself a result (diverged)."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    reason = trial.user_attrs.get(FAIL_ATTR) or ""
    return trial.state == TrialState.FAIL and reason.startswith(FINAL_FAILURES)


def stored_seed_choices(trials) -> list | None:
    """The seed choices of a study that stored `seed` as a categorical (older studies), else None.

    Optuna checks a new trial's distribution against the first one stored for the name.
    """
    from optuna.distributions import CategoricalDistribution

    for t in sorted(trials, key=lambda t: t.number):
        dist = t.distributions.get("seed")
        if dist is not None:
            return list(dist.choices) if isinstance(dist, CategoricalDistribution) else None
    return None


def is_deterministic_failure(trial) -> bool:
    """Failed for a reason that a retry repeats (not a result, not an interruption)."""
    from optuna.trial import TrialState

    reason = trial.user_attrs.get(FAIL_ATTR) or ""
    return (trial.state == TrialState.FAIL and bool(reason)
            and not reason.startswith(FINAL_FAILURES + TRANSIENT_FAILURES))


def final_pairs(trials) -> dict[str, str | None]:
    """Pairs that need no more attempts, with the fail reason of those that end failed
    (None: completed, pruned). A deterministic failure is final after one retry."""
    out: dict[str, str | None] = {}
    failures: dict[str, list[str]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        key = trial_pair(t)
        if key is None:
            continue
        if is_done(t):
            reason = t.user_attrs.get(FAIL_ATTR) if t.state.name == "FAIL" else None
            if key not in out or reason is None:  # a completion outranks a divergence
                out[key] = reason
        elif is_deterministic_failure(t):
            failures.setdefault(key, []).append(t.user_attrs[FAIL_ATTR])
    for key, reasons in failures.items():
        if key not in out and len(reasons) >= DETERMINISTIC_ATTEMPTS:
            out[key] = reasons[-1]
    return out


def trial_seed(trial) -> int | None:
    seed = trial.params.get("seed")
    return int(seed) if seed is not None else None

RECHECK_GROUP = "recheck"  # the group of the recheck phase's trials (lab.study.recheck)
