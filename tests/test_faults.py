"""Faults: retries that stay in their own study, reruns that reproduce tuned trials, study
names that cannot escape their folders, special files in a corpus, a stopped worker, a storage
outage, and secrets in storage URLs.

Every test runs in its own temporary directory (see conftest.py) on debug-sized ablations.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lab.cli import main

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"
TINY = ROOT / "tests" / "data" / "tiny.yaml"
PG_URL = os.environ.get("LAB_TEST_POSTGRES_URL")
optuna.logging.set_verbosity(optuna.logging.WARNING)

from test_sweep import completed_pairs, wait_for  # noqa: E402 - shared sweep helpers


def ablation(tmp_path, name: str, body: str, overrides: str = "eval.cost: false") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nbase: [{DEBUG}]\noverrides: {{{overrides}}}\n{body}")
    return path


def load(name: str, url: str | None = None):
    return optuna.load_study(study_name=name, storage=url or f"sqlite:///studies/{name}.db")


# --------------------------------------------------------------------------------------------
# A tuning trial that fails the same way twice stays in its tuning study


def test_failing_tuning_trial_never_queues_measured_seeds(tmp_path):
    """drain() with an objective that fails as out of memory, on a tuning study: the retry
    queues that tuning trial again, never the main study's (setting, seed) pairs."""
    from lab.study.attrs import FAIL_ATTR, SEED_HIGH, SEED_LOW
    from lab.study.identity import create_or_load_study
    from lab.study.objective import TrialFailed
    from lab.study.queue import queue_missing
    from lab.study.spec import load_ablation
    from lab.study.storage import open_storage
    from lab.study.tune import open_tune_study, tune_items
    from lab.study.worker import drain

    abl = load_ablation(ablation(tmp_path, "tuneoom", "space: {model.n_layers: [1]}\n"
                                 "seeds: [0, 1]\ntune: {space: {train.lr: [1.0e-3]}, seeds: [100]}\n"))
    storage = open_storage(abl.storage)
    create_or_load_study(abl, storage)
    setting = abl.settings()[0]
    tuning = open_tune_study(abl, setting, storage)
    items = tune_items(abl, setting, tuning)
    queue_missing(tuning, items)

    def out_of_memory(trial):
        trial.suggest_float("train.lr", 1e-4, 1e-1)
        trial.suggest_int("seed", SEED_LOW, SEED_HIGH)
        trial.set_user_attr(FAIL_ATTR, "out of memory: can't allocate memory")
        raise TrialFailed("out of memory")

    drain([(tuning, items, out_of_memory)], storage, abl, lambda: None, lambda: None)
    trials = tuning.get_trials()
    # 1 point x 1 tuning seed, failed twice (retried once), and nothing else.
    assert [t.params["seed"] for t in trials] == [100, 100], [t.params for t in trials]
    assert all(t.state == TrialState.FAIL for t in trials)
    assert not load("tuneoom").trials  # the main study was not touched


# --------------------------------------------------------------------------------------------
# Study names are names, not paths


def nothing_written(where: Path) -> bool:
    return not any((where / d).exists() for d in ("studies", "runs", "reports"))


@pytest.mark.parametrize("name", ["../../trav", "a/b", "..", "x..y", "a\\b", ".hidden", "-x",
                                  "a b", "caf\u00e9", "x" * 101, ""])
def test_study_name_that_is_not_a_plain_name_is_refused(name, tmp_path, capsys):
    for cmd in ("sweep", "report", "export", "rerun"):
        args = [cmd, str(TINY), *(["loops=1"] if cmd == "rerun" else []), f"study={name}"]
        assert main(args) == 2, cmd
        err = capsys.readouterr().err
        assert "not a plain name" in err and "study=loops-v2" in err and "Traceback" not in err
    assert nothing_written(tmp_path) and nothing_written(tmp_path.parent.parent)


