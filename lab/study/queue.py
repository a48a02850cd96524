"""The grid queue: enqueue missing (setting, seed) pairs, reclaim trials of dead workers.

Grid studies are driven by Optuna's trial queue: the sweep enqueues every (setting, seed)
pair that is not done yet, and workers pop queued trials. Popping is atomic on PostgreSQL
(row locks); on SQLite workers on one machine serialise the pop through a file lock, so a
pair is never run twice. A worker that dies leaves its trial RUNNING: workers on the same
host see that its process is gone (each worker claims the queued trial it is about to pop,
so even one that dies inside the pop is known) and re-queue the pair at once; other hosts'
trials are failed and re-queued by Optuna's heartbeat (``RetryHeartbeatStaleTrialCallback``).
A retried pair resumes from its last checkpoint.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import psutil

from lab.study.attrs import (
    CLAIM_ATTR,
    FAIL_ATTR,
    FIRST_TRIAL_ATTR,
    GROUP_ATTR,
    INTERRUPTED,
    PAIR_ATTR,
    QUEUED_ATTR,
    SEED_PLAN_ATTR,
    SETTING_ATTR,
    WORKER_ATTR,
    final_pairs,
    pair_key,
    pair_params,
    trial_pair,
)
from lab.study.spec import Ablation
from lab.study.storage import queue_lock, trial_id

HOST_ENV = "LAB_HOST"  # names this machine instead of its hostname (tests simulate hosts)


def host_name() -> str:
    return os.environ.get(HOST_ENV) or socket.gethostname()


def worker_identity() -> dict[str, Any]:
    """What names this worker process: host, pid and the process's start time."""
    pid = os.getpid()
    return {"host": host_name(), "pid": pid, "start": psutil.Process(pid).create_time()}


def alive(ident: dict) -> bool:
    """Whether the worker process `ident` names still runs (a reused pid does not count)."""
    pid = ident.get("pid")
    if not isinstance(pid, int):
        return True
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):  # exited, not reaped
            return False
        start = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    # Identities written by older versions hold a /proc clock-tick string: pid check only.
    return not isinstance(ident.get("start"), float) or start == ident["start"]


def reclaim_dead_local_trials(study, storage) -> list[int]:
    """Fail RUNNING trials whose worker process on this host is gone, and re-queue them."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    host = host_name()
    requeued = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        ident = t.user_attrs.get(WORKER_ATTR, t.user_attrs.get(CLAIM_ATTR))
        if not isinstance(ident, dict) or ident.get("host") != host or alive(ident):
            continue
        tid = trial_id(storage, study, t.number)
        try:
            storage.set_trial_user_attr(tid, FAIL_ATTR, f"{INTERRUPTED}: worker process died")
            ok = storage.set_trial_state_values(tid, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue
        if ok:
            requeued.append(t.number)
    return requeued


# One unit of queued work: (setting label, group, params without the seed, seed).
QueueItem = tuple[str, str, dict[str, Any], int]


def seed_plan(abl: Ablation, study=None) -> dict[str, list[int]]:
    """The seeds each setting runs: the ablation's seeds, or with sequential seeds the plan
    the sweep keeps on the study (each setting's first round, plus the seeds added since).
    Twins are left out: their owner's trials stand for them."""
    tw = abl.twins()
    plan = {s.label: list(abl.seeds) for s in abl.settings() if s.label not in tw}
    if abl.sequential and study is not None:
        stored = study.user_attrs.get(SEED_PLAN_ATTR) or {}
        for label, seeds in stored.items():
            if label in plan:
                plan[label] = sorted(set(plan[label]) | set(seeds))
    return plan


def pair_items(abl: Ablation, study=None) -> list[QueueItem]:
    """The measured (setting, seed) pairs of a grid ablation (see seed_plan)."""
    plan = seed_plan(abl, study)
    return [(s.label, s.group, s.params, seed) for s in abl.settings() if s.label in plan
            for seed in plan[s.label]]


def queue_missing(study, abl_or_items: Ablation | list[QueueItem]) -> tuple[int, int]:
    """Enqueue every pair not done, queued or running. Returns (done, queued)."""
    from optuna.trial import TrialState

    items = (pair_items(abl_or_items, study) if isinstance(abl_or_items, Ablation)
             else abl_or_items)
    trials = study.get_trials(deepcopy=False)
    done = set(final_pairs(trials))
    pending = {trial_pair(t) for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
    first_attempt = first_attempts(trials)
    n_new = n_done = 0
    for label, group, p, seed in items:
        params = pair_params(p, seed)
        key = pair_key(params)
        if key in done:
            n_done += 1
            continue
        if key in pending:
            continue
        attrs = {SETTING_ATTR: label, GROUP_ATTR: group, QUEUED_ATTR: True, PAIR_ATTR: key}
        if key in first_attempt:
            attrs[FIRST_TRIAL_ATTR] = first_attempt[key]
        study.enqueue_trial(params, user_attrs=attrs)
        n_new += 1
    return n_done, n_new


def first_attempts(trials) -> dict[str, int]:
    """Trial number of each pair's first attempt: retries reuse its run directory."""
    first: dict[str, int] = {}
    for t in sorted(trials, key=lambda t: t.number):
        k = trial_pair(t)
        if k is not None and k not in first:
            first[k] = t.user_attrs.get(FIRST_TRIAL_ATTR, t.number)
    return first



def reclaim_and_requeue(study, storage, abl: Ablation,
                        items: list[QueueItem] | None = None) -> list[int]:
    with queue_lock(abl.storage, storage, study.study_name):
        dead = reclaim_dead_local_trials(study, storage)
        if dead:
            queue_missing(study, abl if items is None else items)
    return dead


def has_work(study) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def count_done(trials, abl_or_items: Ablation | list[QueueItem], study=None) -> int:
    if isinstance(abl_or_items, Ablation) and abl_or_items.sampler != "grid":
        return sum(1 for t in trials if t.state.name in ("COMPLETE", "PRUNED"))
    items = (pair_items(abl_or_items, study) if isinstance(abl_or_items, Ablation)
             else abl_or_items)
    wanted = {pair_key(pair_params(p, seed)) for _, _, p, seed in items}
    return len(set(final_pairs(trials)) & wanted)
