"""One sweep worker process (started by `lab sweep`): pop queued trials until none are left.

`python -m lab.study.worker ABLATION [--threads N] [--runs DIR] [overrides]`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

from lab.errors import LabError
from lab.study.attrs import (
    CLAIM_ATTR,
    FAIL_ATTR,
    INTERRUPTED,
    is_deterministic_failure,
    stored_seed_choices,
)
from lab.study.identity import sampler_and_pruner
from lab.study.objective import TrialFailed, ignore_stop_signals, make_objective
from lab.study.outage import EXIT_STORAGE_LOST, StorageUnavailable, stop_retrying
from lab.study.outage import state as outage_state
from lab.study.queue import count_done, queue_missing, reclaim_and_requeue, worker_identity
from lab.study.spec import load_ablation
from lab.study.storage import (
    PARENT_ENV,
    STORAGE_ENV,
    file_lock,
    lock_path_for,
    open_storage,
    queue_lock,
    quiet_optuna,
    trial_id,
)
from lab.study.tune import open_tune_study, tune_items, tuned_settings
from lab.train import quiet_lightning

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
stopping: list[int] = []  # the signal that stopped this worker, once one has


def interrupt_once() -> None:
    """Raise KeyboardInterrupt on the first SIGINT or SIGTERM and ignore later ones.

    Ctrl-C reaches a worker twice (from the terminal's process group and from `lab sweep`
    stopping its workers). Lightning's teardown re-installs this handler after it had
    ignored SIGINT, so the handler itself also ignores every signal after the first.
    """

    def handler(signum, frame):
        if stopping:
            return
        stopping.append(signum)
        stop_retrying()  # its bookkeeping must not wait for a database that is gone
        ignore_stop_signals()
        raise KeyboardInterrupt

    def unraisable(u):
        # The interrupt can land in a callback whose exceptions Python only prints (a
        # weakref finalizer): it is not lost, drain() stops at the next trial boundary.
        if not isinstance(u.exc_value, KeyboardInterrupt):
            sys.__unraisablehook__(u)

    sys.unraisablehook = unraisable
    for s in STOP_SIGNALS:
        # A background sweep ignores SIGINT: keep it so.
        if s != signal.SIGINT or signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, handler)


def die_with_parent(parent: int | None) -> None:
    """Stop (as on SIGTERM) when `lab sweep` dies, however it dies: Linux's parent-death
    signal, and a thread that checks the parent is still there (other systems, and a parent
    that died before the signal was armed)."""
    import ctypes
    import threading

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    ppid = parent or os.getppid()

    def watch():
        while True:
            if os.getppid() != ppid:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(1.0)

    threading.Thread(target=watch, name="lab-parent-watch", daemon=True).start()


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield

def worker_main(argv: list[str]) -> int:
    """Entry point of one worker process: pop queued trials until none are left."""
    import argparse

    ap = argparse.ArgumentParser(prog="lab-worker")
    ap.add_argument("ablation")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--phase", choices=("tune", "measure", "recheck"), default="measure")
    ap.add_argument("overrides", nargs="*")
    args, extra = ap.parse_known_args(argv)
    args.overrides = [*args.overrides, *extra]
    if os.environ.pop(STORAGE_ENV, None):
        # The sweep writes its storage URL (which may hold a password) to our stdin: never
        # on the command line, never in the environment.
        url = sys.stdin.readline().rstrip("\n")
        if not url:
            print("error: no storage URL on stdin (the sweep that started this worker is gone)",
                  file=sys.stderr)
            return 2
        args.overrides.append(f"storage={url}")
    interrupt_once()
    parent = os.environ.pop(PARENT_ENV, None)
    die_with_parent(int(parent) if parent and parent.isdigit() else None)
    try:
        return work(args)
    except KeyboardInterrupt:
        return 128 + (stopping[0] if stopping else signal.SIGINT)
    except StorageUnavailable:
        return EXIT_STORAGE_LOST  # the sweep, which sees the same outage, says so once
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception:
        # After the storage was given up (or while stopping), Optuna's own bookkeeping fails
        # in other ways (its failed tell); the cause is known and already handled.
        if outage_state["gave_up"]:
            return EXIT_STORAGE_LOST
        if stopping:
            return 128 + stopping[0]
        raise


def work(args) -> int:
    """Pop queued trials until none are left (or run a sampled study's trials)."""
    import optuna
    from optuna.trial import TrialState

    quiet_lightning()
    abl = load_ablation(args.ablation, args.overrides)
    storage = open_storage(abl.storage, wait=True)
    # The sweep reports each trial; Optuna's own warnings (an interrupted trial's traceback)
    # would only repeat it. The study's own sampler and pruner: load_study's defaults
    # (TPE, median) are not ours.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=abl.study, storage=storage, **sampler_and_pruner(abl))
    lock = file_lock(lock_path_for(abl.storage))
    held = {"n": 0}

    def acquire():
        lock.acquire()
        held["n"] += 1

    def release():
        # Called by the objective once the queued trial is ours, and again in `finally`.
        while held["n"]:
            lock.release()
            held["n"] -= 1

    seeds = stored_seed_choices(study.get_trials(deepcopy=False))
    if args.phase == "tune":
        drain([(st, tune_items(abl, setting, st),
                make_objective(abl, args.threads, args.runs, release=release,
                               tune_setting=setting))
               for setting in tuned_settings(abl)
               for st in [open_tune_study(abl, setting, storage)]], storage, abl, acquire, release)
        return 0
    if args.phase == "recheck":
        from lab.study.recheck import RECHECK_ATTR, open_recheck_study, recheck_items

        rstudy = open_recheck_study(abl, storage)
        plan = rstudy.user_attrs.get(RECHECK_ATTR)
        if plan:
            setting = next(s for s in abl.settings() if s.label == plan["setting"])
            drain([(rstudy, recheck_items(plan),
                    make_objective(abl, args.threads, args.runs, release=release,
                                   tune_setting=setting, recheck=True))],
                  storage, abl, acquire, release)
        return 0
    objective = make_objective(abl, args.threads, args.runs, release=release, seed_choices=seeds)
    if abl.sampler == "tpe":
        from optuna.study import MaxTrialsCallback

        # Workers stop once n_trials are done; concurrent ones may add up to workers - 1 more.
        if count_done(study.get_trials(deepcopy=False), abl) < abl.n_trials:
            study.optimize(objective, catch=(TrialFailed,), callbacks=[
                MaxTrialsCallback(abl.n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))])
        return 0
    drain([(study, None, objective)], storage, abl, acquire, release)
    return 0


