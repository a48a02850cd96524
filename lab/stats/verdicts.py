"""Verdicts in one sentence: where a curve levels off, or how settings compare to a reference.

See the ``lab.stats`` docstring for the rules (saturation, regression, when no verdict is given).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lab.stats.intervals import diff_ci, seeds_to_decide
from lab.stats.summary import SettingStats, best_index, direction_sign


@dataclass(frozen=True)
class VerdictOptions:
    """How differences are judged and written.

    direction: "maximize" or "minimize" (differences are oriented so positive is better);
    confidence: of every interval; min_gain: the smallest improvement (in objective units) that
    counts as a gain; chance: the objective at chance level, if known (rule (b));
    scale, unit: numbers in sentences are multiplied by `scale` and followed by `unit`.
    """

    direction: str = "maximize"
    confidence: float = 0.95
    min_gain: float = 0.01
    chance: float | None = None
    scale: float = 100.0
    unit: str = "points"

    @property
    def sign(self) -> float:
        return direction_sign(self.direction)


@dataclass
class Gain:
    frm: str
    to: str
    diff: float
    low: float
    high: float


@dataclass
class CurveVerdict:
    sentence: str
    supported: bool
    reason: str
    best: str
    saturation: str | None
    regressions: list[str]
    gains: list[Gain]
    levelled_off: bool
    # Inconclusive verdicts: about how many seeds per setting would decide (None: unknown).
    seeds_needed: int | None = None


@dataclass
class CompareVerdict:
    sentence: str
    supported: bool
    reason: str
    best: str
    diffs: dict[str, tuple[float, float, float]]


def improvement(
    a: SettingStats, b: SettingStats, sign: float, confidence: float
) -> tuple[float, float, float]:
    """Improvement of b over a (positive = better), with its Welch interval."""
    d, lo, hi = diff_ci(a.values, b.values, confidence)
    if sign > 0:
        return d, lo, hi
    return -d, -hi, -lo


# ---------------------------------------------------------------------------------------------
# Sentence helpers


def _decimals(scale: float) -> int:
    """Points of accuracy read to one decimal; raw units (bits per byte, nats) to three."""
    return 1 if scale >= 100 else 3


def signed(x: float, scale: float) -> str:
    """A signed difference at the scale's decimals: '+1.2' points, '-0.034' bits per byte."""
    d = _decimals(scale)
    v = round(x * scale, d)
    return f"{v + 0.0:+.{d}f}"  # + 0.0 turns -0.0 into 0.0



def _mag(x: float, scale: float) -> str:
    """An unsigned magnitude (a minimum gain, a margin) at the scale's decimals."""
    return f"{abs(x * scale):.{_decimals(scale)}f}"


def _ci(lo: float, hi: float, o: VerdictOptions) -> str:
    return f"{o.confidence * 100:g}% CI {signed(lo, o.scale)} to {signed(hi, o.scale)}"


def _amount(d: float, lo: float, hi: float, o: VerdictOptions) -> str:
    """'+1.2 points, 95% CI +0.3 to +2.1'."""
    return f"{signed(d, o.scale)} {o.unit}, {_ci(lo, hi, o)}"


