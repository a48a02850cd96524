from __future__ import annotations

import math

import pytest

from lab.stats import (
    SettingStats,
    TrialRecord,
    VerdictOptions,
    best_per_cost,
    cheapest_within_best,
    compare_verdict,
    curve_verdict,
    diff_ci,
    knee_point,
    mean_ci,
    pareto_front,
    summarize,
    t_quantile,
    welch_df,
)

# Fixed per-seed offsets: std 0.01 around each mean, so tight curves have known intervals.
TIGHT = (-0.01, 0.0, 0.01)
# A true plateau: seed noise so small that "no worthwhile gain" can be shown (the upper bound
# of every later gain falls below the 1-point minimum gain).
TIGHTER = (-0.001, 0.0, 0.001)
LOOPS = lambda s: f"{int(s.axis)} loops"
# A minimized loss, differences printed in nats.
NATS = VerdictOptions(direction="minimize", scale=1.0, unit="nats")


def make(curve: dict[float, list[float]], group: str = "looped") -> list[SettingStats]:
    """Completed trials, one per value (seed = position), summarized in axis order."""
    records = []
    number = 0
    for axis, values in curve.items():
        for seed, v in enumerate(values):
            records.append(
                TrialRecord(
                    number=number,
                    setting=f"looped, loops={axis:g}",
                    seed=seed,
                    state="COMPLETE",
                    value=v,
                    attrs={"params": 1000.0 * axis},
                    axis=axis,
                    group=group,
                )
            )
            number += 1
    return summarize(records)


def tight(means: dict[float, float], offsets=TIGHT) -> list[SettingStats]:
    return make({a: [m + o for o in offsets] for a, m in means.items()})


def stat(setting: str, mean: float, cost: float | None = None, ci: float = 0.0) -> SettingStats:
    costs = {} if cost is None else {"flops": cost}
    return SettingStats(
        setting=setting, group="", axis=None, n=3, n_pruned=0, n_failed=0,
        values=[mean] * 3, seeds=[0, 1, 2], mean=mean, std=0.0,
        ci_low=mean - ci, ci_high=mean + ci, costs=costs,
    )  # fmt: skip


# --- t distribution ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "df", "expected", "tol"),
    [
        (0.975, 1, 12.7062047, 1e-6),
        (0.975, 2, 4.30265273, 1e-7),
        (0.975, 4, 2.77644511, 1e-7),
        (0.975, 10, 2.22813885, 1e-7),
        (0.95, 5, 2.01504837, 1e-7),
        (0.975, 1000, 1.962339, 1e-6),
        (0.025, 4, -2.77644511, 1e-7),
        (0.5, 7, 0.0, 1e-12),
        # Fractional df, reference values from mpmath (betainc inverted with findroot, 30 digits).
        (0.975, 2.5, 3.57465484200368, 1e-9),
        (0.995, 1.5, 17.8203105144628, 1e-8),
        (0.6, 3, 0.276670662332690, 1e-9),
        (0.999, 1, 318.308838985550, 1e-7),
    ],
)
def test_t_quantile_table(p, df, expected, tol):
    assert t_quantile(p, df) == pytest.approx(expected, abs=tol)


def test_t_quantile_limits():
    # Large df tends to the normal quantile 1.959964.
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959963985, abs=1e-8)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959966, abs=1e-5)
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)


# --- intervals --------------------------------------------------------------------------------


def test_mean_ci_by_hand():
    # [1, 2, 3, 4, 5]: mean 3, var = (4+1+0+1+4)/4 = 2.5, std = 1.5811388,
    # se = std/sqrt(5) = 0.7071068, t(0.975, 4) = 2.7764451, half = 1.9632432.
    mean, std, low, high = mean_ci([1, 2, 3, 4, 5])
    assert mean == 3.0
    assert std == pytest.approx(1.5811388, abs=1e-7)
    assert low == pytest.approx(1.0367568, abs=1e-6)
    assert high == pytest.approx(4.9632432, abs=1e-6)


def test_mean_ci_degenerate():
    mean, std, low, high = mean_ci([0.5])
    assert mean == 0.5 and math.isnan(std) and math.isnan(low) and math.isnan(high)
    mean, std, low, high = mean_ci([0.2, 0.2, 0.2])
    assert std == 0.0 and low == high == mean == pytest.approx(0.2)


