"""Hardening of the sweep machinery: what a hostile user (or a bad day) does to a study.

Every test runs in its own temporary directory (see conftest.py) on debug-sized ablations.
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lab.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "data" / "tiny.yaml"
PG_URL = os.environ.get("LAB_TEST_POSTGRES_URL")


def needs_postgres(f):
    skip = pytest.mark.skipif(not PG_URL, reason="no PostgreSQL server: set LAB_TEST_POSTGRES_URL")
    return pytest.mark.postgres(skip(f))


optuna.logging.set_verbosity(optuna.logging.WARNING)


def ablation(tmp_path, name: str, body: str, overrides: str = "eval.cost: false") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nbase: [{ROOT / 'configs/debug.yaml'}]\n"
                    f"overrides: {{{overrides}}}\n{body}")
    return path


from test_sweep import completed_pairs as completed  # noqa: E402 - shared sweep helpers
from test_sweep import wait_for  # noqa: E402


def load(name: str, url: str | None = None):
    return optuna.load_study(study_name=name, storage=url or f"sqlite:///studies/{name}.db")




def env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def start_sweep(abl: Path, *args, **env_extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lab.cli", "sweep", str(abl), *args],
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env(**env_extra),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


# --------------------------------------------------------------------------------------------
# 1. Growing the seeds of a finished study


def test_more_seeds_run_just_the_new_pairs(tmp_path):
    abl = ablation(tmp_path, "grow", "space: {model.n_layers: [1, 2]}\nseeds: [0]\n")
    assert main(["sweep", str(abl), "--workers", "1"]) == 0
    before = [(t.number, t.value) for t in load("grow").trials]
    assert main(["sweep", str(abl), "--workers", "1", "seeds=[0,1,2]"]) == 0
    study = load("grow")
    assert all(t.state == TrialState.COMPLETE for t in study.trials), [
        t.user_attrs.get("lab.fail_reason") for t in study.trials]
    pairs = completed(study)
    assert len(pairs) == 6 and set(pairs.values()) == {1}
    assert [(t.number, t.value) for t in study.trials[:2]] == before
    # Rerunning adds nothing; fewer seeds than stored is fine too.
    assert main(["sweep", str(abl), "--workers", "1", "seeds=[0,1,2]"]) == 0
    assert main(["sweep", str(abl), "--workers", "1", "seeds=[1]"]) == 0
    assert len(load("grow").trials) == 6


def test_study_with_categorical_seed_keeps_working_and_refuses_growth(tmp_path, capsys):
    """Studies made before seeds were integers stored a categorical seed distribution."""
    from optuna.distributions import CategoricalDistribution

    from lab.study.identity import create_or_load_study
    from lab.study.spec import load_ablation

    abl = ablation(tmp_path, "old", "space: {model.n_layers: [1, 2]}\nseeds: [0, 1]\n")
    study = create_or_load_study(load_ablation(abl))
    study.add_trial(optuna.trial.create_trial(
        params={"model.n_layers": 1, "seed": 0}, value=0.5,
        distributions={"model.n_layers": CategoricalDistribution([1, 2]),
                       "seed": CategoricalDistribution([0, 1])},
        user_attrs={"lab.setting": "n_layers=1", "lab.pair": '{"model.n_layers": 1, "seed": 0}'}))
    assert main(["sweep", str(abl), "--workers", "1", "seeds=[0,1,2]"]) == 2
    err = capsys.readouterr().err
    assert "seeds" in err and "study=old-v2" in err and "Traceback" not in err
    assert len(load("old").trials) == 1
    assert main(["sweep", str(abl), "--workers", "1"]) == 0
    study = load("old")
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len(completed(study)) == 4


# --------------------------------------------------------------------------------------------
# 2. The study's identity holds every key that can change a result


def config_keys(cls, prefix="") -> list[str]:
    import dataclasses

    keys = []
    for f in dataclasses.fields(cls):
        default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else f.default)
        if dataclasses.is_dataclass(default):
            keys += config_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_every_config_key_is_in_the_identity_or_excluded_with_a_reason(tmp_path):
    from lab.config import LabConfig
    from lab.study.spec import NON_IDENTITY_KEYS, load_ablation

    abl = load_ablation(ablation(tmp_path, "ident", "space: {model.n_layers: [1, 2]}\n"))
    _, ident = abl.fingerprint()
    keys = config_keys(LabConfig)
    assert "train.precision" in keys and "model.loops" in keys
    for key in keys:
        in_identity = key in ident["base"] or any(k.startswith(key + ".") for k in ident["base"])
        assert in_identity != (key in NON_IDENTITY_KEYS), key
    for key, reason in NON_IDENTITY_KEYS.items():
        assert key in keys and len(reason) > 10, key
    for key in ("train.precision", "train.accelerator", "train.devices", "train.strategy"):
        assert key in ident["base"]


def test_changed_precision_is_refused(tmp_path, capsys):
    from lab.study.identity import create_or_load_study
    from lab.study.spec import load_ablation

    path = ablation(tmp_path, "prec", "space: {model.n_layers: [1, 2]}\n")
    create_or_load_study(load_ablation(path))
    path.write_text(path.read_text().replace("{eval.cost: false}",
                                             "{eval.cost: false, train.precision: 64-true}"))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.precision" in err and "different config" in err


def test_study_made_with_the_older_identity_is_migrated(tmp_path):
    from lab.study.attrs import BASE_CONFIG_ATTR, FINGERPRINT_ATTR, IDENTITY_ATTR
    from lab.study.identity import create_or_load_study
    from lab.study.spec import ADDED_IDENTITY_KEYS, identity_hash, load_ablation

    abl = load_ablation(ablation(tmp_path, "mig", "space: {model.n_layers: [1, 2]}\n"))
    fp, ident = abl.fingerprint()

    def make_old(precision="auto"):
        study = create_or_load_study(abl)
        old = {**ident, "base": {k: v for k, v in ident["base"].items()
                                 if k not in ADDED_IDENTITY_KEYS}}
        study.set_user_attr(IDENTITY_ATTR, old)
        study.set_user_attr(FINGERPRINT_ATTR, identity_hash(old))
        base = dict(study.user_attrs[BASE_CONFIG_ATTR])
        base["train"] = {**base["train"], "precision": precision}
        study.set_user_attr(BASE_CONFIG_ATTR, base)
        return study

    make_old()
    study = create_or_load_study(abl)  # migrated, not refused
    assert study.user_attrs[FINGERPRINT_ATTR] == fp
    assert study.user_attrs[IDENTITY_ATTR]["base"]["train.precision"] == "auto"
    assert create_or_load_study(abl).user_attrs[FINGERPRINT_ATTR] == fp

    # A study whose stored config ran another precision is not silently adopted.
    optuna.delete_study(study_name="mig", storage="sqlite:///studies/mig.db")
    make_old("64-true")
    from lab.errors import LabError
    with pytest.raises(LabError, match="train.precision"):
        create_or_load_study(abl)


# --------------------------------------------------------------------------------------------
# 4. The storage password never reaches disk, study attributes, process lists or messages


def test_provenance_argv_has_no_password(monkeypatch):
    from lab.provenance import provenance

    monkeypatch.setattr(sys, "argv", [
        "lab", "sweep", "loops", "storage=postgresql://lab:hunter2@db:5432/lab",
        "storage=postgresql://lab@db/lab?password=hunter2&sslmode=require",
        "postgresql://u:hunter2@h/db"])
    argv = provenance()["argv"]
    assert "hunter2" not in str(argv)
    assert argv[3].startswith("storage=postgresql://lab:")
    assert "sslmode=require" in argv[4]


def test_password_in_query_is_not_in_error_messages(capsys):
    url = "postgresql://lab@127.0.0.1:1/nope?password=hunter2"
    assert main(["sweep", str(TINY), f"storage={url}"]) == 2
    err = capsys.readouterr().err
    assert "cannot open storage" in err and "hunter2" not in err


@needs_postgres
def test_storage_password_stays_out_of_workers_argv_runs_and_attrs(tmp_path):
    import uuid

    import psutil

    secret = PG_URL.split("//", 1)[1].split("@", 1)[0]  # user:password
    assert ":" in secret
    name = f"pw-{uuid.uuid4().hex[:8]}"
    abl = ablation(tmp_path, "pw", "space: {model.n_layers: [1]}\nseeds: [0, 1]\n")
    proc = start_sweep(abl, f"storage={PG_URL}", f"study={name}", "--workers", "1",
                       "train.steps=60")
    cmdlines = []

    def worker_seen():
        kids = psutil.Process(proc.pid).children(recursive=True)
        cmdlines.extend(" ".join(k.cmdline()) for k in kids)
        return any("lab.study.worker" in c for c in cmdlines)

    wait_for(worker_seen, every=0.1)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    workers = [c for c in cmdlines if "lab.study.worker" in c]  # (a fork shows its parent's)
    assert workers and not [c for c in workers if secret in c]
    assert secret not in err
    study = load(name, PG_URL)
    assert secret not in str(study.user_attrs) and secret not in str(
        [t.user_attrs for t in study.trials])
    files = list(Path("runs").rglob("provenance.json"))
    assert files and not [f for f in files if secret in f.read_text()]


@needs_postgres
def test_pgpassword_lets_the_url_go_without_password(monkeypatch):
    from sqlalchemy.engine import make_url

    from lab.errors import LabError
    from lab.study.storage import open_storage

    u = make_url(PG_URL)
    bare = f"postgresql://{u.username}@{u.host}:{u.port}/{u.database}"
    assert u.password
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with pytest.raises(LabError, match="cannot open storage"):
        open_storage(bare, heartbeat=False)
    monkeypatch.setenv("PGPASSWORD", u.password)
    storage = open_storage(bare, heartbeat=False)
    assert storage.get_all_studies() is not None


# --------------------------------------------------------------------------------------------
# 5. Signals: Ctrl-C (twice), SIGTERM and SIGKILL to the parent stop the workers too


def running_with_workers(proc):
    """Wait until a trial runs; the pids of the sweep's workers."""
    import psutil

    wait_for(lambda: any(t.state == TrialState.RUNNING and "lab.worker" in t.user_attrs
                         for t in load("tiny").trials), every=0.1)
    return [p for p in psutil.Process(proc.pid).children()
            if "lab.study.worker" in " ".join(p.cmdline())]