def _join(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _plus_form(name: str) -> str:
    """'4 loops' -> '4+ loops': the setting and every later one."""
    m = re.match(r"^([-+]?\d+(?:\.\d+)?)(.*)$", name)
    if m:
        return f"{m[1]}+{m[2]}"
    return f"{name} and beyond"


def _no_verdict_reason(
    stats: list[SettingStats], label: Callable[[SettingStats], str], o: VerdictOptions
) -> tuple[str, str] | None:
    """(reason, sentence) for rules (a) and (b), or None when they do not apply."""
    thin = [s for s in stats if s.n < 2]
    if thin:
        s = thin[0]
        trials = "trial" if s.n == 1 else "trials"
        return "not enough seeds", (
            f"Not enough seeds for a verdict: {label(s)} has {s.n} completed {trials}; "
            "at least 2 per setting are needed (3 or more recommended)."
        )
    chance, conf = o.chance, o.confidence * 100
    if chance is not None:
        if o.sign > 0 and all(s.ci_high < chance + o.min_gain for s in stats):
            edge = max(s.ci_high for s in stats)
            bound = f"every upper {conf:g}% CI bound is at most {signed(edge, o.scale)}"
        elif o.sign < 0 and all(s.ci_low > chance - o.min_gain for s in stats):
            edge = min(s.ci_low for s in stats)
            bound = f"every lower {conf:g}% CI bound is at least {signed(edge, o.scale)}"
        else:
            return None
        return "at chance", (
            f"Every setting is at chance ({signed(chance, o.scale)} {o.unit}; {bound}): "
            "no verdict; the task is too hard for this budget."
        )
    return None


def _largest_insignificant(
    stats: list[SettingStats], sign: float, confidence: float
) -> tuple[int, int, tuple[float, float, float]] | None:
    """The pair with the largest |difference| if no pair differs significantly, else None."""
    widest: tuple[int, int, tuple[float, float, float]] | None = None
    for i in range(len(stats)):
        for k in range(i + 1, len(stats)):
            d, lo, hi = improvement(stats[i], stats[k], sign, confidence)
            if lo > 0 or hi < 0:
                return None
            if widest is None or abs(d) > abs(widest[2][0]):
                widest = (i, k, (d, lo, hi))
    return widest


# ---------------------------------------------------------------------------------------------
# Verdicts


def curve_verdict(
    stats: list[SettingStats],
    options: VerdictOptions = VerdictOptions(),  # noqa: B008 - frozen, so shared safely
    *,
    name: Callable[[SettingStats], str] = lambda s: s.setting,
) -> CurveVerdict:
    """Where gains level off along an ordered axis (stats in axis order).

    All differences, gains and the numbers in the sentence are improvements (positive is
    better, also when minimizing), scaled by `options.scale` and rounded to one decimal in the
    sentence. See the ``lab.stats`` docstring for the definitions of saturation and regression.
    """
    o = options
    sign, conf, unit = o.sign, o.confidence, o.unit
    verb = "adds" if sign > 0 else "improves by"
    names = [name(s) for s in stats]

    def imp(i: int, k: int) -> tuple[float, float, float]:
        return improvement(stats[i], stats[k], sign, conf)

    gains = [Gain(names[i], names[i + 1], *imp(i, i + 1)) for i in range(len(stats) - 1)]
    best_i = best_index(stats, sign) if stats else 0
    best = names[best_i] if stats else ""

    def unsupported(reason: str, sentence: str) -> CurveVerdict:
        return CurveVerdict(sentence, False, reason, best, None, [], gains, False)

    if len(stats) < 2:
        return unsupported(
            "fewer than 2 settings",
            "Not enough settings for a verdict: a curve needs at least 2 settings.",
        )
    rule = _no_verdict_reason(stats, name, o)
    if rule is not None:
        return unsupported(*rule)

    last = len(stats) - 1
    # The first setting that no later one beats by a shown gain (whole interval > min_gain).
    sat = next(
        j
        for j in range(len(stats))
        if not any(imp(j, k)[1] > o.min_gain for k in range(j + 1, len(stats)))
    )
    to_best = {k: imp(best_i, k) for k in range(best_i + 1, len(stats))}
    # A regression is a shown loss: the whole interval lies below -min_gain.
    regress = [k for k, (_, _, hi) in to_best.items() if hi < -o.min_gain]
    regressions = [names[k] for k in regress]

    if sat == last:
        g = gains[-1]
        sentence = (
            f"Gains do not level off within the range: {names[last]} still {verb} "
            f"{signed(g.diff, o.scale)} {unit} over {names[last - 1]} "
            f"({_ci(g.low, g.high, o)})."
        )
        return CurveVerdict(sentence, True, "", best, None, regressions, gains, False)

    # "Levels off at sat" needs evidence of no worthwhile gain beyond it (an equivalence
    # test): every later setting's improvement over sat has its upper bound below min_gain.
    later = {k: imp(sat, k) for k in range(sat + 1, len(stats))}
    open_k = [k for k, (_, _, hi) in later.items() if hi >= o.min_gain]
    if open_k:
        k = max(open_k, key=lambda k: later[k][2])
        d, lo, hi = later[k]
        n = seeds_to_decide(stats[sat].values, stats[k].values, d, o.min_gain, conf)
        need = (f"about {n} seeds per setting (now {min(stats[sat].n, stats[k].n)}) would "
                "decide it at the spread seen so far" if n else
                "more seeds would narrow it")
        lead = (f"Gains are shown up to {names[sat]}" if sat > 0 else
                f"No setting shows a gain of at least {_mag(o.min_gain, o.scale)} {unit} "
                f"over {names[0]}")
        sentence = (
            f"Inconclusive: {lead}, but a worthwhile gain beyond it is not excluded "
            f"({names[k]} vs {names[sat]}: {_amount(d, lo, hi, o)}, whose upper bound reaches "
            f"the minimum gain of {_mag(o.min_gain, o.scale)} {unit}); {need}."
        )
        return CurveVerdict(sentence, False, "inconclusive", best, None, regressions, gains,
                            False, n)

    clauses: list[str] = []
    # Name what lies beyond the saturation point: the best later setting if it is not the
    # saturation point itself, else the next setting unless that one regresses (then the
    # regression clause says it).
    nxt = best_i if best_i != sat else sat + 1
    if nxt not in regress:
        d, lo, hi = imp(sat, nxt)
        clauses.append(f"{names[nxt]} {verb} {signed(d, o.scale)} {unit} ({_ci(lo, hi, o)}), "
                       f"below the minimum gain of {_mag(o.min_gain, o.scale)} {unit}")
    if regress:
        first = regress[0]
        if len(regress) == 1:
            d, lo, hi = to_best[first]
            clauses.append(
                f"{names[first]} regresses ({signed(d, o.scale)} {unit} vs {best}, "
                f"{_ci(lo, hi, o)})"
            )
        elif regress == list(range(first, last + 1)):
            # A regressing tail is named by its onset: "4+ loops regress".
            clauses.append(
                f"{_plus_form(names[first])} regress vs {best} "
                f"({names[first]}: {_amount(*to_best[first], o)})"
            )
        else:
            parts = "; ".join(f"{names[k]}: {_amount(*to_best[k], o)}" for k in regress)
            clauses.append(f"{_join(regressions)} regress vs {best} ({parts})")
    sentence = f"Gains level off at {names[sat]}: " + "; ".join(clauses) + "."
    return CurveVerdict(sentence, True, "", best, names[sat], regressions, gains, True)


def compare_verdict(
    stats: list[SettingStats],
    reference: str,
    options: VerdictOptions = VerdictOptions(),  # noqa: B008 - frozen, so shared safely
    *,
    noun: str = "setting",
) -> CompareVerdict:
    """Unordered settings against a reference setting (matched on `setting`).

    `diffs` maps every other setting to its improvement over the reference (positive is
    better, also when minimizing) with its Welch interval. A setting "wins" when it has the
    best mean and its whole interval over the reference lies above `options.min_gain`.
    """
    o = options
    sign, unit = o.sign, o.unit
    by_name = {s.setting: s for s in stats}
    if reference not in by_name:
        raise ValueError(f"reference {reference!r} is not among the settings")
    ref = by_name[reference]
    others = [s for s in stats if s.setting != reference]
    diffs = {s.setting: improvement(ref, s, sign, o.confidence) for s in others}
    best = stats[best_index(stats, sign)].setting

    def unsupported(reason: str, sentence: str) -> CompareVerdict:
        return CompareVerdict(sentence, False, reason, best, diffs)

    if not others:
        return unsupported(
            "fewer than 2 settings", f"Nothing to compare: only {reference} was run."
        )
    rule = _no_verdict_reason(stats, lambda s: s.setting, o)
    if rule is not None:
        return unsupported(*rule)
    if _largest_insignificant(stats, sign, o.confidence) is not None:
        margin = abs(o.min_gain)
        if all(-margin < lo and hi < margin for _, lo, hi in diffs.values()):
            widest = max(diffs, key=lambda k: max(-diffs[k][1], diffs[k][2]))
            return CompareVerdict(
                f"Every {noun} is equivalent to {reference} within "
                f"{_mag(margin, o.scale)} {unit} (widest: {widest}, {_amount(*diffs[widest], o)}).",
                True, "", best, diffs)
        top = max(diffs, key=lambda k: max(-diffs[k][1], diffs[k][2]))
        n = seeds_to_decide(ref.values, by_name[top].values, abs(diffs[top][0]), margin,
                            o.confidence)
        need = (f"about {n} seeds per setting would decide it at the spread seen so far"
                if n else "more seeds would narrow it")
        return unsupported(
            "inconclusive",
            f"Inconclusive: no {noun} differs significantly from {reference} or from another, "
            f"but differences of {_mag(margin, o.scale)} {unit} or more are not excluded "
            f"({top}: {_amount(*diffs[top], o)}); {need}.",
        )

    def listed(keys: list[str]) -> str:
        return "; ".join(f"{k}: {_amount(*diffs[k], o)}" for k in keys)

    better = [k for k, (_, lo, _) in diffs.items() if lo > 0]
    worse = [k for k, (_, _, hi) in diffs.items() if hi < 0]
    same = [k for k in diffs if k not in better and k not in worse]
    clauses: list[str] = []
    also = ""
    if best == reference:
        clauses.append(f"{reference} is best")
    elif diffs[best][1] > o.min_gain:
        d, lo, hi = diffs[best]
        clauses.append(
            f"{best} wins: {signed(d, o.scale)} {unit} over {reference} ({_ci(lo, hi, o)})"
        )
        also = "also "
    elif diffs[best][1] > 0:
        d, lo, hi = diffs[best]
        clauses.append(
            f"{best} is best, {signed(d, o.scale)} {unit} over {reference} "
            f"({_ci(lo, hi, o)}), but its interval does "
            f"not clear the minimum gain of {_mag(o.min_gain, o.scale)} {unit}"
        )
        also = "also "
    elif not better and not worse:
        clauses.append(
            f"No {noun} differs significantly from {reference} "
            f"(best: {best}, {_amount(*diffs[best], o)})"
        )
        same = []
    else:
        clauses.append(
            f"{best} has the best mean but does not differ significantly from {reference} "
            f"({_amount(*diffs[best], o)})"
        )
    rest_better = [k for k in better if k != best]
    if rest_better:
        verb = "beats" if len(rest_better) == 1 else "beat"
        clauses.append(f"{_join(rest_better)} {also}{verb} {reference} ({listed(rest_better)})")
    same = [k for k in same if k != best]
    if same:
        verb = "does" if len(same) == 1 else "do"
        clauses.append(f"{_join(same)} {verb} not differ significantly from {reference}")
    if worse:
        verb = "is" if len(worse) == 1 else "are"
        clauses.append(f"{_join(worse)} {verb} worse than {reference} ({listed(worse)})")
    return CompareVerdict("; ".join(clauses) + ".", True, "", best, diffs)


