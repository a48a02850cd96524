"""A fair protocol: per-setting tuning, learning curves, schedules, and statistics that fit
the data (bounded intervals, identical seeds, success rates, report sentences = table)."""

import json
import math
import re
from pathlib import Path

import optuna
import pytest
import yaml

from lab.cli import main
from lab.config import load_config
from lab.errors import LabError
from lab.stats import SettingStats, TrialRecord, summarize
from lab.stats.intervals import fisher_p, proportion_ci
from lab.stats.outcomes import fisher_pairs, is_thresholded, success_rates
from lab.study.spec import load_ablation
from lab.train.optim import lr_lambda

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"
optuna.logging.set_verbosity(optuna.logging.WARNING)

TUNED = f"""name: tuned
base: [{DEBUG}]
overrides: {{model.n_layers: 1, eval.cost: false}}
space:
  model.family:
    looped: {{model.loops: [1, 2]}}
axis: {{looped: model.loops}}
seeds: [0, 1]
objective: val/acc_token
tune:
  space: {{train.lr: {{low: 2.0e-3, high: 3.2e-2, log: true}}}}
  points: 5
  seeds: [100]
  budget: 0.5
"""


# --- the tune section --------------------------------------------------------------------------


def write(tmp_path, text: str, name: str = "tuned") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return p


def test_tune_grid_is_log_spaced(tmp_path):
    abl = load_ablation(write(tmp_path, TUNED))
    # log-spaced from 2e-3 to 3.2e-2 in 5 points: a factor 2 apart.
    assert [p["train.lr"] for p in abl.tune.grid()] == [0.002, 0.004, 0.008, 0.016, 0.032]


@pytest.mark.parametrize("bad, key", [
    ("seeds: [100]", "seeds: [0]"),  # shares a measured seed
    ("points: 5", "points: 1"),
    ("points: 5", "points: 4"),  # a learning rate is bracketed by 5 points or more
    ("high: 3.2e-2", "high: 6.4e-2"),  # 5 points 4x apart: not bracketed
    ("seeds: [100]", "seeds: [100]\n  share: everything"),
    ("seeds: [100]", "seeds: [100]\n  colour: red"),
    ("low: 2.0e-3", "low: 0.0"),  # a log range needs low > 0
], ids=["shared-seed", "points", "few-points", "wide-steps", "share", "unknown-key", "log-low"])
def test_bad_tune_section_is_refused(tmp_path, bad, key):
    with pytest.raises(LabError, match="tune"):
        load_ablation(write(tmp_path, TUNED.replace(bad, key)))


def test_tune_changes_the_study_identity_only_when_present(tmp_path):
    plain = load_ablation(write(tmp_path, TUNED.split("tune:")[0], "plain"))
    tuned = load_ablation(write(tmp_path, TUNED))
    assert "tune" not in plain.fingerprint()[1]
    assert tuned.fingerprint()[1]["tune"]["points"] == 5


