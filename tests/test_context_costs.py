"""Cost against context length (lab.eval.context): measured KV bytes against the formula, the
shared-KV ratio to serial against its 1/r limit, the analysis option, the cost pass and the
report section."""

from dataclasses import replace
from pathlib import Path

import pytest

from lab.config import load_config
from lab.errors import LabError
from lab.eval.context import context_model, measure_contexts, needed_positions, setting_info
from lab.eval.cost import kv_cache_bytes
from lab.model import resolve
from lab.report.context import context_section, kv_ratio
from lab.report.figures import Figure, fig_context_kv, fig_context_latency
from lab.study.sections import CONTEXT_BATCHES, CONTEXT_LENGTHS, ContextCosts
from lab.study.spec import load_ablation

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"
CAUSAL = {"name": "pointer", "causal": True, "nodes": 4, "hops": 2, "queries": 4}
LENGTHS, BATCHES, STEPS = [8, 16, 32], [1, 2], 1
WINDOW = 4


def plan_of(loops, mode="serial", shared=True, gswa=True, layers=("model.n_layers=1",)):
    over = ["model.d_model=16", "model.n_heads=2", "model.family=looped", *layers,
            f"model.loops={loops}", f"model.loop_mode={mode}", f"model.plt_shared_kv={shared}",
            f"model.plt_gswa={gswa}", f"model.plt_window={WINDOW}"]
    _, task, plan = resolve(replace(load_config(overrides=over), task=CAUSAL))
    return task, plan


def measured(plans: dict, lengths=LENGTHS, batches=BATCHES):
    """measure_contexts over {label: (task, plan)}, each at its plan's loop count."""
    n = needed_positions(lengths, STEPS)
    models = {k: (context_model(p, t.vocab_size, n), p.loops) for k, (t, p) in plans.items()}
    out = measure_contexts(models, lengths, batches, rounds=1, steps=STEPS)
    for k, (_, p) in plans.items():
        out["settings"][k].update(setting_info(p, p.loops, sorted(lengths)))
    return out


BAND = ("model.n_layers=3", "model.band=[1,1]")  # a prelude and a coda around the loop


@pytest.mark.parametrize("mode,shared,gswa,layers", [
    ("serial", True, True, ("model.n_layers=1",)), ("serial", True, True, BAND),
    ("parallel", True, True, BAND), ("parallel", True, False, BAND),
    ("parallel", False, True, ("model.n_layers=1",)),
])
def test_measured_kv_bytes_equal_the_formula(mode, shared, gswa, layers):
    task, plan = plan_of(3, mode, shared, gswa, layers)
    out = measured({"s": (task, plan)})
    s = out["settings"]["s"]
    for bi, _ in enumerate(BATCHES):  # per sequence, so the same at every batch size
        assert s["kv_bytes"][bi] == [kv_cache_bytes(plan, 3, C) for C in LENGTHS]
    assert s["kv_formula"] == s["kv_bytes"][0]
    assert all(t > 0 for row in s["latency_s"] for t in row)
    if mode == "serial" and layers == ("model.n_layers=1",):  # by hand: 3 passes of width 16
        assert s["kv_bytes"][0] == [2 * 4 * 16 * 3 * C for C in LENGTHS]


def test_shared_kv_ratio_to_serial_tends_to_one_over_r():
    r, lengths = 4, [8, 16, 32, 64]
    data = measured({"serial": plan_of(r), "plt": plan_of(r, "parallel"),
                     "shared only": plan_of(r, "parallel", gswa=False),
                     "own kv": plan_of(r, "parallel", shared=False)}, lengths, [1])
    for i, C in enumerate(lengths):
        ratio, limit = kv_ratio(data, "plt", i)
        assert limit == pytest.approx(1 / r)
        # The r - 1 windows are a fixed cost: (C + (r-1) W) / (r C) -> 1/r.
        assert ratio == pytest.approx((C + (r - 1) * WINDOW) / (r * C))
        assert kv_ratio(data, "shared only", i) == pytest.approx((1 / r, 1 / r))
        assert kv_ratio(data, "own kv", i) == pytest.approx((1.0, 1.0))
    gaps = [kv_ratio(data, "plt", i)[0] - 1 / r for i in range(len(lengths))]
    assert all(a > b > 0 for a, b in zip(gaps, gaps[1:], strict=False))


def ablation(tmp_path, analysis: str) -> Path:
    p = tmp_path / "ctx.yaml"
    p.write_text(f"""name: ctx
base: [{DEBUG}]
overrides: {{model.n_layers: 1, model.family: looped, task.causal: true, eval.cost: false}}
space:
  model.loop_mode:
    serial: {{model.loops: [2]}}
    parallel: {{model.loops: [2]}}
seeds: [0]
analysis: {analysis}
""")
    return p


@pytest.mark.parametrize("bad,key", [
    ("{context_costs: {lengths: [0, 16]}}", "analysis.context_costs.lengths"),
    ("{context_costs: {batches: [1, 1]}}", "analysis.context_costs.batches"),
    ("{context_costs: {length: [16]}}", "analysis.context_costs.length"),
    ("{context_costs: 12}", "analysis.context_costs"),
])
def test_context_costs_option_is_checked(tmp_path, bad, key):
    with pytest.raises(LabError, match=key.replace(".", r"\.")) as e:
        load_ablation(ablation(tmp_path, bad))
    assert "\n" not in str(e.value)