def test_diff_ci_welch_by_hand():
    # a = [1, 2, 3]: mean 2, var 1 -> va = 1/3; b = [2, 4, 6, 8]: mean 5, var 20/3 -> vb = 5/3.
    # se = sqrt(1/3 + 5/3) = sqrt(2); df = 2^2 / ((1/3)^2/2 + (5/3)^2/3)
    #    = 4 / (1/18 + 25/27) = 4 / (53/54) = 216/53 = 4.0754717.
    # t(0.975, 216/53) = 2.7562849 (mpmath) -> half = 2.7562849 * 1.4142136 = 3.8979760.
    a, b = [1, 2, 3], [2, 4, 6, 8]
    assert welch_df(a, b) == pytest.approx(216 / 53, abs=1e-12)
    diff, low, high = diff_ci(a, b)
    assert diff == 3.0
    assert low == pytest.approx(3.0 - 3.8979760, abs=1e-6)
    assert high == pytest.approx(3.0 + 3.8979760, abs=1e-6)


def test_diff_ci_degenerate():
    assert diff_ci([1.0, 1.0], [2.0, 2.0, 2.0]) == (1.0, 1.0, 1.0)
    assert all(math.isnan(x) for x in diff_ci([1.0], [2.0, 3.0]))


# --- summarize --------------------------------------------------------------------------------


def test_summarize_counts_dedups_and_sorts():
    def rec(number, setting, seed, state, value=None, axis=None, group="looped", **attrs):
        return TrialRecord(number, setting, seed, state, value, attrs, axis, group)

    records = [
        rec(0, "loops=4", 0, "COMPLETE", 0.5, 4.0, params=10, flops_per_token=100.0),
        rec(1, "loops=2", 0, "COMPLETE", 0.3, 2.0, params=10, flops_per_token=50.0),
        rec(2, "loops=4", 1, "COMPLETE", 0.7, 4.0, params=10, flops_per_token=100.0),
        # Duplicate of (loops=4, seed 1) from a concurrent worker: the later one is dropped.
        rec(3, "loops=4", 1, "COMPLETE", 0.1, 4.0, params=10, flops_per_token=100.0),
        rec(4, "loops=4", 2, "PRUNED", None, 4.0),
        rec(5, "loops=4", 3, "FAIL", None, 4.0, fail_reason="oom"),
        rec(6, "loops=4", 4, "RUNNING", None, 4.0),
        rec(7, "loops=2", 1, "WAITING", None, 2.0),
        rec(8, "loops=2", 2, "COMPLETE", 0.4, 2.0, params=10, flops_per_token=50.0),
        rec(9, "uniform", 0, "COMPLETE", 0.6, None, "uniform"),
        rec(10, "uniform", 1, "COMPLETE", 0.2, None, "uniform"),
        rec(11, "only_running", 0, "RUNNING", None, None, "uniform"),
    ]
    stats = summarize(records)
    assert [(s.group, s.setting) for s in stats] == [
        ("looped", "loops=2"),
        ("looped", "loops=4"),
        ("uniform", "uniform"),
    ]
    two, four, uni = stats
    assert (four.n, four.n_pruned, four.n_failed) == (2, 1, 1)
    assert four.values == [0.5, 0.7] and four.seeds == [0, 1]
    assert four.mean == pytest.approx(0.6)
    assert four.std == pytest.approx(math.sqrt(0.02))
    assert four.costs == {"params": 10.0, "flops_per_token": 100.0}
    assert "fail_reason" not in four.costs
    assert (two.n, two.n_pruned, two.n_failed, two.axis) == (2, 0, 0, 2.0)
    assert uni.axis is None and uni.n == 2 and uni.costs == {}


