"""Statistics over study trials: per-setting summaries, confidence intervals, verdicts and cost
trade-offs. Pure computation on :class:`TrialRecord` / :class:`SettingStats`: nothing here reads
a study or writes a report.

Method (quoted in reports):

* Each setting is summarized over its COMPLETE trials only, one trial per seed (when two
  completed trials share a setting and seed, the one with the lowest trial number is kept).
  The mean is given with a two-sided Student-t confidence interval,
  mean +/- t(1 - alpha/2, n - 1) * s / sqrt(n), with s the sample standard deviation
  (ddof = 1). With fewer than 2 completed seeds there is no interval.
* A difference between two settings A and B is mean(B) - mean(A) with Welch's t-interval:
  se = sqrt(s_A^2/n_A + s_B^2/n_B), df by Welch-Satterthwaite,
  df = se^4 / ((s_A^2/n_A)^2/(n_A - 1) + (s_B^2/n_B)^2/(n_B - 1)). If both samples have zero
  variance the interval is the point itself.
* Verdicts orient every difference in the direction of improvement (for a minimized
  objective, a decrease counts as positive), so a positive difference is always better.
* Every comparison is a test (lab.stats.family): *better* / *worse* when a one-sided Welch
  t-test at half the level rejects no difference, *equivalent* when two one-sided tests
  (TOST) show the difference within +-min_gain, and otherwise *not distinguishable at this
  precision*. "Matches", "the same" and "levels off" are only ever said of equivalence.
* One family-wise error rate per report: Holm's step-down procedure over every comparison
  the report's verdicts and arms table make (lab.stats.design), at alpha = 1 - confidence.
  With sequential seeds each look tests the family at its alpha spend (lab.stats.sequential).
* Curve verdicts read the steps of an ordered arm (each setting against the one before):
  with w the first step shown worse and j the setting after the last step shown better
  before it, the curve *levels off at j* when every step from j to w is equivalent (and
  *regresses* at w if there is one), *does not level off* when j is the last setting, and is
  *inconclusive* while a step between j and w is open. An open verdict says about how many
  seeds per setting would decide it: the smallest n at which the open comparison's test at
  the family's first Holm level, alpha / K, has 80% power (noncentral t with the Welch
  degrees of freedom of equal samples, 2n - 2) at the observed difference and spread.
* Best setting: the one with the best mean. A comparison of unordered settings with a
  reference is decided when every setting is shown better, worse or equivalent; a setting
  *wins* when it is best and a gain of at least min_gain over the reference is shown.
* Bounded metrics (accuracies): a mean's interval is cut to the metric's range and marked so.
  Settings whose seeds all gave the same value are reported as such, not as a zero-width
  interval. Thresholded outcomes (a run solves the task or not) are also summarized as success
  rates with exact Clopper-Pearson intervals and compared with Fisher's exact test.
* No verdict is given when (a) some setting has fewer than 2 completed trials, or (b) every
  setting is at chance (when a chance level is given: for a maximized objective, every
  setting's upper confidence bound is below chance + min_gain; mirrored when minimized).
* The knee point (Kneedle: both axes normalized so the first point maps to (0, 0) and the
  last to (1, 1); the knee is the interior point farthest above that chord) is a second
  opinion only, never the verdict.

Student-t quantiles come from ``scipy.stats.t.ppf``.
"""

from lab.stats.intervals import diff_ci, mean_ci, ratio_ci, t_quantile, welch_df
from lab.stats.summary import (
    COUNTED_STATES,
    SettingStats,
    TrialRecord,
    best_index,
    direction_sign,
    summarize,
)
from lab.stats.tradeoffs import best_per_cost, cheapest_within_best, knee_point, pareto_front
from lab.stats.verdicts import (
    CompareVerdict,
    CurveVerdict,
    Gain,
    VerdictOptions,
    compare_verdict,
    curve_verdict,
    improvement,
    signed,
)

__all__ = [
    "COUNTED_STATES",
    "CompareVerdict",
    "CurveVerdict",
    "Gain",
    "SettingStats",
    "TrialRecord",
    "VerdictOptions",
    "best_index",
    "best_per_cost",
    "cheapest_within_best",
    "compare_verdict",
    "curve_verdict",
    "diff_ci",
    "direction_sign",
    "improvement",
    "knee_point",
    "mean_ci",
    "ratio_ci",
    "signed",
    "pareto_front",
    "summarize",
    "t_quantile",
    "welch_df",
]
