"""Arms of a study: which settings share a verdict, and the share of the stack's gain that a
looped arm recovers at equal depth (checked against hand arithmetic)."""

import pytest

from lab.report.study import StudyAnalysis, verdict_sets
from lab.stats import SettingStats


def stat(setting, group, values, depth=None, axis=None):
    mean = sum(values) / len(values)
    return SettingStats(setting, group, axis, len(values), 0, 0, values, list(range(len(values))),
                        mean, 0.0, mean, mean, {"effective_depth": depth, "params": 100})


def test_single_setting_arms_are_pooled_into_one_comparison():
    by = {"serial": [stat("serial", "serial", [1.0, 1.1])],
          "parallel/a": [stat("pa", "parallel/a", [1.0, 1.2])],
          "parallel/b": [stat("pb", "parallel/b", [0.9, 1.0])]}
    sets = verdict_sets(list(by), by)
    assert [(g, [s.setting for s in ss]) for g, ss in sets] == [(None, ["serial", "pa", "pb"])]
    # Beside an arm of several settings, single settings are controls: no pooled verdict.
    by["uniform"] = [stat("u1", "uniform", [1.0, 1.0]), stat("u2", "uniform", [2.0, 2.0])]
    sets = verdict_sets(["uniform", *[g for g in by if g != "uniform"]], by)
    assert [g for g, _ in sets] == ["uniform", "serial", "parallel/a", "parallel/b"]
    only = {"a": [stat("a", "a", [1.0])], "b": [stat("b1", "b", [1.0]), stat("b2", "b", [2.0])]}
    assert [g for g, _ in verdict_sets(["a", "b"], only)] == ["a", "b"]


def analysis(groups, direction="minimize"):
    from lab.stats import VerdictOptions
    from lab.stats.design import study_design

    sa = object.__new__(StudyAnalysis)
    sa.groups, sa.primary, sa.direction = groups, "looped", direction
    sa.confidence, sa.meta, sa.paired_latency, sa.twins = 0.95, {}, None, {}
    sa.options = VerdictOptions(direction=direction, scale=1.0, unit="")
    sa.design = study_design(groups, list(groups), sa.options, primary="looped")
    sa.decisions = sa.design.family.decisions()
    return sa


def test_share_of_the_stack_gain_recovered_by_looping():
    # Bits per byte (lower is better). The uniform stack gains 0.10 at depth 4 and 0.20 at
    # depth 5 over its 3-layer base; the looped arm gains 0.05 and 0.08 over the same base.
    uniform = [stat(f"u{d}", "uniform", [v - 0.01, v, v + 0.01], d)
               for d, v in ((3, 2.50), (4, 2.40), (5, 2.30))]
    looped = [stat(f"r{r}", "looped", [v - 0.01, v, v + 0.01], r + 2)
              for r, v in ((1, 2.50), (2, 2.45), (3, 2.42))]
    rows = {r["setting"]: r for r in analysis({"looped": looped, "uniform": uniform})
            .matched_depth()}
    assert rows["r1"]["recovered"] is None  # the base itself: no gain to share
    assert rows["r2"]["recovered"] == pytest.approx(0.05 / 0.10)
    assert rows["r3"]["recovered"] == pytest.approx(0.08 / 0.20)
    assert rows["r2"]["base"] == "u3"


def test_no_share_where_the_stack_gain_is_not_significant():
    uniform = [stat("u3", "uniform", [2.5, 2.6, 2.4], 3), stat("u4", "uniform", [2.45, 2.6, 2.4], 4)]
    looped = [stat("r1", "looped", [2.5, 2.5, 2.5], 3), stat("r2", "looped", [2.4, 2.4, 2.4], 4)]
    rows = analysis({"looped": looped, "uniform": uniform}).matched_depth()
    assert [r["recovered"] for r in rows] == [None, None]


# --- did the ranking hold at other learning rates and without each seed? ------------------------


def protocol_view(values, tuned, direction="minimize"):
    from types import SimpleNamespace

    from lab.stats import TrialRecord, summarize

    recs = [TrialRecord(i * 10 + seed, name, seed, "COMPLETE", v, group="arm", axis=float(i))
            for i, (name, vs) in enumerate(values.items()) for seed, v in enumerate(vs)]
    return SimpleNamespace(direction=direction, tuned=tuned, records=recs, confidence=0.95,
                           bounds=None, stats=summarize(recs, confidence=0.95))


def test_ranking_at_every_tuning_point_is_compared_with_the_measured_one():
    from lab.report.protocol import lr_robustness

    values = {"a": [3.0, 3.1, 3.2], "b": [2.0, 2.1, 2.2], "c": [1.0, 1.1, 1.2]}  # c best
    tuned = {  # lr=1: same order as measured; lr=2: reversed; lr=3: c pruned
        "a": {"points": [{"label": "lr=1", "value": 5.0}, {"label": "lr=2", "value": 1.0},
                         {"label": "lr=3", "value": 9.0}]},
        "b": {"points": [{"label": "lr=1", "value": 4.0}, {"label": "lr=2", "value": 2.0},
                         {"label": "lr=3", "value": 8.0}]},
        "c": {"points": [{"label": "lr=1", "value": 3.0}, {"label": "lr=2", "value": 3.0},
                         {"label": "lr=3", "value": None}]},
    }
    rows = {r["point"]: r for r in lr_robustness(protocol_view(values, tuned))}
    assert rows["lr=1"]["rho"] == pytest.approx(1.0) and rows["lr=1"]["best"] == "c"
    assert rows["lr=2"]["rho"] == pytest.approx(-1.0) and rows["lr=2"]["best"] == "a"
    assert rows["lr=3"]["complete"] is False and rows["lr=3"]["best"] == "b"
    assert rows["lr=3"]["rho"] is None  # two settings scored: no rank correlation
    assert {r["measured_best"] for r in rows.values()} == {"c"}


def test_best_setting_with_each_seed_left_out():
    from lab.report.protocol import seed_robustness

    steady = protocol_view({"a": [2.0, 2.1, 2.2], "b": [1.0, 1.1, 1.2]}, {})
    assert seed_robustness(steady) == {"arm": [(0, "b"), (1, "b"), (2, "b")]}
    # Seed 2 alone makes b the best: without it, a wins.
    fragile = protocol_view({"a": [1.0, 1.0, 1.5], "b": [1.1, 1.1, 0.0]}, {})
    assert seed_robustness(fragile) == {"arm": [(0, "b"), (1, "b"), (2, "a")]}