def test_summarize_keeps_first_appearance_without_axis():
    records = [
        TrialRecord(0, "wide_ends", 0, "COMPLETE", 0.1, {}),
        TrialRecord(1, "uniform", 0, "COMPLETE", 0.2, {}),
        TrialRecord(2, "narrow", 0, "COMPLETE", 0.3, {}, axis=1.0),
        TrialRecord(3, "wide_ends", 1, "COMPLETE", 0.1, {}),
    ]
    assert [s.setting for s in summarize(records)] == ["wide_ends", "uniform", "narrow"]
    lone = summarize(records)[2]
    assert lone.n == 1 and math.isnan(lone.std) and math.isnan(lone.ci_low)


def test_summarize_duplicate_keeps_lowest_number_regardless_of_order():
    records = [
        TrialRecord(9, "s", 0, "COMPLETE", 0.9, {}),
        TrialRecord(2, "s", 0, "COMPLETE", 0.2, {}),
    ]
    (s,) = summarize(records)
    assert s.values == [0.2] and s.n == 1


# --- curve verdicts ---------------------------------------------------------------------------
# A curve is read from its steps (each setting against the one before it), each decided as a
# test: better, worse, equivalent (TOST within the minimum gain) or open, with Holm's
# correction over the steps (lab.stats.family).


def test_plateau_after_two():
    stats = tight({1: 0.40, 2: 0.80, 3: 0.805, 4: 0.80, 6: 0.80}, TIGHTER)
    v = curve_verdict(stats, name=LOOPS)
    assert v.supported and v.levelled_off
    assert v.saturation == "2 loops"
    assert v.best == "3 loops"
    assert v.regressions == []
    assert v.sentence.startswith("Gains level off at 2 loops: 2 loops adds +40.0 points over "
                                 "1 loops (95% CI")
    assert "every later step within 1.0 points of the one before (equivalence shown: " \
        "3 loops: +0.5 points" in v.sentence
    assert [(g.frm, g.to) for g in v.gains][0] == ("1 loops", "2 loops")
    assert [g.outcome for g in v.gains] == ["better", "equivalent", "equivalent", "equivalent"]
    assert v.gains[0].diff == pytest.approx(0.4)
    assert v.gains[0].low > 0.01 and v.gains[0].worthwhile


def test_inconclusive_verdicts_that_show_gains_to_different_points_say_different_things():
    # The budget and leave-one-seed-out checks compare what verdicts say: "gains are shown up
    # to 2 loops" and "no step is shown to gain" are both inconclusive, and not the same.
    from lab.report.budgets import same_conclusion

    up_to_2 = curve_verdict(tight({1: 0.40, 2: 0.80, 3: 0.805, 4: 0.80, 6: 0.80}), name=LOOPS)
    none = curve_verdict(tight({1: 0.40, 2: 0.405, 3: 0.41, 4: 0.40, 6: 0.40}), name=LOOPS)
    assert up_to_2.reason == none.reason == "inconclusive"
    assert up_to_2.shown_up_to == "2 loops" and none.shown_up_to is None
    assert "no step is shown to gain" in none.sentence
    assert not same_conclusion(up_to_2, none)
    assert same_conclusion(up_to_2, curve_verdict(
        tight({1: 0.40, 2: 0.80, 3: 0.805, 4: 0.80, 6: 0.80}), name=LOOPS))


def test_plateau_that_is_only_not_significant_is_inconclusive():
    # The same means with 10x the seed noise: 3 loops vs 2 loops is +0.5 points with a CI
    # reaching past the 1-point minimum gain, so neither a gain nor equivalence is shown.
    stats = tight({1: 0.40, 2: 0.80, 3: 0.805, 4: 0.80, 6: 0.80})
    v = curve_verdict(stats, name=LOOPS)
    assert not v.supported and v.reason == "inconclusive" and not v.levelled_off
    assert v.saturation is None
    assert v.sentence.startswith("Inconclusive: gains are shown up to 2 loops (2 loops adds "
                                 "+40.0 points over 1 loops")
    assert "but where they level off is not decided (3 loops vs 2 loops: +0.5 points" in v.sentence
    # The open steps are named (the seeds go there), and the estimate is a power calculation
    # at the first Holm level of the 4 steps (tests/test_family.py checks it by simulation).
    assert ("looped, loops=2", "looped, loops=3") in v.open_pairs
    assert v.seeds_needed is not None and v.seeds_needed > 3
    assert f"about {v.seeds_needed} seeds per setting (now 3) would decide it with 80% power" \
        in v.sentence