def assert_stopped_cleanly(workers, timeout=45.0):
    import psutil

    gone, alive = psutil.wait_procs(workers, timeout=timeout)
    assert not alive, [p.pid for p in alive]
    trials = load("tiny").trials
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    reasons = [t.user_attrs.get("lab.fail_reason") for t in failed]
    assert failed and all(str(r).startswith("interrupted") for r in reasons), reasons


@pytest.mark.parametrize("how", ["sigterm", pytest.param("sigkill", marks=pytest.mark.slow)])
def test_parent_killed_stops_its_workers(how):
    proc = start_sweep(TINY, "--workers", "2", "train.steps=3000", "study=tiny")  # cut mid-trial
    workers = running_with_workers(proc)
    assert len(workers) == 2
    proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode != 0
    if how == "sigterm":
        assert "run the same command again to resume" in err and "Traceback" not in err
    assert_stopped_cleanly(workers)


# Slow (both gaps): the sweep's first Ctrl-C is tested fast in test_sweep (resume) and
# test_faults (a worker's SIGINT); this checks that a second one cannot cut the stop short.
@pytest.mark.parametrize("gap", [pytest.param(0.2, marks=pytest.mark.slow),
                                 pytest.param(1.5, marks=pytest.mark.slow)])
def test_ctrl_c_twice_leaves_no_running_trial_and_no_traceback(gap):
    proc = start_sweep(TINY, "--workers", "2", "train.steps=3000", "study=tiny")  # cut mid-trial
    workers = running_with_workers(proc)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(gap)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130
    assert "Traceback" not in err and "UnboundLocalError" not in err, err
    assert "run the same command again to resume" in err
    assert_stopped_cleanly(workers)