def test_tuned_sweep_runs_each_setting_at_its_fitted_rate(tmp_path):
    path = write(tmp_path, TUNED.replace("budget: 0.5", "budget: 0.5\n  extend: 1"))
    assert main(["sweep", str(path), "--workers", "2"]) == 0
    storage = "sqlite:///studies/tuned.db"
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    main_study = optuna.load_study(study_name="tuned", storage=storage)
    tuned = main_study.user_attrs["lab.tuned"]
    lr1, lr2 = (tuned[f"looped, loops={r}"]["params"]["train.lr"] for r in (1, 2))
    # The headline comparison again at one rate: loops=2 at the rate of loops=1.
    recheck = main_study.user_attrs.get("lab.recheck")
    assert names == {"tuned", "tuned/tune/looped, loops=1", "tuned/tune/looped, loops=2",
                     *(["tuned/recheck"] if lr1 != lr2 else [])}
    if lr1 != lr2:
        assert recheck["point"] == {"train.lr": lr1} and recheck["label"] == "looped, loops=2"
        assert sorted(recheck["values"]) == ["0", "1"]
    for label in ("looped, loops=1", "looped, loops=2"):
        tstudy = optuna.load_study(study_name=f"tuned/tune/{label}", storage=storage)
        done = [t for t in tstudy.trials if t.state.name == "COMPLETE"]
        assert {t.params["seed"] for t in tstudy.trials} == {100}  # tuning seeds only
        assert not [t for t in tstudy.trials if t.state.name == "PRUNED"]  # nothing pruned
        assert all("tune/acc_token" in t.user_attrs["metrics"] for t in done)  # tune split
        assert all(t.user_attrs["steps"] == 10 for t in done)  # half the 20 steps
        fit = tuned[label]["fit"]
        lr = tuned[label]["params"]["train.lr"]
        value = {t.params["train.lr"]: t.value for t in done}
        best = fit["best"]
        assert value[best] == max(value.values())
        lrs = sorted(value)
        if fit["interior"]:
            # The vertex lies between the best point's neighbours, with points on each side.
            i = lrs.index(best)
            assert lrs[i - 1] <= lr <= lrs[i + 1] and fit["below"] >= 1 and fit["above"] >= 1
        else:  # still at an edge after growing the grid once on that side
            assert fit["edge"] in ("low", "high") and lr == best and len(lrs) == 6
        # The measured trials of this setting ran at that rate, and only they count.
        measured = [t for t in main_study.trials if t.user_attrs.get("lab.setting") == label]
        assert len(measured) == 2
        for t in measured:
            assert t.user_attrs["lab.tuned_params"] == tuned[label]["params"]
            cfg = yaml.safe_load((Path(t.user_attrs["run_dir"]) / "config.yaml").read_text())
            assert cfg["train"]["lr"] == lr
            curve = t.user_attrs["curve"]
            assert curve["step"] == [10, 20]  # every validation (debug: val_every 10, 20 steps)
            assert curve["val/acc_token"][-1] == t.value
            assert t.intermediate_values == {10: curve["val/acc_token"][0], 20: t.value}
    report = Path("reports/tuned/report.md").read_text()
    assert "| looped, loops=1 |" in report
    assert "| looped | lr=0.002 | 2 |" in report  # the ranking at every tuning point
    assert ("one common learning rate: looped, loops=2 trained again" in report) == (lr1 != lr2)
    # Resuming changes nothing: the choice is frozen and every trial is done.
    assert main(["sweep", str(path), "--workers", "2"]) == 0
    again = optuna.load_study(study_name="tuned", storage=storage)
    assert again.user_attrs["lab.tuned"] == tuned and len(again.trials) == 4


def test_a_best_point_at_the_edge_grows_the_grid(tmp_path):
    from lab.study.tune import extend_edges, open_tune_study, tuned_settings

    abl = load_ablation(write(tmp_path, TUNED))
    storage = optuna.storages.RDBStorage("sqlite:///edge.db")
    s = tuned_settings(abl)[0]
    st = open_tune_study(abl, s, storage)
    # The objective keeps rising towards the lowest rate: the best point is the low edge.
    for i, p in enumerate(abl.tune.grid()):
        st.add_trial(optuna.trial.create_trial(
            params={"train.lr": p["train.lr"], "seed": 100}, value=1.0 - 0.1 * i,
            distributions={"train.lr": optuna.distributions.FloatDistribution(1e-6, 1.0),
                           "seed": optuna.distributions.IntDistribution(0, 1000)}))
    assert extend_edges(abl, storage) == 1
    assert st.user_attrs["lab.tune_extra"] == [{"train.lr": 0.001}]  # one 2x step below


# --- schedules --------------------------------------------------------------------------------


def test_wsd_schedule_is_stable_then_decays_linearly():
    cfg = load_config([DEBUG], ["train.schedule=wsd", "train.steps=100", "train.warmup=10",
                                "train.decay_fraction=0.2", "train.min_lr_ratio=0.1"])
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)  # warm-up
    assert f(10) == f(50) == f(79) == 1.0  # stable
    # Decay over the last 20 steps, 80..99, linearly to min_lr_ratio at the last step.
    assert f(80) == pytest.approx(1 - 0.9 * 1 / 20)
    assert f(99) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 99))


def test_constant_schedule():
    cfg = load_config([DEBUG], ["train.schedule=constant", "train.warmup=2"])
    assert [lr_lambda(cfg)(s) for s in (2, 10, 19)] == [1.0, 1.0, 1.0]


# --- statistics that fit the data ----------------------------------------------------------------


def records(values: dict[str, list[float]]) -> list[TrialRecord]:
    return [TrialRecord(i * 10 + seed, name, seed, "COMPLETE", v)
            for i, (name, vs) in enumerate(values.items()) for seed, v in enumerate(vs)]