def test_regression_after_three():
    stats = tight({1: 0.3, 2: 0.6, 3: 0.9, 4: 0.7, 6: 0.6})
    v = curve_verdict(stats, name=LOOPS)
    assert v.supported and v.levelled_off
    assert v.best == "3 loops" and v.saturation == "3 loops"
    assert v.regressions == ["4 loops", "6 loops"]
    assert v.sentence.startswith("Gains stop at 3 loops and the curve regresses after it: "
                                 "3 loops adds +30.0 points over 2 loops")
    assert "4 loops regresses (a worthwhile loss): -20.0 points, 95% CI" in v.sentence
    assert v.sentence.endswith(".")


def test_isolated_regression_is_listed():
    # 4 loops dips significantly, 6 loops recovers: the curve regresses after 2 loops and
    # gains again.
    stats = tight({1: 0.3, 2: 0.9, 4: 0.6, 6: 0.9}, TIGHTER)
    v = curve_verdict(stats, name=LOOPS)
    assert v.supported and v.saturation == "2 loops" and v.regressions == ["4 loops"]
    assert "4 loops regresses (a worthwhile loss): -30.0 points" in v.sentence
    assert "then gains again at 6 loops" in v.sentence


def test_monotone_gains_do_not_level_off():
    stats = tight({1: 0.2, 2: 0.4, 3: 0.6, 4: 0.8})
    v = curve_verdict(stats, name=LOOPS)
    assert v.supported and not v.levelled_off
    assert v.saturation is None and v.best == "4 loops"
    assert v.sentence.startswith(
        "Gains do not level off within the range: 4 loops adds +20.0 points over 3 loops"
    )


def test_flat_at_chance():
    stats = make({a: [0.060, 0.0625, 0.065] for a in (1, 2, 3, 4)})
    v = curve_verdict(stats, VerdictOptions(chance=0.0625), name=LOOPS)
    assert not v.supported and not v.levelled_off
    assert "chance" in v.reason
    assert v.sentence.startswith("Every setting is at chance (+6.2 points")
    # Without the chance level the same data is a true plateau: every step is shown to be
    # within the 1-point minimum gain (TOST).
    flat = curve_verdict(stats, name=LOOPS)
    assert flat.supported and flat.saturation == "1 loops"
    assert flat.sentence.startswith("No step gains: the curve is flat from 1 loops")


def test_one_seed_is_not_enough():
    stats = make({1: [0.2], 2: [0.5], 3: [0.9]})
    v = curve_verdict(stats, name=LOOPS)
    assert not v.supported and v.reason == "not enough seeds"
    assert v.sentence.startswith("Not enough seeds for a verdict: 1 loops has 1 completed trial;")


def test_overlapping_everywhere():
    noise = (-0.2, 0.0, 0.2)
    stats = make({a: [m + o for o in noise] for a, m in {1: 0.50, 2: 0.52, 3: 0.51}.items()})
    v = curve_verdict(stats, name=LOOPS)
    assert not v.supported and v.reason == "inconclusive"
    assert v.sentence.startswith("Inconclusive: no step is shown to gain over 1 loops")
    assert v.saturation is None and v.regressions == []
    # Deciding a step of 1-2 points against a 1-point margin at this spread (0.2 per seed)
    # takes more seeds than the estimate names: it says so instead of capping a number.
    assert v.seeds_needed is None and v.seeds_over_cap
    assert "more than 1000 seeds per setting would be needed" in v.sentence


def test_minimize_loss_levels_off():
    # Loss falls 2.0 -> 1.5 -> 1.2 then stays flat: improvement stops at 3 layers.
    stats = tight({1: 2.0, 2: 1.5, 3: 1.2, 4: 1.195, 5: 1.2}, TIGHTER)
    layers = lambda s: f"{s.axis:g} layers"
    v = curve_verdict(stats, NATS, name=layers)
    assert v.supported and v.levelled_off
    assert v.saturation == "3 layers" and v.best == "4 layers"
    # Gains are improvements: a drop in loss is positive.
    assert v.gains[0].diff == pytest.approx(0.5)
    assert v.gains[0].low > 0
    assert "3 layers improves by +0.300 nats over 2 layers" in v.sentence
    assert "4 layers: +0.005 nats, 95% CI +0.003 to +0.007" in v.sentence
    # Read as maximization the same curve is a different story, so direction matters.
    as_max = curve_verdict(stats, name=layers)
    assert as_max.best == "1 layers" and as_max.saturation == "1 layers"
    assert as_max.regressions == ["2 layers", "3 layers"]