# --------------------------------------------------------------------------------------------
# 6. Deterministic failures: retried once, then final; the sweep exits non-zero

OOM_TASK = '''
from lab.tasks.pointer import PointerTask


class OomTask(PointerTask):
    """Fails as the CPU allocator does when memory runs out, on every training batch."""

    def sample(self, n, generator, split="train"):
        if split == "train":
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: "
                               "can't allocate memory: you tried to allocate 1099511627776 bytes.")
        return super().sample(n, generator, split)
'''


@pytest.fixture
def oom_task(tmp_path, monkeypatch):
    (tmp_path / "oomtask.py").write_text(OOM_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{ROOT}")
    return "oomtask:OomTask"


def test_deterministic_failure_is_retried_once_then_final(tmp_path, oom_task, capfd):
    abl = ablation(tmp_path, "oom", f"space: {{task.name: ['{oom_task}'], model.n_layers: [1, 2]}}\n"
                   "seeds: [0]\n")
    assert main(["sweep", str(abl), "--workers", "1"]) == 1
    err = capfd.readouterr().err
    assert "failed for good" in err and "[enforce fail at alloc_cpu.cpp:127]" in err
    assert "Run the same command again" not in err
    trials = load("oom").trials
    assert len(trials) == 4 and all(t.state == TrialState.FAIL for t in trials)
    assert all(t.user_attrs["lab.fail_reason"].startswith("out of memory") for t in trials)
    # Running again neither retries nor pretends success.
    assert main(["sweep", str(abl), "--workers", "1"]) == 1
    assert len(load("oom").trials) == 4


def test_failure_reasons_are_classified():
    import torch

    from lab.errors import LabError
    from lab.study.objective import TrialTimeout, failure_reason
    from lab.train import CheckpointError

    assert failure_reason(torch.OutOfMemoryError("CUDA out of memory")).startswith("out of memory")
    assert failure_reason(CheckpointError("bad")).startswith("corrupt checkpoint")
    assert failure_reason(LabError("cannot resume x")).startswith("config error")
    assert failure_reason(TrialTimeout("60 s")).startswith("timeout")
    assert failure_reason(ValueError("x")) == "error: ValueError: x"


# --------------------------------------------------------------------------------------------
# 11. Resuming loads the checkpoint as weights only


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_tampered_checkpoint_runs_no_code_on_resume(debug_cfg, tmp_path, monkeypatch):
    import torch

    from lab.train import CheckpointError, train

    ov = ["eval.cost=false", "name=r", "train.steps=20"]
    res = train(debug_cfg(*ov))
    ckpt = Path(res.run_dir) / "checkpoints" / "last.ckpt"
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "x": Evil(str(marker))}, ckpt)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="cannot be read as weights"):
        train(debug_cfg(*ov, "resume=true"))
    assert not marker.exists()
    # A genuine checkpoint still resumes.
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    res = train(debug_cfg("eval.cost=false", "name=s", "train.steps=20"))
    assert train(debug_cfg("eval.cost=false", "name=s", "train.steps=20", "resume=true")).status == "ok"


