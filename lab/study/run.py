"""`lab sweep`: create or resume a study, start the workers, show progress.

The report is written by the caller (`lab sweep` in lab.cli), so that nothing here depends
on the report: data flows from the study to the report, never back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

from rich.markup import escape

from lab.study.attrs import (
    FAIL_ATTR,
    FINAL_FAILURES,
    SETTING_ATTR,
    SPURIOUS_ATTR,
    final_pairs,
    pair_key,
    pair_params,
)
from lab.study.identity import create_or_load_study, name_objective
from lab.study.objective import ignore_stop_signals
from lab.study.outage import StorageUnavailable, start_retrying, stop_retrying
from lab.study.queue import (
    count_done,
    has_work,
    pair_items,
    queue_missing,
    reclaim_dead_local_trials,
)
from lab.study.schedule import WorkerPlan, check_runtime, check_sweep, check_workers, plan_workers
from lab.study.spec import Ablation, load_ablation
from lab.study.storage import (
    PARENT_ENV,
    STORAGE_ENV,
    open_storage,
    queue_lock,
    redact_url,
    storage_errors,
)
from lab.study.tune import (
    extend_edges,
    freeze_choices,
    open_tune_study,
    setting_points,
    tune_items,
    tune_objective_key,
    tuned_settings,
)


def run_sweep(path: str, overrides: list[str] | None = None, workers: int | None = None) -> int:
    """Run (or resume) a study: its tuning phase if it has one, then the measured trials.
    SIGTERM stops it like Ctrl-C, workers included."""
    received: list[int] = []

    def on_stop(signum, frame):
        # The first Ctrl-C or SIGTERM interrupts; later ones (a second Ctrl-C while the
        # workers are being stopped) must not cut the cleanup short.
        if received:
            return
        received.append(signum)
        stop_retrying()  # stopping must not wait for a database that is gone
        raise KeyboardInterrupt

    abl = load_ablation(path, overrides)
    start_retrying()
    previous = {}
    for s in (signal.SIGTERM, signal.SIGINT):
        try:
            if s == signal.SIGINT and signal.getsignal(s) is signal.SIG_IGN:
                continue  # a background sweep ignores Ctrl-C: keep it so
            previous[s] = signal.signal(s, on_stop)
        except ValueError:  # not the main thread: the signal stays as it is
            pass
    try:
        with storage_errors(abl.storage):
            return sweep(abl, overrides, workers, received)
    finally:
        for s, h in previous.items():
            # Once stopped, the sweep is on its way out: a late Ctrl-C must not turn its exit
            # code into a traceback or a kill.
            signal.signal(s, signal.SIG_IGN if received else h)


def sweep(abl: Ablation, overrides: list[str] | None, workers: int | None,
          received: list[int]) -> int:
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    # What this machine cannot run is refused before the study or any worker exists; every
    # phase then starts its workers by this plan.
    workers = plan_workers(abl.config(), check_workers(workers, "--workers"), abl.workers)
    check_sweep(abl, workers)
    storage = open_storage(abl.storage)
    study = create_or_load_study(abl, storage)
    check_runtime(study, abl.config())
    # The storage URL (it may hold a password) reaches workers by environment, never argv.
    argv = [str(abl.path), *(o for o in overrides or [] if not o.startswith("storage="))]
    if abl.tune is not None:
        rounds = 0
        while True:
            tuning = [(st, tune_items(abl, s, st)) for s in tuned_settings(abl)
                      for st in [open_tune_study(abl, s, storage)]]
            for st, _ in tuning:
                name_objective(st, tune_objective_key(abl.objective))
            points = max(len(setting_points(abl, s, st)) for s, (st, _) in
                         zip(tuned_settings(abl), tuning, strict=True))
            shape = (f"{len(tuning)} settings x up to {points} points x {len(abl.tune.seeds)} "
                     f"tuning seed(s), {abl.tune.budget:g}x the steps"
                     + (", one learning rate per arm" if abl.tune.share == "arm" else ""))
            title = f"{abl.study} (tuning)" if not rounds else f"{abl.study} (tuning, grid grown)"
            rc = run_phase(console, abl, storage, title, shape, tuning,
                           [*argv, "--phase", "tune"], workers, received)
            if rc not in (0, 1):
                return rc
            rounds += 1
            grown = extend_edges(abl, storage) if rc == 0 else 0
            if not grown:
                break
            console.print(f"  {grown} tuning point(s) added where the best point was at the "
                          "edge of its grid", highlight=False)
        tuned = freeze_choices(abl, study, storage)
        for label, t in tuned.items():
            chosen = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in t["params"].items()) or "nothing completed"
            console.print(f"  tuned {escape(label)}: {escape(chosen)}", highlight=False)
        if any(not t["params"] for t in tuned.values()):
            console.print("[red]a setting has no completed tuning trial; run the same command "
                          "again to resume.[/red]")
            return 1
    shape = (f"{len(abl.settings())} settings x {len(abl.seeds)} seeds" if abl.sampler == "grid"
             else f"sampled by {abl.sampler}")
    if abl.twins():
        shape += (f"; {len(abl.twins())} setting(s) are the same model as another and share its "
                  "trials (" + ", ".join(f"{escape(t)} = {escape(o)}"
                                         for t, o in abl.twins().items()) + ")")
    rc = run_phase(console, abl, storage, abl.study, shape, [(study, None)], argv, workers,
                   received)
    if rc:
        return rc
    while abl.sequential:
        from lab.study.seeding import next_round

        grow = next_round(abl, study)
        if not grow:
            break
        console.print(f"[bold]sequential seeds[/bold]: {len(grow)} setting(s) with an open "
                      f"comparison get one more seed: " + escape(", ".join(grow)), highlight=False)
        rc = run_phase(console, abl, storage, abl.study, "next round", [(study, None)], argv,
                       workers, received)
        if rc:
            return rc
    rc = recheck_phase(console, abl, storage, study, argv, workers, received)
    if rc:
        return rc
    failed = failed_for_good(study, abl)
    if failed:
        console.print(f"[red]{len(failed)} trials failed for good[/red] (each failed the same "
                      "way when retried; running again will not help):")
        for label, seed, reason in failed:
            console.print(f"  {escape(label)}, seed {seed}: {escape(reason)}", highlight=False)
        console.print("Fix the cause, then run those pairs in a new study (study=<new-name>).")
        return 1
    return 0


def recheck_phase(console, abl: Ablation, storage, study, argv: list[str], workers: WorkerPlan,
                  received: list[int]) -> int:
    """The primary arm's best setting again at its reference's learning rate
    (lab.study.recheck), when settings were tuned one by one."""
    from lab.study.recheck import (
        RECHECK_ATTR,
        open_recheck_study,
        plan_recheck,
        recheck_items,
        record_recheck,
    )

    if abl.tune is None or abl.sampler != "grid":
        return 0
    stored = study.user_attrs.get(RECHECK_ATTR)
    plan = ({k: v for k, v in stored.items() if k != "values"} if stored else
            plan_recheck(abl, study))
    if plan is None:
        return 0
    rstudy = open_recheck_study(abl, storage, plan)
    shape = (f"{plan['label']} at the learning rate of {plan['reference']} "
             f"({plan['point']}), {len(plan['seeds'])} seeds")
    rc = run_phase(console, abl, storage, f"{abl.study} (one common learning rate)", shape,
                   [(rstudy, recheck_items(plan))], [*argv, "--phase", "recheck"], workers,
                   received)
    record_recheck(study, rstudy)
    return rc


def run_phase(console, abl: Ablation, storage, title: str, shape: str, studies: list[tuple],
              argv: list[str], workers: WorkerPlan, received: list[int]) -> int:
    """Queue what is missing in `studies` ((study, items); items None = the ablation's
    pairs), start workers, show progress until they finish. Returns an exit code."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    def work(items):
        return abl if items is None else items

    def queue_step() -> None:
        for st, items in studies:
            with queue_lock(abl.storage, storage, st.study_name):  # atomic across machines too
                reclaim_dead_local_trials(st, storage)
                if abl.sampler == "grid":
                    queue_missing(st, work(items))

    queue_step()

    def n_done(trials: dict | None = None) -> int:
        return sum(count_done(trials[st.study_name] if trials else st.get_trials(deepcopy=False),
                              work(items), st) for st, items in studies)

    total = sum(len(items) if items is not None else
                (len(pair_items(abl, st)) if abl.sampler == "grid" else abl.n_trials)
                for st, items in studies)
    done = n_done()
    threads = workers.threads  # train.threads (default 1), as the config says
    n_workers = workers.n
    if abl.sampler == "grid":
        n_workers = min(n_workers, max(1, total - done))
    plan = replace(workers, n=n_workers)
    console.print(
        f"[bold]{escape(title)}[/bold]: {total} trials ({escape(shape)}), {done} already done; "
        f"{escape(plan.describe())}; storage {escape(redact_url(abl.storage))}"
    )
    if total - done <= 0:
        return 0
    argv = [argv[0], "--threads", str(threads), *argv[1:]]
    t0 = time.time()
    seen = {(st.study_name, t.number) for st, _ in studies
            for t in st.get_trials(deepcopy=False) if t.state.is_finished()}
    procs: list[subprocess.Popen] = []
    try:
        with Progress(TextColumn("[bold blue]{task.description}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                      TimeRemainingColumn(), console=console, transient=False) as progress:
            bar = progress.add_task(escape(title), total=total, completed=done)
            # Worker i keeps its slot (its GPU) when it is started again.
            slots = {i: spawn_worker(argv, abl.storage, plan.env(i)) for i in range(n_workers)}
            procs = list(slots.values())
            respawns = 0
            while True:
                time.sleep(0.5)
                trials = {st.study_name: st.get_trials(deepcopy=False) for st, _ in studies}
                for st, _ in studies:
                    for t in trials[st.study_name]:
                        if t.state.is_finished() and (st.study_name, t.number) not in seen:
                            seen.add((st.study_name, t.number))
                            if not t.user_attrs.get(SPURIOUS_ATTR):
                                progress.console.print(trial_line(t, abl))
                progress.update(bar, completed=n_done(trials))
                alive = [p for p in procs if p.poll() is None]
                if len(alive) < len(procs):
                    died = any(p.poll() != 0 for p in procs if p not in alive)
                    if died:
                        queue_step()  # killed, or stopped by its own SIGTERM / SIGINT
                    more = (any(has_work(st) for st, _ in studies) if abl.sampler == "grid"
                            else died and n_done() < total)
                    if more and respawns < 3 * n_workers:
                        for i, p in list(slots.items()):
                            if p.poll() is not None:
                                slots[i] = spawn_worker(argv, abl.storage, plan.env(i))
                                alive.append(slots[i])
                                respawns += 1
                    procs = alive
                if not procs:
                    break
            progress.update(bar, completed=n_done())
    except StorageUnavailable:  # past the retry window: their trials are re-queued next time
        stop_workers(procs)
        raise
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM (`kill`, `timeout`): stop the workers, whose trials fail as
        # interrupted; a worker that could not say so is failed here. A second signal must
        # not cut this short (the workers would be orphaned).
        ignore_stop_signals()
        stop_workers(procs)
        with contextlib.suppress(Exception):
            for st, _ in studies:
                reclaim_dead_local_trials(st, storage)
        console.print(f"[yellow]interrupted[/yellow]: {n_done()}/{total} trials done; run the "
                      "same command again to resume.")
        return 128 + (received[0] if received else signal.SIGINT)
    console.print(f"{escape(title)} finished in {time.time() - t0:.0f}s")
    missing = total - n_done()
    if missing > 0:
        console.print(
            f"[red]{missing} of {total} trials did not complete: the workers stopped "
            f"(see the messages above). Run the same command again to resume.[/red]"
        )
        return 1
    return 0


def failed_for_good(study, abl: Ablation) -> list[tuple[str, int, str]]:
    """(setting, seed, reason) of the pairs whose last attempt failed for a reason other than
    divergence (a result) and that will not be retried."""
    if abl.sampler != "grid":
        return []
    final = final_pairs(study.get_trials(deepcopy=False))
    out = []
    for label, _, params, seed in pair_items(abl, study):
        reason = final.get(pair_key(pair_params(params, seed)))
        if reason is not None and not reason.startswith(FINAL_FAILURES):
            out.append((label, seed, reason))
    return out


def spawn_worker(argv: list[str], storage: str, extra_env: dict[str, str] | None = None
                 ) -> subprocess.Popen:
    """A worker process; `extra_env` pins it (CUDA_VISIBLE_DEVICES: lab.study.schedule). The
    storage URL (it may hold a password) reaches it on its stdin, never argv or environment."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{STORAGE_ENV: "1",
                                                     PARENT_ENV: str(os.getpid())},
               **(extra_env or {}))
    p = subprocess.Popen([sys.executable, "-m", "lab.study.worker", *argv], env=env,
                         stdin=subprocess.PIPE)
    with contextlib.suppress(BrokenPipeError):  # a worker that died at once: seen as such
        p.stdin.write(f"{storage}\n".encode())
        p.stdin.close()
    return p


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)  # workers stop on it as on Ctrl-C
    deadline = time.time() + 30
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.time()))
        if p.poll() is None:
            p.kill()


def trial_line(t, abl: Ablation) -> str:
    """One trial as console markup; every text from the user or an exception is escaped."""
    from optuna.trial import TrialState

    label = escape(str(t.user_attrs.get(SETTING_ATTR, "?")))
    seed = escape(str(t.params.get("seed", "?")))
    wall = t.user_attrs.get("wall_time_s")
    wall_s = f" {wall:.0f}s" if isinstance(wall, int | float) else ""
    if t.state == TrialState.COMPLETE:
        v = t.value
        shown = f"{100 * v:.1f}%" if "acc" in abl.objective else f"{v:.4f}"
        return f"  [green]done[/green]   #{t.number:<4} {label}, seed {seed}: {shown}{wall_s}"
    if t.state == TrialState.PRUNED:
        return f"  [yellow]pruned[/yellow] #{t.number:<4} {label}, seed {seed}{wall_s}"
    reason = t.user_attrs.get(FAIL_ATTR) or "no reason recorded (its worker stopped reporting)"
    return f"  [red]failed[/red] #{t.number:<4} {label}, seed {seed}: {escape(str(reason))}"