def test_minimize_monotone_and_regression():
    stats = tight({1: 2.0, 2: 1.5, 3: 1.0})
    assert not curve_verdict(stats, VerdictOptions(direction="minimize")).levelled_off
    stats = tight({1: 2.0, 2: 1.0, 3: 1.5})
    v = curve_verdict(stats, VerdictOptions(direction="minimize"), name=LOOPS)
    assert v.best == "2 loops" and v.regressions == ["3 loops"]


def test_min_gain_changes_saturation():
    # A +5 point step at 3 loops (CI about +2.7 to +7.3) is shown better. Against a 5-point
    # margin it is neither shown worthwhile nor shown equivalent, but still a shown gain, so
    # gains continue; against a 10-point margin it is shown equivalent (within +-10): the
    # curve levels off at 2.
    stats = tight({1: 0.4, 2: 0.8, 3: 0.85})
    assert curve_verdict(stats, name=LOOPS).saturation is None
    five = curve_verdict(stats, VerdictOptions(min_gain=0.05), name=LOOPS)
    assert five.supported and five.saturation is None and not five.gains[-1].worthwhile
    ten = curve_verdict(stats, VerdictOptions(min_gain=0.10), name=LOOPS)
    assert ten.supported and ten.saturation == "2 loops"
    assert ten.gains[-1].outcome == "equivalent"


def test_identical_seeds_are_named_not_a_zero_width_interval():
    # Both settings give one value on every seed: no interval is printed as if measured.
    stats = make({1: [0.5, 0.5, 0.5], 2: [1.0, 1.0, 1.0], 3: [1.0, 1.0, 1.0]})
    v = curve_verdict(stats, name=LOOPS)
    assert "CI +0.0 to +0.0" not in v.sentence and "CI +50.0 to +50.0" not in v.sentence
    assert "every seed of both gave one value each" in v.sentence


# --- compare verdicts -------------------------------------------------------------------------


def _profiles(means: dict[str, float], spread: float = 0.01) -> list[SettingStats]:
    records = [
        TrialRecord(i * 10 + seed, name, seed, "COMPLETE", m + spread * (seed - 1), {}, None, "w")
        for i, (name, m) in enumerate(means.items())
        for seed in range(3)
    ]
    return summarize(records)


def test_compare_one_winner():
    means = {"uniform": 0.50, "wide_middle": 0.531, "narrow_middle": 0.502, "wide_ends": 0.499}
    stats = _profiles(means, spread=0.002)
    v = compare_verdict(stats, "uniform")
    assert v.supported and v.best == "wide_middle"
    assert v.sentence.startswith("wide_middle wins: +3.1 points, 95% CI")
    assert "narrow_middle and wide_ends are equivalent to uniform within 1.0 points (TOST" \
        in v.sentence
    assert set(v.diffs) == {"wide_middle", "narrow_middle", "wide_ends"}
    assert v.outcomes == {"wide_middle": "better", "narrow_middle": "equivalent",
                          "wide_ends": "equivalent"}
    d, lo, hi = v.diffs["wide_middle"]
    assert d == pytest.approx(0.031) and lo > 0.01
    # More noise: the winner is still shown better but not by a worthwhile margin, and the
    # others are no longer shown equivalent: not distinguishable at this precision.
    v = compare_verdict(_profiles(means, spread=0.01), "uniform")
    assert not v.supported and v.best == "wide_middle"
    assert "wins" not in v.sentence
    assert "not distinguishable from uniform at this precision" in v.sentence


