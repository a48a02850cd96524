"""Comparisons as tests (lab.stats.family), Holm's family-wise error, TOST, power, and the
sequential seeding rule (lab.stats.sequential), against scipy and by simulation."""

import math

import numpy as np
import pytest
from scipy import stats as st

from lab.stats import SettingStats, VerdictOptions
from lab.stats.design import open_pairs, study_design
from lab.stats.family import (
    Comparison,
    Family,
    decide,
    decision_power,
    holm_adjusted,
    holm_levels,
    seeds_for_power,
)
from lab.stats.sequential import Record, look_alphas, needs_seed, spent


def test_welch_p_values_equal_scipy_t_tests():
    a, b = (1.0, 1.2, 1.1, 0.95), (1.3, 1.35, 1.5)
    c = Comparison("a", "b", a, b, 1.0, 0.1)
    assert c.p_above(0) == pytest.approx(
        st.ttest_ind(b, a, equal_var=False, alternative="greater").pvalue, rel=1e-10)
    assert c.p_below(0) == pytest.approx(
        st.ttest_ind(b, a, equal_var=False, alternative="less").pvalue, rel=1e-10)
    # TOST: H0 delta <= -m and H0 delta >= m, each a shifted one-sided Welch test.
    lo = st.ttest_ind(np.add(b, 0.1), a, equal_var=False, alternative="greater").pvalue
    hi = st.ttest_ind(np.add(b, -0.1), a, equal_var=False, alternative="less").pvalue
    assert c.p_equivalent == pytest.approx(max(lo, hi), rel=1e-10)
    # Minimized objectives: the improvement is the decrease.
    m = Comparison("a", "b", a, b, -1.0, 0.1)
    assert m.diff == pytest.approx(-c.diff) and m.p_below(0) == pytest.approx(c.p_above(0))
    lo95, hi95 = c.interval(0.95)
    ci = st.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert (lo95, hi95) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # Sorted: 0.005 (<= .05/4), 0.01 (<= .05/3), 0.03 (> .05/2 = .025): stop.
    assert holm_levels(p, 0.05) == [0.05 / 3, None, None, 0.05 / 4]
    # Adjusted: 4 x .005 = .02, 3 x .01 = .03, 2 x .03 = .06, then max(.06, .04) = .06.
    assert holm_adjusted(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def _null_comparisons(rng, k, n, sd, margin):
    return [Comparison(f"a{i}", f"b{i}", tuple(rng.normal(0, sd, n)), tuple(rng.normal(0, sd, n)),
                       1.0, margin) for i in range(k)]


def _false_claim(decisions) -> bool:
    """Under the null (delta = 0), any better or worse claim is false (equivalence is true)."""
    return any(d.better or d.worse for d in decisions.values())


def test_holm_keeps_the_familywise_error_over_2000_null_studies_of_10_comparisons():
    rng = np.random.default_rng(0)
    errors = {"holm": 0, "none": 0}
    studies = 2000
    for _ in range(studies):
        comps = _null_comparisons(rng, 10, 4, 1.0, 0.5)
        for method in errors:
            fam = Family(alpha=0.05, method=method)
            for c in comps:
                fam.add(c)
            errors[method] += _false_claim(fam.decisions())
    se = math.sqrt(0.05 * 0.95 / studies)
    assert errors["holm"] / studies <= 0.05 + 2 * se
    # The check can fail: each comparison on its own at 5% makes a false claim in about
    # 1 - 0.95^10 = 40% of these studies.
    assert errors["none"] / studies > 0.3


def test_tost_calls_equivalence_in_a_tight_plateau_and_never_in_a_wide_one():
    rng = np.random.default_rng(1)

    def rate(delta, sd, n=5, margin=0.1, runs=500):
        hits = 0
        for _ in range(runs):
            c = Comparison("a", "b", tuple(rng.normal(0, sd, n)), tuple(rng.normal(delta, sd, n)),
                           1.0, margin)
            hits += decide(c, 0.05).equivalent
        return hits / runs

    assert rate(0.0, 0.01) > 0.99  # a true plateau measured tightly: equivalent
    assert rate(0.0, 0.2) == 0.0  # the same plateau, too noisy to show it: never
    assert rate(0.15, 0.01) == 0.0  # a real step wider than the margin: never


@pytest.mark.parametrize("delta,sd,margin", [(0.3, 0.2, 0.1), (0.0, 0.05, 0.1), (-0.25, 0.3, 0.05)])
def test_seeds_for_power_matches_a_simulated_power_of_80_percent(delta, sd, margin):
    level = 0.05 / 4
    n = seeds_for_power(delta, sd, margin, level)
    assert n is not None and n >= 2
    rng = np.random.default_rng(2)
    runs, hits = 1000, 0
    for _ in range(runs):
        c = Comparison("a", "b", tuple(rng.normal(0, sd, n)), tuple(rng.normal(delta, sd, n)),
                       1.0, margin)
        d = decide(c, level)
        hits += d.equivalent if abs(delta) < margin else (d.better if delta > 0 else d.worse)
    assert hits / runs == pytest.approx(0.8, abs=0.08)
    # ... and one seed fewer has less than 80% power (n is the smallest).
    if n > 2:
        assert decision_power(delta, sd, n - 1, margin, level) < 0.8


def test_spending_adds_up_to_alpha():
    assert spent(0.05, 1.0) == pytest.approx(0.05) and spent(0.05, 0.0) == 0
    alphas = look_alphas(0.05, range(3, 13), 12)
    assert sum(alphas) == pytest.approx(0.05)
    assert all(a > 0 for a in alphas)
    assert alphas[0] == pytest.approx(0.05 * math.log(1 + (math.e - 1) * 0.25))


def _stats(name, values, axis):
    m = float(np.mean(values))
    return SettingStats(name, "c", axis, len(values), 0, 0, list(values), list(range(len(values))),
                        m, float(np.std(values, ddof=1)), m, m, {})


def simulate(rng, means, sd, lo, hi, margin, alpha=0.05):
    """One sequential study of a curve (settings in order): the rule of lab.study.seeding,
    on synthetic values. Returns (record of claims, seeds used per setting)."""
    names = [f"s{i}" for i in range(len(means))]
    draws = {s: rng.normal(m, sd, hi) for s, m in zip(names, means, strict=True)}
    n = dict.fromkeys(names, lo)
    opts = VerdictOptions(direction="maximize", confidence=1 - alpha, min_gain=margin,
                          scale=1.0, unit="")
    rec, ns = Record(), []
    while True:
        ns.append(lo + len(ns))
        stats = [_stats(s, draws[s][: n[s]], float(i)) for i, s in enumerate(names)]
        design = study_design({"c": stats}, ["c"], opts)
        rec.advance(design.family, look_alphas(alpha, ns, hi)[-1])
        grow = needs_seed(open_pairs(design, rec.last), n, hi)
        if not grow:
            return rec, n
        for s in grow:
            n[s] += 1


def test_sequential_seeds_keep_the_error_rate_over_2000_null_studies():
    rng = np.random.default_rng(3)
    studies, false = 2000, 0
    for _ in range(studies):
        rec, _ = simulate(rng, [0.0, 0.0, 0.0], 1.0, 3, 8, 0.5)
        false += _false_claim(rec.decided)
    assert false / studies <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / studies)


