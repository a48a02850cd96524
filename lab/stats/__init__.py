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
  Two settings "differ significantly" when the interval of their difference excludes 0.
* Marginal gain: the difference from each setting on the ordered axis to the next one.
* Saturation point: the smallest setting j such that no later setting k > j is better than j
  by a shown gain, one whose whole confidence interval lies above the minimum gain
  (low(diff(j, k)) > min_gain). If that is only the last setting, the curve has not levelled
  off within the range.
* "Levels off at j" further needs evidence of no worthwhile gain beyond j, an equivalence
  test: every later setting's improvement over j has its upper confidence bound below
  min_gain. Where the data neither show a gain nor exclude one, the verdict is
  "inconclusive", with about how many seeds per setting would decide it at the observed
  spread: the smallest n whose half-width t(1 - alpha/2, 2n - 2) s sqrt(2/n) falls below
  |d - min_gain| (s the pooled per-seed standard deviation, d the observed improvement).
* Best setting: the one with the best mean. Regression: a setting after the best one whose
  difference to the best lies wholly below -min_gain (a shown loss).
* Comparisons of unordered settings: a setting wins when its whole interval over the
  reference clears min_gain; when no pair differs significantly, the settings are called
  equivalent only if every interval lies within (-min_gain, +min_gain), else inconclusive.
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