def test_compare_none_decided():
    stats = _profiles({"uniform": 0.50, "wide_middle": 0.51, "wide_ends": 0.49}, spread=0.1)
    v = compare_verdict(stats, "uniform", noun="profile")
    assert not v.supported and v.reason == "inconclusive"
    assert v.sentence.startswith("Inconclusive: wide_middle and wide_ends are not "
                                 "distinguishable from uniform at this precision")
    assert sorted(v.open_pairs) == [("uniform", "wide_ends"), ("uniform", "wide_middle")]
    # With tiny seed noise the same kind of data shows equivalence within the minimum gain.
    close = _profiles({"uniform": 0.50, "wide_middle": 0.501, "wide_ends": 0.499}, spread=0.001)
    e = compare_verdict(close, "uniform", noun="profile")
    assert e.supported and "are equivalent to uniform within 1.0 points (TOST" in e.sentence


def test_compare_reference_best_and_minimize():
    stats = _profiles({"uniform": 1.0, "wide_middle": 1.2, "wide_ends": 1.0})
    v = compare_verdict(stats, "uniform", NATS)
    assert v.best in {"uniform", "wide_ends"}
    assert v.diffs["wide_middle"][0] == pytest.approx(-0.2)
    assert "wide_middle is worse than uniform" in v.sentence
    with pytest.raises(ValueError):
        compare_verdict(stats, "missing")


def test_compare_refuses_at_chance_and_thin():
    stats = _profiles({"uniform": 0.25, "wide": 0.25}, spread=0.001)
    assert compare_verdict(stats, "uniform", VerdictOptions(chance=0.25)).reason == "at chance"
    thin = summarize([TrialRecord(0, "uniform", 0, "COMPLETE", 0.5, {}),
                      TrialRecord(1, "wide", 0, "COMPLETE", 0.9, {})])  # fmt: skip
    assert compare_verdict(thin, "uniform").reason == "not enough seeds"


# --- cost trade-offs --------------------------------------------------------------------------


def test_pareto_front():
    stats = [
        stat("A", 0.5, 10),
        stat("B", 0.7, 20),
        stat("C", 0.6, 30),  # worse and dearer than B
        stat("D", 0.7, 25),  # as good as B but dearer
        stat("E", 0.9),  # no cost: skipped
        stat("F", 0.4, 10),  # as cheap as A but worse
    ]
    assert pareto_front(stats, "flops") == ["A", "B"]
    # Minimizing, low means are good: A is dominated by F (same cost, lower loss).
    assert pareto_front(stats, "flops", direction="minimize") == ["F"]
    assert pareto_front(stats, "missing") == []


def test_cheapest_within_best():
    stats = [stat("A", 0.78, 50), stat("B", 0.80, 100, ci=0.05), stat("C", 0.70, 10)]
    assert cheapest_within_best(stats, "flops") == ("B", "A")
    assert cheapest_within_best(stats, "missing") is None
    # Minimizing: A (0.78) is best, its CI is a point, so only A qualifies.
    assert cheapest_within_best(stats, "flops", direction="minimize") == ("C", "C")


def test_best_per_cost():
    stats = [stat("A", 0.5, 10), stat("B", 0.9, 20), stat("C", 0.95)]
    # 0.5/10 = 0.050 beats 0.9/20 = 0.045; above chance 0.25: 0.025 vs 0.0325.
    assert best_per_cost(stats, "flops") == "A"
    assert best_per_cost(stats, "flops", chance=0.25) == "B"
    assert best_per_cost(stats, "missing") is None


def test_knee_point():
    stats = make({a: [m] for a, m in {1: 0.0, 2: 0.8, 3: 0.9, 4: 0.95, 5: 1.0}.items()})
    # Normalized: x = 0, .25, .5, .75, 1; y = 0, .8, .9, .95, 1 -> y - x peaks (.55) at axis 2.
    assert knee_point(stats) == "looped, loops=2"
    # A falling loss with the same shape has the same knee.
    loss = make({a: [1 - m] for a, m in {1: 0.0, 2: 0.8, 3: 0.9, 4: 0.95, 5: 1.0}.items()})
    assert knee_point(loss) == "looped, loops=2"
    # A straight line has no knee; neither do two points.
    assert knee_point(make({1: [0.1], 2: [0.2], 3: [0.3]})) is None
    assert knee_point(make({1: [0.1], 2: [0.2]})) is None