def drain(queues: list[tuple], storage, abl, acquire, release) -> None:
    """Pop and run queued trials of the (study, items, objective) queues, in order, until none
    is waiting or running in any of them."""
    import optuna
    from optuna.trial import TrialState

    while True:
        if stopping:  # an interrupt that landed where it could not be raised
            raise KeyboardInterrupt
        for study, items, _ in queues:
            reclaim_and_requeue(study, storage, abl, items)
        acquire()
        ready = [(study, objective, waiting) for study, _, objective in queues
                 if (waiting := study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))]
        if not ready:
            release()
            running = [study for study, _, _ in queues
                       if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
            if not running:
                return
            # Another worker is busy; wait in case its trial goes stale and is re-queued.
            with quiet_optuna(), warnings_off():
                for study in running:
                    optuna.storages.fail_stale_trials(study)
            time.sleep(0.5)  # the sweep ends this much after the last trial at most
            continue
        study, objective, waiting = ready[0]
        # Optuna pops the oldest waiting trial. Claim it first, so that if this process dies
        # between the pop and the objective's first line, the trial is still known to be ours.
        claimed = trial_id(storage, study, waiting[0].number)
        storage.set_trial_user_attr(claimed, CLAIM_ATTR, worker_identity())
        storage.set_trial_user_attr(claimed, FAIL_ATTR, INTERRUPTED)
        try:
            # The objective releases the lock as soon as the queued trial is ours.
            study.optimize(objective, n_trials=1, catch=(TrialFailed,))
        finally:
            release()
        if is_deterministic_failure(storage.get_trial(claimed)):
            # Retried once now (from its checkpoint); failing again makes the pair final.
            items = next(i for s, i, _ in queues if s is study)
            with queue_lock(abl.storage, storage, study.study_name):
                queue_missing(study, abl if items is None else items)


if __name__ == "__main__":
    code = worker_main(sys.argv[1:])
    import gc

    gc.freeze()  # the interpreter's final collection over torch's objects took about 2 s
    sys.exit(code)