def test_sequential_seeds_decide_a_real_effect_with_fewer_seeds_than_the_maximum():
    rng = np.random.default_rng(4)
    used, decided = [], 0
    for _ in range(200):
        # A curve that rises by 4 sd, then is flat (a margin of 2 sd): it levels off at s1.
        rec, n = simulate(rng, [0.0, 2.0, 2.0], 0.5, 3, 12, 1.0)
        used.append(np.mean(list(n.values())))
        decided += all(d.decided for d in rec.last.values())
    assert np.mean(used) < 9  # of at most 12 (measured: 7.3)
    assert decided / 200 > 0.7  # (measured: 0.83; the rest stopped at 12, still open)


# --- compute multiplier --------------------------------------------------------------------------


def test_compute_multiplier_recovers_a_known_multiplier_on_power_law_curves():
    from lab.stats.multiplier import compute_multiplier

    loss = lambda c: 5.0 * c ** -0.1  # the reference's loss against its training FLOPs
    computes = [1e12, 2e12, 4e12]
    ref = {seed: [loss(c) for c in computes] for seed in range(3)}
    # A setting that costs 2e12 FLOPs and reaches the loss the reference reaches at 1.5x that.
    m = compute_multiplier(ref, computes, {s: loss(1.5 * 2e12) for s in range(3)}, 2e12, -1.0,
                           log_y=True)
    assert m.value == pytest.approx(1.5, rel=1e-9) and m.kind == "interpolated"
    # Better than the reference at its largest budget: the last segment is extended.
    m = compute_multiplier(ref, computes, {s: loss(4 * 2e12) for s in range(3)}, 2e12, -1.0,
                           log_y=True)
    assert m.value == pytest.approx(4.0, rel=1e-9) and m.kind == "extrapolated"
    # With seed noise the bootstrap interval covers the true multiplier most of the time
    # (a percentile bootstrap over 5 seeds covers less than its nominal 95%).
    rng = np.random.default_rng(5)
    covered = 0
    for _ in range(100):
        noisy = {s: [loss(c) * (1 + rng.normal(0, 0.002)) for c in computes] for s in range(5)}
        m = compute_multiplier(noisy, computes, {s: loss(3e12) * (1 + rng.normal(0, 0.002))
                                                 for s in range(5)}, 2e12, -1.0, log_y=True,
                               resamples=400)
        covered += m.low < 1.5 < m.high
    assert covered >= 75
    # A maximized objective (accuracy rising with log compute) works on a semi-log scale.
    acc = lambda c: 0.1 * math.log(c) - 2.0
    m = compute_multiplier({0: [acc(c) for c in computes], 1: [acc(c) for c in computes]},
                           computes, {0: acc(3e12), 1: acc(3e12)}, 1e12, 1.0, log_y=False)
    assert m.value == pytest.approx(3.0, rel=1e-9)