def test_bimodal_accuracy_interval_stays_in_range():
    # Two seeds at the floor and one solved: the t-interval (79.1 +- 90 style) leaves [0, 1].
    (s,) = summarize(records({"a": [0.30, 1.0, 1.0]}), bounds=(0.0, 1.0))
    assert s.ci_truncated and s.ci_low >= 0.0 and s.ci_high == 1.0
    (u,) = summarize(records({"a": [0.30, 1.0, 1.0]}))
    assert u.ci_high > 1.0 and not u.ci_truncated


def test_identical_seeds_are_named_not_a_zero_width_interval():
    from lab.report.fmt import fmt_ci

    (s,) = summarize(records({"a": [1.0, 1.0, 1.0]}), bounds=(0.0, 1.0))
    assert s.identical
    assert fmt_ci(s, "val/acc_token") == "100.0% (all 3 seeds identical)"


def test_clopper_pearson_and_fisher_against_closed_forms():
    # Exact interval for 0 successes of n: upper = 1 - (alpha/2)^(1/n).
    lo, hi = proportion_ci(0, 3)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 3))
    lo, hi = proportion_ci(3, 3)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 3))
    # Fisher: 3/3 vs 0/3 is the most extreme 2x2 table, p = 2 / C(6, 3) = 0.1.
    assert fisher_p(3, 3, 0, 3) == pytest.approx(0.1)


def test_success_rates_of_thresholded_outcomes():
    stats = summarize(records({"2 layers": [0.31, 0.33, 0.30], "3 layers": [1.0, 0.35, 1.0],
                               "4 layers": [1.0, 1.0, 1.0]}))
    rates = success_rates(stats, 0.95)
    assert [(r.setting, r.solved, r.n) for r in rates] == [
        ("2 layers", 0, 3), ("3 layers", 2, 3), ("4 layers", 3, 3)]
    assert is_thresholded(rates)
    assert not is_thresholded(success_rates(stats[:1] + stats[2:], 0.95))
    pairs = fisher_pairs(rates)
    assert [(a, b) for a, b, _ in pairs] == [("2 layers", "3 layers"), ("3 layers", "4 layers")]
    assert pairs[0][2] == pytest.approx(fisher_p(0, 3, 2, 3))


# --- every sentence of a report agrees with its table ---------------------------------------------

AMOUNT = re.compile(r"(?P<b>[\w ,=.]+?) vs (?P<a>[\w ,=.]+?): (?P<d>[-+]\d+\.\d) points, 95% CI "
                    r"(?P<lo>[-+]\d+\.\d) to (?P<hi>[-+]\d+\.\d)")


def test_report_sentences_match_the_table(tmp_path):
    """Every 'B vs A: +d points, 95% CI lo to hi' in a report is recomputed from the per-seed
    values in summary.json, and every table row's mean equals the mean of its seeds."""
    from lab.report.study import axis_namer
    from lab.stats import diff_ci

    assert main(["sweep", str(ROOT / "tests" / "data" / "tiny.yaml"), "--workers", "2"]) == 0
    summary = json.loads(Path("reports/tiny/summary.json").read_text())
    report = Path("reports/tiny/report.md").read_text()
    by_name = {}
    for s in summary["settings"]:
        assert s["mean"] == pytest.approx(sum(s["values"]) / len(s["values"]))
        key = {"looped": "model.loops", "uniform": "model.n_layers"}[s["group"]]
        stat = SettingStats(s["setting"], s["group"], s["axis"], s["n"], 0, 0, s["values"],
                            s["seeds"], s["mean"], 0.0, 0.0, 0.0, {})
        by_name[(s["group"], axis_namer(key)(stat))] = s["values"]
        pct = f"{100 * s['mean']:.1f}%"
        assert pct in report  # the table shows it
    found = 0
    for verdict_group, sentence in summary["verdicts"].items():
        for m in AMOUNT.finditer(sentence):
            a = by_name[(verdict_group, m["a"].strip())]
            b = by_name[(verdict_group, m["b"].strip())]
            d, lo, hi = diff_ci(a, b)
            assert f"{100 * d + 0.0:+.1f}" == m["d"]
            assert f"{100 * lo + 0.0:+.1f}" == m["lo"] and f"{100 * hi + 0.0:+.1f}" == m["hi"]
            found += 1
        assert sentence in report
    assert found >= 1
    assert math.isfinite(summary["settings"][0]["mean"])


# --- paired latency -------------------------------------------------------------------------------