# --------------------------------------------------------------------------------------------
# 10. Labels and failure reasons are text, not console markup


def test_trial_lines_escape_markup(tmp_path):
    from rich.console import Console

    from lab.study.run import trial_line
    from lab.study.spec import load_ablation

    abl = load_ablation(ablation(tmp_path, "mk", "space: {model.n_layers: [1]}\n"))
    reason = "out of memory: [enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator"
    failed = optuna.trial.create_trial(
        state=TrialState.FAIL, params={"seed": 0},
        distributions={"seed": optuna.distributions.IntDistribution(0, 9)},
        user_attrs={"lab.setting": "name=[/x]", "lab.fail_reason": reason})
    done = optuna.trial.create_trial(
        value=0.5, params={"seed": 0},
        distributions={"seed": optuna.distributions.IntDistribution(0, 9)},
        user_attrs={"lab.setting": "[bold]x[/bold]"})
    console = Console(record=True, width=200)
    console.print(trial_line(failed, abl))
    console.print(trial_line(done, abl))
    text = console.export_text()
    assert "name=[/x]" in text and "[enforce fail at alloc_cpu.cpp:127]" in text
    assert "[bold]x[/bold]" in text


def test_error_messages_escape_markup(capsys):
    assert main(["sweep", "ablations/[/x][bold].yaml"]) == 2
    err = capsys.readouterr().err
    assert "[/x][bold]" in err and "does not exist" in err


# --------------------------------------------------------------------------------------------
# 8. Validation: refuse what is invalid (exit 2, the key named); bound evaluation; timeouts


