"""Inspecting finished studies: TensorBoard event files, optuna-dashboard, export, rerun,
compare, HTML reports, the fingerprint check, threads, the progress bar.

One tiny study (tests/data/tiny.yaml, 4 settings x 2 seeds, about 30 s on two cores) is swept
once for the module; the tests read it.
"""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lab.cli import main

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny.yaml"
ROOT = Path(__file__).resolve().parent.parent
SWEPT = {"model.family", "model.loops", "model.n_layers"}
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    old = os.getcwd()
    os.chdir(d)
    try:
        assert main(["sweep", str(TINY), "--workers", "2"]) == 0
    finally:
        os.chdir(old)
    return d


@pytest.fixture
def in_study(study_dir, monkeypatch):
    monkeypatch.chdir(study_dir)
    return study_dir


def load():
    return optuna.load_study(study_name="tiny", storage="sqlite:///studies/tiny.db")


def event_data(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    ea = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    try:
        content = ea.PluginTagToContent("hparams")
    except KeyError:  # a run without hparams
        content = {}
    hp = {tag: plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in content.items()}
    return ea, hp


# ------------------------------------------------------------------------------ TensorBoard


def test_one_event_file_per_run_with_scalars_hparams_and_figures(in_study):
    runs = sorted(p for p in Path("runs/tiny").iterdir() if p.is_dir())
    assert len(runs) == 6  # 8 pairs, two of them a twin's (run once)
    experiments = set()
    for run in runs:
        assert len(list(run.glob("events.out.tfevents.*"))) == 1, run
        ea, hp = event_data(run)
        tags = ea.Tags()
        assert {"val/acc_token", "train/loss", "hp/val_acc_token", "hp/params"} <= set(tags["scalars"])
        assert "figures/diagnostics" in tags["images"]
        assert any(t.startswith("config") for t in tags["tensors"])  # the config as text
        start = hp["_hparams_/session_start_info"].session_start_info
        assert set(start.hparams) == SWEPT | {"setting", "seed", "task"}
        assert hp["_hparams_/session_end_info"].session_end_info.status == 1  # success
        exp = hp["_hparams_/experiment"].experiment
        assert {i.name for i in exp.hparam_infos} == SWEPT | {"setting", "seed", "task"}
        assert {m.name.tag for m in exp.metric_infos} >= {"hp/val_acc_token", "hp/flops_per_token"}
        differs = {i.name for i in exp.hparam_infos if i.differs}
        assert differs == SWEPT | {"setting", "seed"}  # the task is the same everywhere
        experiments.add(exp.SerializeToString(deterministic=True))
        # The logged objective is the stored one.
        last = ea.Scalars("hp/val_acc_token")[-1].value
        assert last == pytest.approx(json.loads((run / "results.json").read_text())
                                     ["metrics"]["val/acc_token"], abs=1e-6)
        assert "setting" in (run / "hparams.yaml").read_text()
    # Every run of the study describes the same experiment (same columns and domains).
    assert len(experiments) == 1


def test_figures_from_a_fake_metrics_dict():
    from lab.train.tensorboard import metric_figures

    metrics = {"val/acc_by_difficulty/8": 0.5, "val/acc_by_difficulty/2": 0.9,
               "val/acc_by_difficulty/4": 0.7, "ood/acc_by_difficulty/16": 0.3,
               "diag/readout_acc/1": 0.4, "diag/readout_acc/2": 0.8, "diag/update_norm/1": 1.0,
               "val/acc_token": 0.7}
    figs = metric_figures(metrics)
    assert set(figs) == {"figures/diagnostics", "figures/acc_by_difficulty"}
    lines = {ln.get_label(): ln for ln in figs["figures/acc_by_difficulty"].axes[0].lines}
    assert list(lines["val"].get_xdata()) == [2, 4, 8]  # sorted by difficulty
    assert list(lines["val"].get_ydata()) == [0.9, 0.7, 0.5]
    assert list(lines["ood"].get_xdata()) == [16]
    diag = figs["figures/diagnostics"].axes
    assert len(diag) == 2 and list(diag[0].lines[0].get_xdata()) == [1, 2]
    # A looped model's update norm panel shows the block's own part beside the injected input.
    split = metric_figures({**metrics, "diag/block_norm/1": 0.5, "diag/block_norm/2": 0.4,
                            "diag/inject_norm/2": 0.9})["figures/diagnostics"].axes[1]
    assert [ln.get_label() for ln in split.lines] == ["block's own update", "injected input",
                                                      "total update"]
    assert [t.get_text() for t in split.get_legend().get_texts()] == [
        "block's own update", "injected input", "total update"]
    assert metric_figures({"val/acc_token": 0.5}) == {}


def test_difficulty_figure_reaches_tensorboard(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from lab.train.tensorboard import metric_figures

    w = SummaryWriter(str(tmp_path))
    for tag, fig in metric_figures({"val/acc_by_difficulty/1": 1.0,
                                    "val/acc_by_difficulty/2": 0.5}).items():
        w.add_figure(tag, fig, global_step=3)
    w.close()
    ea, _ = event_data(tmp_path)
    assert ea.Images("figures/acc_by_difficulty")[0].step == 3


def test_step_progress_bar_and_default_hparams(debug_cfg, capsys):
    from lab.train import train

    res = train(debug_cfg("train.progress=true"))
    err = capsys.readouterr()
    text = err.out + err.err
    assert "20/20" in text and "Epoch" not in text and "v_num" not in text
    _, hp = event_data(Path(res.run_dir))
    keys = set(hp["_hparams_/session_start_info"].session_start_info.hparams)
    assert keys == {"model.family", "model.n_layers", "model.loops", "model.d_model", "seed",
                    "task"}


# ------------------------------------------------------------------------------ the study


def test_flat_metrics_intermediate_values_and_threads(in_study):
    trials = [t for t in load().trials if t.params]
    assert all(t.state == TrialState.COMPLETE for t in trials)  # no pruner: nothing pruned
    for t in trials:
        for k, v in t.user_attrs["metrics"].items():
            assert t.user_attrs[f"metric/{k}"] == v
        assert t.user_attrs["metric/val/acc_token"] == t.value
        assert sorted(t.intermediate_values) == [10, 20]  # every validation, no pruner set
        assert t.user_attrs["lab.threads"] == 1  # one thread per worker by default


def test_precision_and_device_are_recorded_on_every_trial_and_the_study(in_study):
    study = load()
    assert study.user_attrs["lab.runtime"] == {"device": "cpu", "precision": "32-true"}
    trials = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert trials and all(t.user_attrs["lab.runtime"] == {
        "device": "cpu", "devices": 1, "precision": "32-true", "compile": False,
        "fused_adamw": False} for t in trials)
    report = Path("reports/tiny/report.md").read_text()
    n = sum("lab.runtime" in t.user_attrs for t in study.trials)
    assert f"trials ran on cpu, 32-true ({n} trials)" in report


def test_sweep_honours_train_threads(tmp_path):
    from lab.study.schedule import default_workers
    from lab.study.spec import load_ablation
    from lab.train.machine import cores as machine_cores

    abl = load_ablation(TINY, ["train.threads=2"])
    assert abl.config().train.threads == 2
    cores = machine_cores()  # the cores this process may use
    assert default_workers(abl, None, 2) == max(1, cores // 2)
    assert default_workers(abl, None, 1) == cores
    assert default_workers(abl, 3, 2) == 3


def test_export_round_trips(in_study):
    assert main(["export", str(TINY)]) == 0
    with open("reports/tiny/trials.csv", newline="") as f:
        rows = {int(r["trial"]): r for r in csv.DictReader(f)}
    trials = [t for t in load().trials if t.params]
    assert set(rows) == {t.number for t in trials}
    for t in trials:
        r = rows[t.number]
        assert r["setting"] == t.user_attrs["lab.setting"] and int(r["seed"]) == t.params["seed"]
        assert r["state"] == "COMPLETE" and float(r["value"]) == t.value
        for k, v in t.user_attrs["metrics"].items():
            assert float(r[f"metric/{k}"]) == v
        for k in ("params", "flops_per_token", "effective_depth", "wall_time_s",
                  "train_tokens_per_s"):
            assert float(r[k]) == t.user_attrs[k]
    assert main(["export", str(TINY), "--format", "json", "--out", "t.json"]) == 0
    data = json.loads(Path("t.json").read_text())
    assert [d["value"] for d in data] == [t.value for t in trials]


def test_parquet_export_or_clear_message(in_study):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        assert main(["export", str(TINY), "--format", "parquet"]) == 2
        return
    assert main(["export", str(TINY), "--format", "parquet", "--out", "t.parquet"]) == 0
    assert pq.read_table("t.parquet").num_rows == len([t for t in load().trials if t.params])


def test_rerun_reproduces_the_stored_trial(in_study, capsys):
    from lab.study.rerun import rerun

    abl, s, seed, res = rerun(str(TINY), "loops=2", ["seed=1"], progress=False)
    assert s.label == "looped, loops=2" and seed == 1
    stored = next(t for t in load().trials if t.user_attrs.get("lab.setting") == s.label
                  and t.params["seed"] == 1)
    assert res.metrics["val/acc_token"] == stored.value
    assert Path(res.run_dir).parent == Path("runs/tiny-rerun")
    with pytest.raises(Exception, match="no setting 'nope'"):
        rerun(str(TINY), "nope", [])


def test_report_html_fingerprint_and_rerun_line(in_study, tmp_path, capsys):
    assert main(["report", str(TINY)]) == 0
    html = Path("reports/tiny/report.html").read_text()
    assert "<table>" in html and 'src="data:image/png;base64,' in html and "<h2" in html
    # Another ablation's study: refused with one message, exit 2, unless --force.
    other = tmp_path / "other.yaml"
    other.write_text(TINY.read_text().replace("loops: [1, 2]", "loops: [1, 3]")
                     .replace("base: [configs/debug.yaml]", f"base: [{ROOT / 'configs/debug.yaml'}]"))
    capsys.readouterr()
    assert main(["report", str(other), "study=tiny"]) == 2
    err = capsys.readouterr().err
    assert "was not made from" in err and "--force" in err and "Traceback" not in err
    assert main(["report", str(other), "study=tiny", "--force"]) == 0
    assert "**Warning.** This report was forced" in Path("reports/tiny/report.md").read_text()
    assert main(["report", str(TINY)]) == 0


def test_rerun_line_keeps_overrides_seeds_and_storage(in_study):
    from lab.report.commands import make_command, rerun_command
    from lab.study.spec import load_ablation

    abl = load_ablation(TINY, ["train.steps=30", "storage=sqlite:///elsewhere.db"])
    cmd = make_command("sweep", abl, {"seeds": [0, 1, 2], "config_overrides": ["train.steps=30"]})
    assert cmd == f"lab sweep {TINY} train.steps=30 'seeds=[0,1,2]' storage=sqlite:///elsewhere.db"
    assert "`" not in cmd
    shipped = load_ablation(ROOT / "ablations/smoke.yaml", ["train.steps=30"])
    assert make_command("sweep", shipped, {}) == 'make sweep ABLATION=smoke ARGS="train.steps=30"'
    assert rerun_command(abl, {}).startswith(f"lab rerun {TINY} SETTING train.steps=30")


def test_fresh_clone_reads_the_study_file_beside_the_report(in_study, tmp_path, monkeypatch):
    """Without studies/ (a fresh clone), report, export, compare, rerun and dashboard read
    reports/tiny/study.jsonl, which the sweep wrote; the report equals the one from storage."""
    from lab.report.compare import write_compare
    from lab.study.identity import existing_storage
    from lab.study.rerun import stored_value
    from lab.study.spec import load_ablation

    journal = Path("reports/tiny/study.jsonl")
    assert 1000 < journal.stat().st_size < 8 * 10_000  # a few kB per trial
    assert load().metric_names == ["val/acc_token"]
    done = [t for t in load().trials if t.state == TrialState.COMPLETE]
    assert main(["report", str(TINY)]) == 0
    assert main(["export", str(TINY)]) == 0
    stamp = re.compile(r" on \d{4}-\d\d-\d\d \d\d:\d\d from ")
    original = {name: stamp.sub(" on DATE from ", Path("reports/tiny", name).read_text())
                for name in ("report.md", "summary.json", "trials.csv")}
    clone = tmp_path / "clone"
    (clone / "reports" / "tiny").mkdir(parents=True)
    (clone / "reports" / "tiny" / "study.jsonl").write_bytes(journal.read_bytes())
    monkeypatch.chdir(clone)
    assert main(["report", str(TINY)]) == 0
    assert main(["export", str(TINY)]) == 0
    for name, text in original.items():
        assert stamp.sub(" on DATE from ", Path("reports/tiny", name).read_text()) == text, name
    assert not Path("studies").exists()
    abl = load_ablation(TINY)
    for t in done:
        assert stored_value(abl, t.user_attrs["lab.setting"], t.params["seed"]) == t.value
    assert existing_storage(abl)[1] == "reports/tiny/study.jsonl"  # what the dashboard serves
    out, rows = write_compare([str(TINY), str(TINY)], out_dir="cmp")
    assert len(rows) == 8 and (out / "compare.md").is_file()


def test_compare_two_studies(in_study):
    from lab.report.compare import write_compare

    out, rows = write_compare([str(TINY), str(TINY)], out_dir="cmp")
    assert (out / "compare.png").stat().st_size > 1000 and (out / "compare.html").is_file()
    summary = json.loads(Path("reports/tiny/summary.json").read_text())
    means = {s["setting"]: s for s in summary["settings"]}
    for r in rows:
        label = r["setting"]
        assert r["mean"] == pytest.approx(means[label]["mean"])
        assert r["ci_low"] == pytest.approx(means[label]["ci_low"])
    assert "± " in (out / "compare.md").read_text()


def test_compare_refuses_different_objectives(in_study, monkeypatch, capsys):
    import lab.report.compare as compare

    class LossAnalysis(compare.StudyAnalysis):  # the second study as if it minimised val/loss
        def __init__(self, abl, study):
            super().__init__(abl, study)
            if LossAnalysis.seen:
                self.objective, self.direction = "val/loss", "minimize"
            LossAnalysis.seen = True

    LossAnalysis.seen = False
    monkeypatch.setattr(compare, "StudyAnalysis", LossAnalysis)
    assert main(["compare", str(TINY), str(TINY)]) == 2
    assert "do not share an objective" in capsys.readouterr().err


# ------------------------------------------------------------------------------ dashboard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_dashboard_serves_the_study_with_flat_metrics(in_study):
    pytest.importorskip("optuna_dashboard")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                      os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "dashboard", str(TINY),
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        studies = None
        t0 = time.time()
        while time.time() - t0 < 60:
            if proc.poll() is not None:
                raise AssertionError(f"dashboard exited: {proc.stderr.read()}")
            try:
                studies = get_json(f"http://127.0.0.1:{port}/api/studies")
                break
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "dashboard did not answer"
        study = next(s for s in studies["study_summaries"] if s["study_name"] == "tiny")
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}")
        trials = [t for t in detail["trials"] if t["params"]]
        assert len(trials) == 6
        for t in trials:
            attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
            assert float(attrs["metric/val/acc_token"]) == t["values"][0]
            assert t["intermediate_values"]
        sortable = {a["key"] for a in detail["union_user_attrs"] if a["sortable"]}
        assert {"metric/val/acc_token", "metric/ood/acc_token", "params"} <= sortable
        assert detail["objective_names"] == ["val/acc_token"]  # not "Objective 0"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the session this test started, by its PID
        proc.wait(timeout=20)