def test_ratio_ci_of_paired_rounds():
    from lab.stats import ratio_ci

    # Per-round ratios 2, 2, 2: the geometric mean is 2 with a zero-width interval.
    assert ratio_ci([2.0, 4.0, 6.0], [1.0, 2.0, 3.0]) == pytest.approx((2.0, 2.0, 2.0))
    # Ratios 1.1 and 1/1.1: geometric mean 1, and the interval straddles 1.
    r, lo, hi = ratio_ci([1.1, 1.0], [1.0, 1.1])
    assert r == pytest.approx(1.0) and lo < 1 < hi
    assert ratio_ci([1.0], [1.0]) is None


def test_paired_latency_pass_times_every_setting(tmp_path):
    from lab.study import costpass

    abl = load_ablation(write(tmp_path, TUNED.split("tune:")[0], "plain"))
    result = costpass.measure(abl, rounds=2)
    assert result["rounds"] == 2 and result["mode"] == "full-sequence pass"  # debug: dense task
    assert sorted(result["seconds"]) == ["looped, loops=1", "looped, loops=2"]
    assert all(len(v) == 2 and min(v) > 0 for v in result["seconds"].values())


def test_a_key_listed_differently_in_sibling_arms_keeps_one_distribution(tmp_path):
    """model.loops is [1, 2] in one arm and [2] in another: every trial suggests it from the
    union, so Optuna never sees a changed value space (it refused the study before)."""
    body = TUNED.split("tune:")[0].replace(
        "    looped: {model.loops: [1, 2]}",
        "    looped:\n      model.injection:\n        add: {model.loops: [1, 2]}\n"
        "        none: {model.loops: [2]}")
    body = body.replace("axis: {looped: model.loops}", "axis: {looped/add: model.loops}")
    path = write(tmp_path, body.replace("name: tuned", "name: sib"), "sib")
    assert main(["sweep", str(path), "--workers", "1", "seeds=[0]"]) == 0
    study = optuna.load_study(study_name="sib", storage="sqlite:///studies/sib.db")
    assert sorted(t.user_attrs["lab.group"] for t in study.trials) == [
        "looped/add", "looped/add", "looped/none"]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert {str(t.distributions["model.loops"]) for t in study.trials} == {
        str(study.trials[0].distributions["model.loops"])}


def test_budgets_sequential_seeds_and_twins_in_one_small_study():
    """tests/data/budgets.yaml: decayed branches at half the budget, seeds added while a
    comparison is open (2, at most 3 per setting), and one model under two names run once."""
    assert main(["sweep", str(ROOT / "tests/data/budgets.yaml"), "--workers", "2"]) == 0
    study = optuna.load_study(study_name="budgets", storage="sqlite:///studies/budgets.db")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert all(set(t.user_attrs["budgets"]) == {"0.5", "1"} for t in done)
    for t in done:
        b = t.user_attrs["budgets"]
        assert b["1"]["metrics"]["val/acc_token"] == t.value
        assert (b["0.5"]["steps"], b["0.5"]["branch_point"]) == (10, 8)  # decays 10 - 2.5
    # The twin never ran: its owner's trials stand for it.
    assert {t.user_attrs["lab.setting"] for t in done} == {
        "looped, loops=1", "looped, loops=2", "uniform, n_layers=2"}
    looks = study.user_attrs["lab.looks"]
    plan = study.user_attrs.get("lab.seed_plan", {})
    assert looks[0]["n"] == 2 and all(v == 2 for v in looks[0]["seeds"].values())
    for label, seeds in plan.items():  # a setting got a third seed only while it was open
        assert seeds in ([0, 1], [0, 1, 2])
        n = sum(t.user_attrs["lab.setting"] == label for t in done)
        assert n == len(seeds)
    report = Path("reports/budgets/report.md").read_text()
    assert "### Verdicts at every budget" in report and "Compute multiplier" in report
    # The Answer block carries each ordered arm's first step's multiplier (looped: 2 vs 1 loop).
    answer = json.loads(Path("reports/budgets/summary.json").read_text())["answer"]
    line = next(a for a in answer if a.startswith("**Compute multiplier**"))
    assert "2 loops against 1 loop is worth " in line and "training compute" in line
    assert "Holm's step-down correction over the" in report
    assert "| looped, loops=1 | uniform, n_layers=1 | depth | 1 |" in report
    assert "the same model" in report
    if len(looks) > 1:
        assert "Looks of the sequential seeds" in report
    assert Path("reports/budgets/budgets.png").stat().st_size > 1000