@pytest.mark.parametrize("args,expect", [
    (["seeds=[0, 0, 1]"], "seeds"),
    (["seeds=[-1, 0]"], "seeds"),
    (["train.weight_decay=-0.1"], "train.weight_decay"),
    (["train.weight_decay=nan"], "train.weight_decay"),
    (["model.band=[0,"], "model.band"),
    (["seeds=[0,"], "seeds"),
    (["model.loops=1000"], "model.loops"),
    (["eval.extrapolate=[1, 500]"], "eval.extrapolate"),
    (["trial_timeout=-5"], "trial_timeout"),
    (["seed=-3"], "seed"),
], ids=lambda v: str(v))
def test_invalid_input_is_refused_with_the_key_named(args, expect, capsys):
    assert main(["sweep", str(TINY), *args]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err
    assert not Path("studies").exists() and not Path("runs").exists()


def test_trial_timeout_fails_the_trial_with_its_reason(tmp_path):
    abl = ablation(tmp_path, "slow", "space: {model.n_layers: [1]}\nseeds: [0]\n"
                   "trial_timeout: 3\n", "eval.cost: false, train.steps: 100000")
    t0 = time.time()
    assert main(["sweep", str(abl), "--workers", "1"]) == 1
    assert time.time() - t0 < 90
    trials = load("slow").trials
    assert len(trials) == 2  # retried once, then final
    assert all(t.user_attrs["lab.fail_reason"].startswith("timeout") for t in trials)


# --------------------------------------------------------------------------------------------
# 3. Two machines on one PostgreSQL study: the queue step is atomic across them

LOCK_SCRIPT = """
import sys, time
from lab.study.storage import open_storage, queue_lock
url, name = sys.argv[1], sys.argv[2]
storage = open_storage(url, heartbeat=False)
print("ready", flush=True)
with queue_lock(url, storage, name):
    print(time.time(), flush=True)
"""


@needs_postgres
def test_queue_lock_holds_across_hosts(tmp_path):
    import uuid

    from lab.study.storage import open_storage, queue_lock

    name = f"lock-{uuid.uuid4().hex[:8]}"
    (tmp_path / "other").mkdir()
    storage = open_storage(PG_URL, heartbeat=False)
    with queue_lock(PG_URL, storage, name):
        other = subprocess.Popen(  # another machine: its own temp dir and host name
            [sys.executable, "-c", LOCK_SCRIPT, PG_URL, name], stdout=subprocess.PIPE, text=True,
            env=env(TMPDIR=str(tmp_path / "other"), LAB_HOST="other-host"))
        assert other.stdout.readline().strip() == "ready"
        time.sleep(2.0)
        released = time.time()
    out, _ = other.communicate(timeout=60)
    assert other.returncode == 0
    assert float(out.strip()) >= released


@needs_postgres
def test_two_hosts_run_every_pair_exactly_once(tmp_path):
    import uuid

    name = f"hosts-{uuid.uuid4().hex[:8]}"
    procs = []
    for host in ("host-a", "host-b"):
        tmp = tmp_path / host
        tmp.mkdir()
        procs.append(start_sweep(TINY, f"storage={PG_URL}", f"study={name}", "--workers", "1",
                                 TMPDIR=str(tmp), LAB_HOST=host))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    study = load(name, PG_URL)
    pairs = completed(study)
    assert len(pairs) == 6 and set(pairs.values()) == {1}  # a twin shares its trials
    queued = Counter(t.user_attrs["lab.pair"] for t in study.trials if t.user_attrs.get("lab.queued"))
    assert len(queued) == 6 and set(queued.values()) == {1}, queued
    hosts = {t.user_attrs["lab.worker"]["host"] for t in study.trials if "lab.worker" in t.user_attrs}
    assert hosts == {"host-a", "host-b"}


# --------------------------------------------------------------------------------------------
# 9. Corrupt or read-only storage: one clear message, exit 2, the way out


def make_study_db():
    from lab.study.identity import create_or_load_study
    from lab.study.queue import queue_missing
    from lab.study.spec import load_ablation

    abl = load_ablation(TINY)
    queue_missing(create_or_load_study(abl), abl)
    return Path("studies/tiny.db")


def test_corrupt_sqlite_storage_is_one_clear_message(capsys):
    db = make_study_db()
    pages = db.stat().st_size // 4096
    with db.open("r+b") as f:  # one page of garbage
        f.seek(4096 * (pages - 2))
        f.write(b"\xde\xad" * 2048)
    for cmd in (["sweep", str(TINY), "--workers", "1"], ["report", str(TINY)]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert "is corrupt" in err and ".recover" in err and "backup" in err
        assert "Traceback" not in err and "StorageInternalError" not in err


def test_read_only_storage_is_one_clear_message(capsys):
    make_study_db()
    # Opened read-only (a read-only file behaves alike, but not for root, who runs CI).
    url = "sqlite:///file:studies/tiny.db?mode=ro&uri=true"
    assert main(["sweep", str(TINY), "--workers", "1", f"storage={url}"]) == 2
    err = capsys.readouterr().err
    assert "is read-only" in err and "writable" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------
# 12. Minor: run directory names, duplicate YAML keys, summed wall time


def test_run_slug_keeps_the_sign_of_an_exponent():
    from lab.study.objective import run_slug

    assert run_slug("lr=1e+06") == "lr-1e+06"
    assert run_slug("lr=1e+06") != run_slug("lr=1e-06")
    assert run_slug("looped, loops=2") == "looped-loops-2"


def test_duplicate_yaml_keys_are_refused(tmp_path, capsys):
    from lab.config import load_config
    from lab.errors import LabError

    f = tmp_path / "dup.yaml"
    f.write_text("train:\n  steps: 5\n  lr: 0.1\n  steps: 7\n")
    with pytest.raises(LabError, match=r"key 'steps' appears twice .*lines 2 and 4"):
        load_config([f])
    abl = ablation(tmp_path, "dupabl", "space: {model.n_layers: [1]}\nseeds: [0]\nseeds: [1]\n")
    assert main(["sweep", str(abl)]) == 2
    err = capsys.readouterr().err
    assert "'seeds' appears twice" in err and "dupabl.yaml" in err


def test_wall_time_counts_each_pair_once(tmp_path):
    from optuna.distributions import IntDistribution

    from lab.report.markdown import environment
    from lab.report.study import StudyAnalysis
    from lab.study.identity import create_or_load_study
    from lab.study.spec import load_ablation

    abl = load_ablation(ablation(tmp_path, "wall", "space: {model.n_layers: [1, 2]}\nseeds: [0]\n"))
    study = create_or_load_study(abl)
    dist = {"model.n_layers": IntDistribution(1, 2), "seed": IntDistribution(0, 9)}
    for n_layers in (1, 1, 2):  # pair (1, 0) completed twice (e.g. by two machines)
        study.add_trial(optuna.trial.create_trial(
            value=0.5, params={"model.n_layers": n_layers, "seed": 0}, distributions=dist,
            user_attrs={"wall_time_s": 60.0, "lab.setting": f"n_layers={n_layers}",
                        "lab.pair": f'{{"model.n_layers": {n_layers}, "seed": 0}}'}))
    line = next(x for x in environment(StudyAnalysis(abl, study)) if "wall time" in x)
    assert "2.0 min" in line, line


def test_a_study_made_with_the_learned_recipe_is_a_different_study(tmp_path):
    """A study made before rotary positions and tied embeddings (its stored config has no such
    keys): its identity says learned positions and an untied head; a run on the current
    recipe is refused with the two ways on, and the old recipe's overrides find it again."""
    from lab.errors import LabError
    from lab.study.attrs import BASE_CONFIG_ATTR, FINGERPRINT_ATTR, IDENTITY_ATTR
    from lab.study.identity import create_or_load_study
    from lab.study.spec import ADDED_IDENTITY_KEYS, identity_hash, load_ablation

    path = ablation(tmp_path, "old", "space: {model.n_layers: [1, 2]}\n")
    old_recipe = ["model.positions=learned", "model.tie_embeddings=false"]
    abl_old = load_ablation(path, old_recipe)
    abl_old.study, abl_old.storage = "old", "sqlite:///studies/old.db"
    _, ident = abl_old.fingerprint()
    study = create_or_load_study(abl_old)
    stale = {**ident, "base": {k: v for k, v in ident["base"].items()
                               if k not in ADDED_IDENTITY_KEYS}}
    study.set_user_attr(IDENTITY_ATTR, stale)
    study.set_user_attr(FINGERPRINT_ATTR, identity_hash(stale))
    base = dict(study.user_attrs[BASE_CONFIG_ATTR])
    base["model"] = {k: v for k, v in base["model"].items()
                     if k not in ("positions", "rope_base", "tie_embeddings")}
    study.set_user_attr(BASE_CONFIG_ATTR, base)
    new = load_ablation(path)
    new.study, new.storage = "old", "sqlite:///studies/old.db"
    with pytest.raises(LabError, match="earlier model recipe") as e:
        create_or_load_study(new)
    assert "model.positions=\"learned\"" in str(e.value) and "study=old-rope" in str(e.value)
    assert create_or_load_study(abl_old).user_attrs[FINGERPRINT_ATTR] == abl_old.fingerprint()[0]
