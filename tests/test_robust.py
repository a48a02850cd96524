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
needs_postgres = [
    pytest.mark.postgres,
    pytest.mark.skipif(not PG_URL, reason="no PostgreSQL server: set LAB_TEST_POSTGRES_URL"),
]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def ablation(tmp_path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nbase: [{ROOT / 'configs/debug.yaml'}]\n"
                    f"overrides: {{eval.cost: false}}\n{body}")
    return path


def load(name: str, url: str | None = None):
    return optuna.load_study(study_name=name, storage=url or f"sqlite:///studies/{name}.db")


def completed(study) -> Counter:
    return Counter((t.user_attrs["lab.setting"], t.params["seed"])
                   for t in study.trials if t.state == TrialState.COMPLETE)


def wait_for(cond, timeout=120.0, every=0.2):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if cond():
                return True
        except Exception:  # the study may not exist yet
            pass
        time.sleep(every)
    raise AssertionError("timed out")


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

    from lab.study.run import create_or_load_study
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