def test_ablation_name_that_is_a_path_is_refused(tmp_path, capsys):
    path = tmp_path / "trav.yaml"
    path.write_text(TINY.read_text().replace("name: tiny", "name: ../../trav"))
    assert main(["sweep", str(path), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "name '../../trav' is not a plain name" in err and "trav.yaml" in err
    assert nothing_written(tmp_path) and nothing_written(tmp_path.parent.parent)
    # Config overrides append a hash to a plain name, which stays a plain name.
    from lab.study.spec import load_ablation

    assert load_ablation(TINY, ["train.steps=7"]).study.startswith("tiny-")


# --------------------------------------------------------------------------------------------
# A FIFO or a device behind a symlink in a text corpus: skipped and counted


def test_special_files_in_a_corpus_are_skipped_without_blocking(tmp_path):
    import threading

    from test_text import random_files, split_of, text, write_corpus

    root = write_corpus(tmp_path / "c", random_files(0))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (root / "d0" / "pipe.py").symlink_to(fifo)  # opening it for reading blocks until a writer
    (root / "d1" / "zero.py").symlink_to("/dev/zero")  # a device that never ends
    done, unblocked = threading.Event(), []

    def watchdog():
        # A reader blocked on the FIFO is released by opening its other end (so that a
        # failing test fails instead of hanging); that it had to be is the failure.
        if done.wait(10.0):
            return
        while not done.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                unblocked.append(True)
            except OSError:  # no reader right now
                pass
            done.wait(0.1)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        task = text(root, tmp_path)
    finally:
        done.set()
    assert not unblocked, "reading the corpus blocked on a FIFO"
    prov = task.provenance()
    assert prov["skipped_special"] == 2 and prov["skipped_binary"] == 0
    rels = set(split_of(task))
    assert not rels & {"d0/pipe.py", "d1/zero.py"} and "d0/f0.py" in rels


# --------------------------------------------------------------------------------------------
# `lab rerun` reproduces a tuned trial and refuses what it cannot reproduce

TUNED = """space: {model.n_layers: [1, 2]}
seeds: [0, 1]
objective: val/loss
tune: {space: {train.lr: {low: 2.0e-2, high: 5.0e-2, log: true}}, points: 5, seeds: [100]}
"""


def test_rerun_of_a_tuned_trial_reproduces_it(tmp_path, capsys):
    """A measured trial run by the worker's own objective at a tuned learning rate that is not
    the base config's: the rerun prints its stored value next to an identical new one."""
    import yaml

    from lab.study.attrs import TUNED_ATTR
    from lab.study.identity import create_or_load_study
    from lab.study.objective import TrialFailed, make_objective
    from lab.study.queue import queue_missing
    from lab.study.spec import load_ablation

    path = ablation(tmp_path, "rr", TUNED)
    assert main(["rerun", str(path), "n_layers=1"]) == 2  # no study yet: nothing trains
    assert "no study 'rr'" in capsys.readouterr().err and not Path("runs").exists()

    abl = load_ablation(path)
    study = create_or_load_study(abl)
    assert abl.config().train.lr not in (0.02, 0.05)
    study.set_user_attr(TUNED_ATTR, {s.label: {"params": {"train.lr": 0.05}, "value": 1.0}
                                     for s in abl.settings()})
    queue_missing(study, [(s.label, s.group, s.params, seed) for s, seed in abl.pairs()
                          if s.label == "n_layers=1" and seed == 1])
    study.optimize(make_objective(abl, 1, "runs"), n_trials=1, catch=(TrialFailed,))
    stored = study.trials[0]
    assert stored.state == TrialState.COMPLETE and stored.params["seed"] == 1

    assert main(["rerun", str(path), "n_layers=1", "seed=1"]) == 0
    out = capsys.readouterr().out
    assert f"val/loss: stored trial {stored.value!r}, this run {stored.value!r} (identical)" in out
    run = max(Path("runs/rr-rerun").iterdir())
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 0.05

    # A seed the study does not have is refused before training; one without a completed
    # trial trains with a note.
    runs = sorted(Path("runs/rr-rerun").iterdir())
    assert main(["rerun", str(path), "n_layers=1", "seed=7"]) == 2
    err = capsys.readouterr().err
    assert "has no seed 7 (its seeds: 0, 1)" in err and "seeds=[0, 1, 7]" in err
    assert sorted(Path("runs/rr-rerun").iterdir()) == runs
    assert main(["rerun", str(path), "n_layers=2", "seed=0"]) == 0
    assert "no completed trial of 'n_layers=2', seed 0" in capsys.readouterr().err


def test_rerun_of_a_twin_reruns_its_owner_trial(tmp_path, capsys):
    """A setting that is the same model as an earlier one has no trials of its own."""
    from lab.study.identity import create_or_load_study
    from lab.study.objective import TrialFailed, make_objective
    from lab.study.queue import queue_missing
    from lab.study.spec import load_ablation

    path = ablation(tmp_path, "tw", "space:\n  model.family:\n    looped: {model.loops: [1]}\n"
                    "    uniform: {model.n_layers: [3]}\nseeds: [0]\n",
                    "model.n_layers: 3, eval.cost: false")
    abl = load_ablation(path)
    assert abl.twins() == {"uniform": "looped"}
    study = create_or_load_study(abl)
    queue_missing(study, abl)
    study.optimize(make_objective(abl, 1, "runs"), n_trials=1, catch=(TrialFailed,))
    (stored,) = study.trials
    assert main(["rerun", str(path), "uniform"]) == 0
    captured = capsys.readouterr()
    assert "'uniform' is the same model as 'looped'" in captured.err
    assert f"stored trial {stored.value!r}, this run {stored.value!r} (identical)" in captured.out


def test_rerun_refuses_a_missing_storage_or_study(tmp_path, capsys):
    path = ablation(tmp_path, "rr", TUNED)
    for extra, expect in ((["storage=sqlite:///nowhere/x.db"], "does not exist"),
                          (["study=nosuch"], "no study 'nosuch'")):
        assert main(["rerun", str(path), "n_layers=1", *extra]) == 2
        err = capsys.readouterr().err
        assert expect in err and "Traceback" not in err
    assert not Path("runs").exists() and not Path("nowhere").exists()


# --------------------------------------------------------------------------------------------
# SIGTERM or SIGINT to one worker: its pair is re-queued at once, as after SIGKILL


def start_sweep(abl: Path, *args, **env_extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lab.cli", "sweep", str(abl), *args],
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env_extra},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["sigterm", "sigint"])
def test_stopped_worker_pair_is_requeued_at_once(sig, tmp_path):
    abl = ablation(tmp_path, "stop", "space: {model.n_layers: [1]}\nseeds: [0]\n",
                   "eval.cost: false, train.steps: 100")
    # (Not the default storage: the worker must be handed it.)
    proc = start_sweep(abl, "--workers", "1", "storage=sqlite:///elsewhere/stop.db")

    def running_pid():
        # A running trial that has written its first checkpoint: stop it mid-trial.
        if not list(Path("runs/stop").glob("*/checkpoints/last.ckpt")):
            return None  # (cheaper to poll than the study)
        t = load("stop", "sqlite:///elsewhere/stop.db").trials[0]
        return t.user_attrs["lab.worker"]["pid"] if t.state == TrialState.RUNNING else None

    found = []
    wait_for(lambda: found.append(running_pid()) or found[-1] is not None, every=0.1)
    os.kill(found[-1], sig)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert "did not complete" not in err and "Traceback" not in err
    first, retry = load("stop", "sqlite:///elsewhere/stop.db").trials
    assert first.state == TrialState.FAIL and first.user_attrs["lab.fail_reason"] == "interrupted"
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["lab.pair"] == first.user_attrs["lab.pair"]
    assert retry.user_attrs["resumed_from_step"] > 0  # from the stopped trial's checkpoint


# --------------------------------------------------------------------------------------------
# Secrets: a password in a storage URL reaches no message, lock name or worker environment


def test_password_with_an_at_sign_stays_out_of_messages(capsys):
    from lab.provenance import normalize_url, redact_url, scrub

    url = "postgresql://lab:stro@ngPw77x@127.0.0.1:1/lab?password=q%40z&sslmode=disable"
    assert redact_url(url) == "postgresql://lab:***@127.0.0.1:1/lab?sslmode=disable"
    assert normalize_url(url).startswith("postgresql://lab:stro%40ngPw77x@127.0.0.1:1/lab?")
    assert scrub("no host ngPw77x@x; stro@ngPw77x, stro%40ngPw77x, q@z", url) == (
        "no host ngPw77x@x; ***, ***, ***")
    assert main(["sweep", str(TINY), f"storage={url}"]) == 2
    err = capsys.readouterr().err
    assert "cannot open storage 'postgresql://lab:***@127.0.0.1:1/lab" in err
    assert "ngPw77x" not in err and "q@z" not in err and "Traceback" not in err


def test_lock_file_name_holds_no_password_and_sits_in_a_private_folder(tmp_path, monkeypatch):
    import stat

    from lab.study.storage import lock_path_for

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    (tmp_path / f"lab-{os.getuid()}").mkdir(mode=0o755)  # made world-readable by someone
    a = lock_path_for("postgresql://lab:hunter2@db:5432/lab")
    b = lock_path_for("postgresql://lab:other@db:5432/lab?password=x")
    assert a == b != lock_path_for("postgresql://lab:hunter2@db2:5432/lab")
    folder = Path(a).parent
    assert folder == tmp_path / f"lab-{os.getuid()}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()
    assert "hunter2" not in a and Path(a).name.startswith("lab-study-")


def test_workers_get_the_storage_url_neither_in_argv_nor_in_environment():
    import psutil

    from lab.study.run import spawn_worker

    p = spawn_worker([str(TINY), "--threads", "1"], "postgresql://lab:hunter2@127.0.0.1:1/lab")
    try:
        proc = psutil.Process(p.pid)
        env, cmd = proc.environ(), proc.cmdline()
    finally:
        p.kill()
        p.wait()
    assert "lab.study.worker" in " ".join(cmd)
    assert "hunter2" not in " ".join(cmd) and "hunter2" not in str(env)
    assert not [k for k, v in env.items() if "127.0.0.1:1" in v]


# --------------------------------------------------------------------------------------------
# A PostgreSQL outage: storage calls ride it out; past the retry window, one message


def needs_postgres(f):
    skip = pytest.mark.skipif(not PG_URL, reason="no PostgreSQL server: set LAB_TEST_POSTGRES_URL")
    return pytest.mark.postgres(skip(f))


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of the test's own (initdb into a fresh folder, from the binaries of
    the server that LAB_TEST_POSTGRES_URL names), which the test stops and starts with pg_ctl
    on its data directory; the shared server stays up for every other test."""
    import shutil
    import socket
    import tempfile
    from glob import glob
    from types import SimpleNamespace

    bins = [str(Path(p).parent) for p in sorted(glob("/usr/lib/postgresql/*/bin/initdb"))]
    found = shutil.which("initdb")
    bindir = Path(found).parent if found else Path(bins[-1]) if bins else None
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    root = Path(tempfile.mkdtemp(prefix="lab-pg-"))
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
    (root / "pw").write_text("pg-s3cret\n")
    if as_user:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pw", "postgres")
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(root / "data"), "-U", "lab",
                    "--auth=scram-sha-256", f"--pwfile={root / 'pw'}", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True, timeout=120)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def ctl(*args):
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(root / "data"), *args],
                       check=True, capture_output=True, timeout=60)

    def start():
        ctl("-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "-l", str(root / "log"), "-w", "start")

    start()
    try:
        yield SimpleNamespace(url=f"postgresql://lab:pg-s3cret@127.0.0.1:{port}/postgres",
                              start=start, stop=lambda: ctl("-m", "fast", "-w", "stop"))
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            ctl("-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def running_with_checkpoint(name: str, url: str) -> bool:
    if not list(Path(f"runs/{name}").glob("*/checkpoints/last.ckpt")):
        return False
    return any(t.state == TrialState.RUNNING for t in load(name, url).trials)


@needs_postgres
def test_postgres_outage_mid_sweep_is_ridden_out(own_postgres, tmp_path):
    pg = own_postgres
    abl = ablation(tmp_path, "outage", "space: {model.n_layers: [1]}\nseeds: [0, 1]\n",
                   "eval.cost: false, train.steps: 100")
    proc = start_sweep(abl, f"storage={pg.url}", "--workers", "1")
    wait_for(lambda: running_with_checkpoint("outage", pg.url), every=0.2)
    pg.stop()  # mid-trial: the worker's reports and heartbeats, the sweep's progress fail
    time.sleep(4.0)
    pg.start()
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "OperationalError" not in err, err
    pairs = completed_pairs(load("outage", pg.url))
    assert len(pairs) == 2 and set(pairs.values()) == {1}


@needs_postgres
def test_postgres_outage_past_the_retry_window_stops_with_one_message(own_postgres, tmp_path):
    pg = own_postgres
    abl = ablation(tmp_path, "gone", "space: {model.n_layers: [1]}\nseeds: [0]\n",
                   "eval.cost: false, train.steps: 100")
    proc = start_sweep(abl, f"storage={pg.url}", "--workers", "1", LAB_STORAGE_RETRY_S="3")
    wait_for(lambda: running_with_checkpoint("gone", pg.url), every=0.2)
    pg.stop()
    _, err = proc.communicate(timeout=120)
    pg.start()
    assert proc.returncode == 1, err
    assert err.count("has been unreachable for") == 1 and "Nothing is lost" in err, err
    assert "Traceback" not in err and "pg-s3cret" not in err, err
    # Nothing lost: the cut trial is still RUNNING (its worker is gone) and the next start
    # re-queues it; it resumes from its checkpoint.
    (cut,) = load("gone", pg.url).trials
    assert cut.state == TrialState.RUNNING
    assert main(["sweep", str(abl), f"storage={pg.url}", "--workers", "1"]) == 0
    first, retry = load("gone", pg.url).trials
    assert first.user_attrs["lab.fail_reason"].startswith("interrupted")
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_step"] > 0


@needs_postgres
def test_storage_call_gives_up_after_the_retry_window(own_postgres, monkeypatch):
    from lab.study import outage
    from lab.study.storage import open_storage

    pg = own_postgres
    storage = open_storage(pg.url, heartbeat=False)
    assert storage.get_all_studies() == []
    monkeypatch.setenv("LAB_STORAGE_RETRY_S", "2")
    monkeypatch.setitem(outage.state, "gave_up", False)
    pg.stop()
    t0 = time.monotonic()
    with pytest.raises(outage.StorageUnavailable, match="unreachable for") as e:
        storage.get_all_studies()
    assert 1.0 < time.monotonic() - t0 < 10 and "pg-s3cret" not in str(e.value)
    pg.start()
    monkeypatch.setitem(outage.state, "gave_up", False)
    assert storage.get_all_studies() == []  # back, through a fresh connection