def test_context_costs_option_is_analysis_only(tmp_path):
    on = load_ablation(ablation(tmp_path, "{context_costs: true}"))
    assert on.analysis_spec.context_costs == ContextCosts(CONTEXT_LENGTHS, CONTEXT_BATCHES)
    given = load_ablation(ablation(tmp_path, "{context_costs: {lengths: [64, 16]}}"))
    assert given.analysis_spec.context_costs == ContextCosts([16, 64], CONTEXT_BATCHES)
    off = load_ablation(ablation(tmp_path, "{min_gain: 0.01}"))
    assert off.analysis_spec.context_costs is None
    assert on.fingerprint() == off.fingerprint() == given.fingerprint()


class FakeStudy:
    def __init__(self):
        self.user_attrs: dict = {}

    def set_user_attr(self, k, v):
        self.user_attrs[k] = v


def test_cost_pass_stores_once_and_report_renders(tmp_path, monkeypatch):
    import json

    from lab.study import costpass
    from lab.study.attrs import CONTEXT_ATTR

    monkeypatch.setattr(costpass, "CONTEXT_STEPS", 1)
    monkeypatch.setattr(costpass, "CONTEXT_ROUNDS", 1)
    abl = load_ablation(ablation(tmp_path, "{context_costs: {lengths: [8, 32], batches: [1, 2]}}"))
    study = FakeStudy()
    data = costpass.ensure_context(abl, study)
    assert json.loads(json.dumps(data)) == data  # storable as a study attribute
    assert study.user_attrs[CONTEXT_ATTR] is data
    assert sorted(data["settings"]) == ["parallel", "serial"] and data["skipped"] == {}

    def fail(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(costpass, "measure_context", fail)
    assert costpass.ensure_context(abl, study) is data  # same lengths and batches: kept

    figures = {k: f for k, f in (("context_kv", fig_context_kv(data, tmp_path / "kv.png")),
                                 ("context_latency",
                                  fig_context_latency(data, tmp_path / "lat.png"))) if f}
    assert (tmp_path / "kv.png").is_file() and (tmp_path / "lat.png").is_file()
    text = "\n".join(context_section(data, figures))
    assert "## Cost against context length" in text
    assert "equal the formula" in text and "![KV bytes vs context length](kv.png)" in text
    # parallel (shared KV and G-SWA, 16-token window) against serial, both 2 loops, 32 tokens
    row = next(line for line in text.splitlines() if line.startswith("| parallel |"))
    ratio, limit = kv_ratio(data, "parallel")
    assert f"{ratio:.3f}" in row and "0.500 = 1/2" in row
    assert "latency / step, batch 2" in text


def test_a_bidirectional_task_is_skipped_with_a_note(tmp_path):
    from lab.study import costpass

    path = ablation(tmp_path, "{context_costs: true}")
    path.write_text(path.read_text().replace("task.causal: true", "task.causal: false")
                    .replace("    parallel: {model.loops: [2]}\n", ""))
    data = costpass.ensure_context(load_ablation(path), FakeStudy())
    assert data["settings"] == {} and "bidirectional" in data["skipped"]["serial"]
    text = "\n".join(context_section(data, {}))
    assert "Not measured: serial (bidirectional task" in text
    assert fig_context_kv(data, Path("unused.png")) is None
    assert context_section(None, {"x": Figure("x.png")}) == []


def test_the_report_of_a_study_shows_the_section(tmp_path):
    """write_report on a study with two completed trials and a stored context pass."""
    import json

    import optuna
    from optuna.distributions import CategoricalDistribution

    from lab.report import write_report
    from lab.study.attrs import CONTEXT_ATTR
    from lab.study.identity import create_or_load_study

    data = {"lengths": [8, 16], "batches": [1, 8], "rounds": 1, "steps": 1, "skipped": {},
            "settings": {}}
    for label, mode, kv in (("serial", "serial", [512, 1024]), ("parallel", "parallel", [256, 512])):
        data["settings"][label] = {
            "loops": 2, "loop_mode": mode, "shift": mode == "parallel",
            "shared_kv": mode == "parallel", "gswa": False, "window": None,
            "kv_formula": kv, "kv_limit_per_token": kv[0] / 8, "kv_bytes": [kv, kv],
            "seconds": [[[1e-4], [2e-4]], [[3e-4], [5e-4]]],
            "latency_s": [[1e-4, 2e-4], [3e-4, 5e-4]]}
    path = ablation(tmp_path, "{context_costs: {lengths: [8, 16]}}")
    study = create_or_load_study(load_ablation(path))
    study.set_user_attr(CONTEXT_ATTR, data)
    dist = {"model.loop_mode": CategoricalDistribution(["serial", "parallel"]),
            "model.loops": CategoricalDistribution([2]), "seed": CategoricalDistribution([0])}
    for mode, value in (("serial", 0.5), ("parallel", 0.6)):
        params = {"model.loop_mode": mode, "model.loops": 2, "seed": 0}
        study.add_trial(optuna.trial.create_trial(
            value=value, params=params, distributions=dist,
            user_attrs={"lab.setting": mode, "lab.group": mode, "metrics": {"val/acc_token": value},
                        "lab.pair": json.dumps(params, sort_keys=True)}))
    assert write_report(str(path), quiet=True) == 0
    text = Path("reports/ctx/report.md").read_text()
    assert "## Cost against context length" in text
    assert "(context_kv.png)" in text and "(context_latency.png)" in text
    assert Path("reports/ctx/context_latency.png").is_file()
    assert "| parallel | 2 | 512 B | 200 us | 500 us | 0.500 | 0.500 = 1/2 |" in text
    assert ("**parallel**: at 16 tokens its KV is 0.500 of that of **serial**, at its "
            "long-context limit 0.500 = 1/2") in text
