"""The study file shipped beside a report (reports/<study>/study.jsonl): an Optuna journal
holding the study and its tuning studies, read back by the lab and by Optuna's own reader."""

from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState, create_trial

from lab.errors import LabError
from lab.study.journal import journal_path, read_journal, write_journal

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_storage(tmp_path):
    """A main study and two tuning studies with every kind of trial, written through Optuna."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'src.db'}")
    dists = {"seed": IntDistribution(0, 100), "train.lr": FloatDistribution(1e-4, 1e-1, log=True)}

    def trial(i, state, value=None):
        return create_trial(
            state=state, value=value, params={"seed": i, "train.lr": 10 ** -(1 + i % 3)},
            distributions=dists,
            user_attrs={"lab.setting": f"s{i % 2}", "metrics": {"val/acc_token": value},
                        "curve": {"step": [10, 20], "val/acc_token": [0.1 * i, value]},
                        "metric/val/acc_token": value},
            intermediate_values={10: 0.1 * i} if state != TrialState.WAITING else {},
        )

    main = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    main.set_user_attr("lab.tuned", {"s0": {"params": {"train.lr": 0.01}, "value": 0.5}})
    main.set_metric_names(["val/acc_token"])
    for i, state in enumerate([TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED,
                               TrialState.FAIL, TrialState.WAITING]):
        main.add_trial(trial(i, state, 0.25 * i if state == TrialState.COMPLETE else None))
    for name in ("s/tune/s0", "s/tune/s1"):
        tune = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        tune.set_user_attr("lab.tune_of", "s")
        tune.set_metric_names(["tune/acc_token"])
        tune.add_trial(trial(7, TrialState.COMPLETE, 0.75))
        tune.add_trial(trial(8, TrialState.PRUNED))
    optuna.create_study(study_name="other", storage=storage)  # another study: not copied
    return storage


def same_study(a, b):
    assert a.directions == b.directions and a.metric_names == b.metric_names
    assert a.user_attrs == b.user_attrs
    ta, tb = a.get_trials(), b.get_trials()
    assert len(ta) == len(tb) > 0
    for x, y in zip(ta, tb, strict=True):
        for field in ("number", "state", "values", "params", "distributions", "user_attrs",
                      "intermediate_values", "datetime_start", "datetime_complete"):
            assert getattr(x, field) == getattr(y, field), (x.number, field)


def test_journal_holds_the_study_and_its_tuning_studies(tmp_path):
    storage = make_storage(tmp_path)
    path = write_journal(storage, "s", tmp_path / "reports" / "s" / "study.jsonl")
    names = ["s", "s/tune/s0", "s/tune/s1"]
    ours = read_journal(path)
    theirs = JournalStorage(JournalFileBackend(str(path)))  # Optuna's own reader
    for reader in (ours, theirs):
        assert sorted(optuna.get_all_study_names(reader)) == names
        for name in names:
            same_study(optuna.load_study(study_name=name, storage=storage),
                       optuna.load_study(study_name=name, storage=reader))
    # The same study gives the same file (no random writer id, no timestamps of the copy).
    first = path.read_bytes()
    write_journal(storage, "s", path)
    assert path.read_bytes() == first
    assert b"\n" in first and first.count(b"\n") == len(first.decode().splitlines())


def test_reading_the_journal_never_writes_it(tmp_path):
    path = write_journal(make_storage(tmp_path), "s", tmp_path / "study.jsonl")
    path.chmod(0o444)  # as in a read-only checkout
    before = path.read_bytes()
    study = optuna.load_study(study_name="s", storage=read_journal(path))
    study.set_user_attr("note", "kept in memory")  # e.g. a note typed in the dashboard
    assert study.user_attrs["note"] == "kept in memory"
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "src.db", "study.jsonl"]


def test_a_missing_storage_falls_back_on_the_journal(tmp_path, monkeypatch):
    from lab.study.identity import existing_storage, load_existing_study
    from lab.study.spec import load_ablation

    monkeypatch.chdir(tmp_path)
    debug = Path(__file__).resolve().parent.parent / "configs" / "debug.yaml"
    (tmp_path / "a.yaml").write_text(f"name: s\nbase: [{debug}]\nspace: {{model.loops: [1, 2]}}\n")
    abl = load_ablation(tmp_path / "a.yaml")
    with pytest.raises(LabError, match="does not exist, nor reports/s/study.jsonl"):
        load_existing_study(abl)
    write_journal(make_storage(tmp_path), "s", journal_path("s"))
    storage, where = existing_storage(abl)
    assert where == "reports/s/study.jsonl"
    assert len(load_existing_study(abl).trials) == 5
