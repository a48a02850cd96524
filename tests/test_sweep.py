"""Studies end to end: grid coverage, resume, reports from storage, workers, faults, bad input.

Every test runs in its own temporary directory (runs/, studies/, reports/ land there) on the
tiny ablation in tests/data (debug-sized model, seconds per trial).
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from statistics import mean

import optuna
import pytest
from optuna.trial import TrialState

from lab.cli import main

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny.yaml"
ROOT = Path(__file__).resolve().parent.parent
optuna.logging.set_verbosity(optuna.logging.WARNING)


def load(study="tiny", url="sqlite:///studies/tiny.db"):
    return optuna.load_study(study_name=study, storage=url)


def completed_pairs(study):
    return Counter((t.user_attrs["lab.setting"], t.params["seed"])
                   for t in study.trials if t.state == TrialState.COMPLETE)


def wait_for(cond, timeout=120.0, every=0.3):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if cond():
                return True
        except Exception:  # the study may not exist yet
            pass
        time.sleep(every)
    raise AssertionError("timed out")


def debug_ablation(tmp_path, name: str, body: str) -> Path:
    """An ablation file named `name` on configs/debug.yaml; `body` holds the rest."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nbase: [{ROOT / 'configs/debug.yaml'}]\n{body}")
    return path


def start_sweep(*args):
    # Ctrl-C must reach the sweep even when the tests run in a background job, whose shell
    # ignores SIGINT (an ignored signal stays ignored across exec).
    return subprocess.Popen([sys.executable, "-m", "lab.cli", "sweep", str(TINY), *args],
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_grid_is_covered_and_report_equals_storage():
    assert main(["sweep", str(TINY), "--workers", "2"]) == 0
    study = load()
    pairs = completed_pairs(study)
    # 4 settings x 2 seeds, once each; "uniform, n_layers=1" is the same model as
    # "looped, loops=1" (one block run once) and shares its trials: 6 pairs run.
    assert len(pairs) == 6 and set(pairs.values()) == {1}
    t = next(t for t in study.trials if t.state == TrialState.COMPLETE)
    assert set(t.params) >= {"model.family", "seed"}
    assert any(k in t.params for k in ("model.loops", "model.n_layers"))
    for key in ("params", "effective_depth", "flops_per_token", "wall_time_s",
                "train_tokens_per_s", "metrics", "diagnostics", "run_dir"):
        assert key in t.user_attrs, key
    assert t.value == t.user_attrs["metrics"]["val/acc_token"]

    # The report's numbers are the storage's numbers, recomputed independently here.
    by = defaultdict(list)
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            by[t.user_attrs["lab.setting"]].append(t.value)
    by["uniform, n_layers=1"] = by["looped, loops=1"]  # the twin reports its owner's trials
    summary = json.loads(Path("reports/tiny/summary.json").read_text())
    assert {s["setting"] for s in summary["settings"]} == set(by)
    assert next(s for s in summary["settings"] if s["setting"] == "uniform, n_layers=1")[
        "same_model_as"] == "looped, loops=1"
    md = Path("reports/tiny/report.md").read_text()
    for s in summary["settings"]:
        assert s["n"] == len(by[s["setting"]])
        assert s["mean"] == pytest.approx(mean(by[s["setting"]]))
        row = next(line for line in md.splitlines() if line.startswith(f"| {s['setting']} |"))
        assert f"{100 * mean(by[s['setting']]):.1f}%" in row
        assert f"| {len(by[s['setting']])} / 0 / 0 |" in row
    for fig in ("objective.png", "cost.png"):
        assert (Path("reports/tiny") / fig).stat().st_size > 1000
    assert "**Answer.**" in md and "## Environment" in md and "tensorboard" in md
    # Two arms: looped settings against uniform ones of equal effective depth, with cost ratios.
    assert "at equal effective depth" in md and "latency ratio" in md
    assert "looped" in summary["arms"] and "uniform" in summary["arms"]
    # No interval is drawn between two names of one model.
    assert not any({c["a"], c["b"]} == {"looped, loops=1", "uniform, n_layers=1"}
                   for c in summary["comparisons"])
    # One TensorBoard run per trial.
    assert len([p for p in Path("runs/tiny").iterdir() if p.is_dir()]) == 6


@pytest.mark.slow  # resuming is checked fast by the Ctrl-C resume test above
def test_rerunning_a_finished_study_adds_nothing():
    assert main(["sweep", str(TINY), "--workers", "1", "seeds=[0]"]) == 0
    before = [(t.number, t.state, t.value) for t in load().trials]
    assert main(["sweep", str(TINY), "--workers", "1", "seeds=[0]"]) == 0
    assert [(t.number, t.state, t.value) for t in load().trials] == before
    # Asking for more seeds runs only the new pairs.
    assert main(["sweep", str(TINY), "--workers", "1", "seeds=[0,1]"]) == 0
    study = load()
    assert len(study.trials) == 2 * len(before)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert [(t.number, t.state, t.value) for t in study.trials[: len(before)]] == before


# The SIGKILL variant takes about 85 s on two cores: `make test-all` runs it.
@pytest.mark.parametrize("sig", [
    pytest.param(signal.SIGKILL, marks=pytest.mark.slow, id="sigkill"),
    pytest.param(signal.SIGINT, id="ctrl-c"),
])
def test_killed_sweep_resumes_only_what_is_missing(sig):
    proc = start_sweep("--workers", "1", "train.steps=120", "study=tiny")

    def two_done_one_running():
        states = [t.state for t in load().trials]
        return states.count(TrialState.COMPLETE) >= 2 and TrialState.RUNNING in states

    wait_for(two_done_one_running, every=0.1)
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    after_kill = load().trials
    done = {t.number: (t.value, t.datetime_complete) for t in after_kill
            if t.state == TrialState.COMPLETE}
    # Usually one trial was cut short (left RUNNING by SIGKILL, failed by Ctrl-C); the kill can
    # also land between two trials, and then nothing was.
    cut = {t.number for t in after_kill if t.state in (TrialState.RUNNING, TrialState.FAIL)}
    assert main(["sweep", str(TINY), "--workers", "1", "train.steps=120", "study=tiny"]) == 0
    study = load()
    for t in study.trials:  # completed trials are untouched
        if t.number in done:
            assert (t.value, t.datetime_complete) == done[t.number]
    pairs = completed_pairs(study)
    assert len(pairs) == 6 and set(pairs.values()) == {1}  # a twin shares its trials
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert {t.number for t in failed} == cut
    assert all(t.user_attrs["lab.fail_reason"].startswith("interrupted") for t in failed)
    summary = json.loads(Path("reports/tiny/summary.json").read_text())
    assert all(s["n_failed"] == 0 for s in summary["settings"])  # re-run, not failures


def test_worker_dead_inside_the_pop_is_reclaimed_by_its_claim():
    """A worker killed between Optuna's pop and its objective's first line leaves a RUNNING
    trial with no worker identity; the claim it stamped on the queued trial names it."""
    from lab.study.attrs import CLAIM_ATTR
    from lab.study.identity import create_or_load_study
    from lab.study.queue import queue_missing, reclaim_dead_local_trials, worker_identity
    from lab.study.spec import load_ablation
    from lab.study.storage import open_storage, trial_id

    abl = load_ablation(TINY)
    storage = open_storage(abl.storage)
    study = create_or_load_study(abl, storage)
    queue_missing(study, abl)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ident = {**worker_identity(), "pid": dead.pid, "start": None}
    first, second = study.get_trials(states=(TrialState.WAITING,))[:2]
    for t in (first, second):
        storage.set_trial_user_attr(trial_id(storage, study, t.number), CLAIM_ATTR, ident)
    storage.set_trial_state_values(trial_id(storage, study, first.number), state=TrialState.RUNNING)
    assert reclaim_dead_local_trials(study, storage) == [first.number]
    t = study.trials[first.number]
    assert t.state == TrialState.FAIL and t.user_attrs["lab.fail_reason"].startswith("interrupted")
    assert study.trials[second.number].state == TrialState.WAITING  # claimed, never popped


@pytest.mark.slow  # a worker's SIGTERM / SIGINT is re-queued the same way in test_faults (fast)
def test_sigkilled_worker_trial_is_rerun_once():
    proc = start_sweep("--workers", "2", "train.steps=400", "study=tiny")

    def running_pid():
        # A running trial that has written its first checkpoint: kill it mid-trial.
        for t in load().trials:
            if t.state == TrialState.RUNNING and "lab.worker" in t.user_attrs and list(
                    Path("runs/tiny").glob(f"{t.number:04d}-*/checkpoints/last.ckpt")):
                return t.user_attrs["lab.worker"]["pid"]
        return None

    found = []
    wait_for(lambda: found.append(running_pid()) or found[-1] is not None)
    pid = found[-1]
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    study = load()
    pairs = completed_pairs(study)
    assert len(pairs) == 6 and set(pairs.values()) == {1}  # a twin shares its trials
    killed = [t for t in study.trials
              if t.user_attrs.get("lab.worker", {}).get("pid") == pid and t.state != TrialState.COMPLETE]
    assert len(killed) == 1
    killed = killed[0]
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs["lab.fail_reason"].startswith("interrupted")
    # Its pair was completed by a later trial that reused its run directory.
    retry = [t for t in study.trials if t.state == TrialState.COMPLETE
             and t.user_attrs.get("lab.pair") == killed.user_attrs["lab.pair"]]
    assert len(retry) == 1 and retry[0].number > killed.number
    assert Path(retry[0].user_attrs["run_dir"]).name.startswith(f"{killed.number:04d}-")
    assert retry[0].user_attrs["resumed_from_step"] > 0  # resumed from its checkpoint


def test_three_workers_cover_the_grid_exactly_once():
    assert main(["sweep", str(TINY), "--workers", "3", "seeds=[0,1,2]"]) == 0
    study = load()
    pairs = completed_pairs(study)
    # 4 settings x 3 seeds, less the twin's 3 (looped, loops=1 is uniform, n_layers=1)
    assert len(pairs) == 9 and set(pairs.values()) == {1}
    assert not [t for t in study.trials if t.state != TrialState.COMPLETE]


def test_diverging_trial_fails_with_reason_and_sweep_goes_on(tmp_path):
    abl = debug_ablation(
        tmp_path, "div",
        "overrides: {train.grad_clip: 0, train.log_every: 1, eval.cost: false}\n"
        "space: {train.lr: [1.0e+30, 0.003]}\nseeds: [0]\n"
    )
    assert main(["sweep", str(abl), "--workers", "1"]) == 0
    study = load("div", "sqlite:///studies/div.db")
    states = {t.params["train.lr"]: t for t in study.trials}
    assert states[1e30].state == TrialState.FAIL
    assert states[1e30].user_attrs["lab.fail_reason"].startswith("diverged")
    assert states[0.003].state == TrialState.COMPLETE
    # A diverged pair is a result, not work left: running again adds nothing.
    assert main(["sweep", str(abl), "--workers", "1"]) == 0
    assert len(load("div", "sqlite:///studies/div.db").trials) == 2
    assert "1 failed" in Path("reports/div/report.md").read_text()


def test_pruner_reports_at_global_steps(tmp_path):
    abl = debug_ablation(
        tmp_path, "prune",
        "overrides: {eval.cost: false, train.steps: 30}\n"
        "space: {model.n_layers: [1, 2]}\nseeds: [0, 1]\npruner: median\n"
    )
    assert main(["sweep", str(abl), "--workers", "1"]) == 0
    study = load("prune", "sqlite:///studies/prune.db")
    first = study.trials[0]
    assert sorted(first.intermediate_values) == [10, 20, 30]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def test_sampled_study_runs_n_trials(tmp_path):
    abl = debug_ablation(
        tmp_path, "tpe",
        "overrides: {eval.cost: false}\n"
        "space: {train.lr: {low: 0.001, high: 0.01, log: true}, model.n_layers: {low: 1, high: 2}}\n"
        "seeds: [0, 1]\nsampler: tpe\nn_trials: 3\n"
    )
    assert main(["sweep", str(abl), "--workers", "1"]) == 0
    study = load("tpe", "sqlite:///studies/tpe.db")
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 3
    assert set(study.trials[0].params) == {"train.lr", "model.n_layers", "seed"}
    assert main(["sweep", str(abl), "--workers", "1"]) == 0
    assert len(load("tpe", "sqlite:///studies/tpe.db").trials) == 3


# --------------------------------------------------------------------------------------------
# Bad input: exit non-zero, one clear message, nothing written.


def _nothing_written():
    return not Path("studies").exists() and not Path("reports").exists() and not Path("runs").exists()


BAD_ABLATIONS = {
    "malformed": ("space: {model.loops: [1, 2\n", "not valid YAML"),
    "unknown_key": ("space: {model.lopos: [1, 2]}\n", "model.lopos"),
    "empty_choices": ("space: {model.loops: []}\n", "empty choice list"),
    "bad_top_level": ("space: {model.loops: [1]}\nseedz: [1]\n", "seedz"),
    "impossible_setting": ("space: {model.n_heads: [3]}\n", "model.n_heads"),
    "no_space": ("name: x\n", "no 'space'"),
    # A misspelt arm or setting would silently change what the headline is about.
    "misspelt_primary": ("space: {model.family: {looped: {model.loops: [1]}, "
                         "uniform: {model.n_layers: [1]}}}\nanalysis: {primary: uniformm}\n",
                         "analysis.primary 'uniformm' is not an arm of the space. Did you mean "
                         "'uniform'?"),
    "misspelt_reference": ("space: {model.n_layers: [1, 2]}\nanalysis: {reference: n_layer=2}\n",
                           "analysis.reference 'n_layer=2' is not a setting of the space. Did "
                           "you mean 'n_layers=2'?"),
    "primary_without_arms": ("space: {model.n_layers: [1, 2]}\nanalysis: {primary: looped}\n",
                             "the space has no arms"),
}


@pytest.mark.parametrize("case", sorted(BAD_ABLATIONS))
def test_bad_ablation_files(case, tmp_path, capsys):
    text, expect = BAD_ABLATIONS[case]
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    assert main(["sweep", str(f)]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err
    assert _nothing_written()


def test_unknown_ablation_file(capsys):
    assert main(["sweep", "ablations/nope.yaml"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "loops" in err  # lists the shipped ones
    assert _nothing_written()


@pytest.mark.parametrize("url,expect", [
    ("not-a-url", "not a storage URL"),
    ("postgresql://lab:lab@127.0.0.1:1/nope", "cannot open storage"),
    ("mysqlx://x", "cannot open storage"),
])
def test_bad_storage(url, expect, capsys):
    assert main(["sweep", str(TINY), f"storage={url}"]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err
    assert _nothing_written()


def test_wrong_type_override(capsys):
    assert main(["sweep", str(TINY), "train.steps=many"]) == 2
    assert "train.steps" in capsys.readouterr().err
    assert _nothing_written()


def test_existing_study_with_different_space_is_refused(tmp_path, capsys):
    assert main(["sweep", str(TINY), "--workers", "1", "seeds=[0]"]) == 0
    report = Path("reports/tiny/report.md").read_text()
    db = Path("studies/tiny.db").read_bytes()
    changed = tmp_path / "tiny.yaml"
    changed.write_text(TINY.read_text().replace("[1, 2]}", "[1, 3]}", 1))
    assert main(["sweep", str(changed), "seeds=[0]"]) == 2
    err = capsys.readouterr().err
    assert "different search space" in err and "study=" in err
    assert Path("studies/tiny.db").read_bytes() == db
    assert Path("reports/tiny/report.md").read_text() == report


def test_report_on_missing_study(capsys):
    assert main(["report", str(TINY)]) == 2
    assert "no study 'tiny'" in capsys.readouterr().err
    assert _nothing_written()


def test_report_on_study_without_completed_trials(capsys):
    from lab.study.identity import create_or_load_study
    from lab.study.spec import load_ablation

    create_or_load_study(load_ablation(TINY))
    assert main(["report", str(TINY)]) == 2
    assert "no completed trials" in capsys.readouterr().err
    assert not Path("reports").exists()


# --------------------------------------------------------------------------------------------
# PostgreSQL: several workers (standing in for several machines) on one study.


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("LAB_TEST_POSTGRES_URL"),
                    reason="no PostgreSQL server: set LAB_TEST_POSTGRES_URL (CI starts one)")
def test_postgres_two_sweeps_share_one_study():
    url = os.environ["LAB_TEST_POSTGRES_URL"]
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    args = [f"storage={url}", f"study={name}", "--workers", "1"]
    a = start_sweep(*args)
    b = start_sweep(*args)
    for p in (a, b):
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    study = load(name, url)
    pairs = completed_pairs(study)
    assert len(pairs) == 6 and set(pairs.values()) == {1}  # a twin shares its trials
    spurious = [t for t in study.trials if t.user_attrs.get("lab.spurious")]
    assert all(not t.params for t in spurious)


def test_depth_study_report_shows_per_layer_readout(tmp_path):
    abl = debug_ablation(
        tmp_path, "depth",
        "overrides: {eval.cost: false}\n"
        "space: {model.n_layers: [1, 2, 3]}\naxis: model.n_layers\nseeds: [0, 1]\n"
    )
    assert main(["sweep", str(abl), "--workers", "2"]) == 0
    md = Path("reports/depth/report.md").read_text()
    assert "## Inside the deepest model" in md and "readout.png" in md
    assert Path("reports/depth/readout.png").stat().st_size > 1000
    assert "of the 3-layer model" in md  # the deepest setting is the one read out


def test_width_study_report_lists_each_settings_shape(tmp_path):
    from lab.config import load_config
    from lab.model import resolve

    abl = debug_ablation(
        tmp_path, "w",
        "overrides: {eval.cost: false, train.steps: 10, model.family: banded, model.n_layers: 3,"
        " model.match_params: {width_profile: uniform}}\n"
        "space: {model.width_profile: [uniform, wide_middle]}\nseeds: [0]\n"
    )
    assert main(["sweep", str(abl), "--workers", "1"]) == 0
    md = Path("reports/w/report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("- per-layer widths"))
    for profile in ("uniform", "wide_middle"):
        _, _, plan = resolve(load_config(
            [ROOT / "configs/debug.yaml"],
            ["model.family=banded", "model.n_layers=3", f"model.width_profile={profile}",
             "model.match_params={width_profile: uniform}"]))
        shape = f"{' '.join(map(str, plan.widths))} / {' '.join(map(str, plan.hidden))}"
        assert f"width_profile={profile}: {shape}" in line


def test_report_accounts_for_every_setting_failure_and_missing_pair(tmp_path):
    """A setting that diverged on every seed, and pairs never run, are named in the report:
    the failures with their reasons, the settings the verdict could not judge, and the table
    lists every setting of the ablation."""
    body = ("overrides: {train.grad_clip: 0, train.log_every: 1, eval.cost: false}\n"
            "space: {train.lr: [1.0e+30, 0.003, 0.001]}\nseeds: [0, 1]\n")
    abl = debug_ablation(tmp_path, "acct", body)
    assert main(["sweep", str(abl), "--workers", "1"]) == 0
    md = Path("reports/acct/report.md").read_text()
    assert "## Failures and missing trials" in md
    assert "2 pair(s) failed for good" in md and "diverged" in md
    assert "Not judged (no completed seed): lr=1e+30 (2 failed)" in md
    # Asking for a third seed without running it: the report counts the missing pairs.
    assert main(["report", str(abl), "seeds=[0,1,2]"]) == 0
    md = Path("reports/acct/report.md").read_text()
    assert "3 pairs not completed yet" in md and "3 pair(s) have not completed yet" in md
    assert "Judged on fewer seeds than asked: lr=0.003 (2 of 3 done, 1 not run yet)" in md
