"""Faults: retries that stay in their own study, reruns that reproduce tuned trials, study
names that cannot escape their folders, special files in a corpus, a stopped worker, a storage
outage, and secrets in storage URLs.

Every test runs in its own temporary directory (see conftest.py) on debug-sized ablations.
"""

from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"
optuna.logging.set_verbosity(optuna.logging.WARNING)



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
    from lab.study.objective import TrialFailed
    from lab.study.queue import queue_missing
    from lab.study.run import create_or_load_study
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
