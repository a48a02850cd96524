"""Verdicts in one sentence: where a curve levels off, or how settings compare to a reference.

Every verdict is built from comparisons decided as tests (lab.stats.family): a comparison is
*better*, *worse*, *equivalent* (TOST within the minimum gain) or *open*. A report decides all
its comparisons together (Holm's correction, :class:`lab.stats.family.Family`) and passes the
decisions in; a verdict computed alone decides its own comparisons as a family. See the
``lab.stats`` docstring for the rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from lab.stats.family import Comparison, Decision, Family, pooled_sd, seeds_for_power
from lab.stats.intervals import diff_ci
from lab.stats.summary import SettingStats, best_index, direction_sign

SEED_CAP = 1000  # the most seeds per setting a "would decide it" estimate names


@dataclass(frozen=True)
class VerdictOptions:
    """How differences are judged and written.

    direction: "maximize" or "minimize" (differences are oriented so positive is better);
    confidence: of every interval (and 1 - confidence is the family-wise error rate);
    min_gain: the smallest improvement (in objective units) that counts as a gain, and the
    equivalence margin; chance: the objective at chance level, if known (rule (b));
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

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence


@dataclass
class Gain:
    """One step of a curve (or one comparison): the improvement of `to` over `frm`."""

    frm: str
    to: str
    diff: float
    low: float
    high: float
    outcome: str = "open"  # better | worse | equivalent | open
    worthwhile: bool = False  # a gain (or loss) beyond the minimum gain is shown


@dataclass
class CurveVerdict:
    sentence: str
    supported: bool  # decided: the curve levels off, regresses, or still rises (shown)
    reason: str
    best: str
    saturation: str | None
    regressions: list[str]
    gains: list[Gain]
    levelled_off: bool
    # Open verdicts: about how many seeds per setting would decide (None: unknown or more
    # than SEED_CAP, see seeds_over_cap).
    seeds_needed: int | None = None
    # (setting, setting) labels of the comparisons still open that the verdict waits for.
    open_pairs: list[tuple[str, str]] = field(default_factory=list)
    seeds_over_cap: bool = False
    # Inconclusive verdicts: the last setting of the decided gains from the start (None: no
    # step is shown to gain), part of what the verdict says.
    shown_up_to: str | None = None


@dataclass
class CompareVerdict:
    sentence: str
    supported: bool  # decided: every comparison with the reference is decided
    reason: str
    best: str
    diffs: dict[str, tuple[float, float, float]]
    outcomes: dict[str, str] = field(default_factory=dict)
    open_pairs: list[tuple[str, str]] = field(default_factory=list)
    seeds_needed: int | None = None
    seeds_over_cap: bool = False


def improvement(
    a: SettingStats, b: SettingStats, sign: float, confidence: float
) -> tuple[float, float, float]:
    """Improvement of b over a (positive = better), with its Welch interval."""
    d, lo, hi = diff_ci(a.values, b.values, confidence)
    if sign > 0:
        return d, lo, hi
    return -d, -hi, -lo


def comparison_key(a: SettingStats, b: SettingStats) -> str:
    return f"{a.group}|{a.setting} -> {b.group}|{b.setting}"


def compare(a: SettingStats, b: SettingStats, o: VerdictOptions) -> Comparison:
    """The comparison of b against a (improvement of b), under the options' margin."""
    return Comparison(a.setting, b.setting, tuple(a.values), tuple(b.values), o.sign,
                      abs(o.min_gain), comparison_key(a, b))


def curve_comparisons(stats: list[SettingStats], o: VerdictOptions) -> list[Comparison]:
    """The steps of a curve: each setting against the one before it on the axis."""
    return [compare(stats[i], stats[i + 1], o) for i in range(len(stats) - 1)]


def reference_comparisons(stats: list[SettingStats], reference: str,
                          o: VerdictOptions) -> list[Comparison]:
    ref = next(s for s in stats if s.setting == reference)
    return [compare(ref, s, o) for s in stats if s.setting != reference]


def decide_alone(comparisons: list[Comparison], o: VerdictOptions) -> dict[str, Decision]:
    fam = Family(alpha=o.alpha)
    for c in comparisons:
        fam.add(c)
    return fam.decisions()


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


def amount(g: Gain, o: VerdictOptions) -> str:
    """'+1.2 points, 95% CI +0.3 to +2.1', or '+0.0 points, the same value on every seed' when
    both settings' seeds are constant (no spread: nothing to put an interval on)."""
    if g.low == g.high:
        return f"{signed(g.diff, o.scale)} {o.unit}, every seed of both gave one value each"
    return f"{signed(g.diff, o.scale)} {o.unit}, {_ci(g.low, g.high, o)}"


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


def _gain(c: Comparison, d: Decision, frm: str, to: str, o: VerdictOptions) -> Gain:
    lo, hi = c.interval(o.confidence)
    worth = d.worthwhile_gain if d.outcome == "better" else (
        d.worthwhile_loss if d.outcome == "worse" else False)
    return Gain(frm, to, c.diff, lo, hi, d.outcome, worth)


def need_sentence(gaps: list[tuple[Comparison, Decision]], o: VerdictOptions,
                  family_size: int) -> tuple[str, int | None, bool]:
    """'about N seeds per setting (now n) would decide it ...': the most any open comparison
    needs at 80% power, at the level its test would face (alpha / K, the first Holm step of
    a family of K), at the spread seen so far. (sentence, N, over the cap)."""
    level = o.alpha / max(1, family_size)
    worst, over, now = 0, False, 0
    for c, _ in gaps:
        sd = pooled_sd(c)
        now = max(now, min(c.n))
        n = seeds_for_power(c.diff, sd, c.margin, level, start=min(c.n) + 1, cap=SEED_CAP)
        if n is None:
            over = True
        else:
            worst = max(worst, n)
    if over:
        return (f"more than {SEED_CAP} seeds per setting would be needed to decide it at the "
                "spread seen so far", None, True)
    return (f"about {worst} seeds per setting (now {now}) would decide it with 80% power at the "
            "spread seen so far", worst, False)


def no_verdict_reason(
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


# ---------------------------------------------------------------------------------------------
# Verdicts


def curve_shape(outcomes: list[str]) -> tuple[int, int, list[int]]:
    """(j, w, open steps) of a curve whose steps have these outcomes: w is the first step
    shown worse (the number of steps if none), j the setting after the last step shown better
    before w (0 if none), and the open steps between j and w are what keeps the verdict open.
    """
    w = next((i for i, x in enumerate(outcomes) if x == "worse"), len(outcomes))
    rises = [i for i in range(w) if outcomes[i] == "better"]
    j = rises[-1] + 1 if rises else 0
    return j, w, [k for k in range(j, w) if outcomes[k] == "open"]


def curve_verdict(
    stats: list[SettingStats],
    options: VerdictOptions = VerdictOptions(),  # noqa: B008 - frozen, so shared safely
    *,
    name: Callable[[SettingStats], str] = lambda s: s.setting,
    decisions: dict[str, Decision] | None = None,
    family_size: int | None = None,
) -> CurveVerdict:
    """Where gains level off along an ordered axis (stats in axis order), from its steps.

    Each step (a setting against the one before it) is decided as *better*, *equivalent*
    (within +-min_gain by TOST), *worse*, or *open*. With j the setting after the last step
    that is better (the first setting when none is):

    - every step after j is equivalent: the curve **levels off at j**;
    - the first step after j that is not equivalent is worse: it **regresses** there (j is
      where it levels off, and the steps between are equivalent);
    - j is the last setting: gains **do not level off** within the range;
    - otherwise an open step after j leaves the verdict **inconclusive**: the sentence names
      it and about how many seeds would decide it.

    `decisions`: the report-wide decisions (by comparison key); without them the steps are
    decided as a family of their own.
    """
    o = options
    verb = "adds" if o.sign > 0 else "improves by"
    names = [name(s) for s in stats]
    comps = curve_comparisons(stats, o)
    if decisions is None:
        decisions = decide_alone(comps, o)
        family_size = len(comps)
    k_family = family_size or len(comps)
    decs = [decisions.get(c.name) or Decision(c, None) for c in comps]
    gains = [_gain(c, d, names[i], names[i + 1], o)
             for i, (c, d) in enumerate(zip(comps, decs, strict=True))]
    best_i = best_index(stats, o.sign) if stats else 0
    best = names[best_i] if stats else ""

    def unsupported(reason: str, sentence: str, **kw) -> CurveVerdict:
        return CurveVerdict(sentence, False, reason, best, None, [], gains, False, **kw)

    if len(stats) < 2:
        return unsupported("fewer than 2 settings",
                           "Not enough settings for a verdict: a curve needs at least 2 settings.")
    rule = no_verdict_reason(stats, name, o)
    if rule is not None:
        return unsupported(*rule)

    outcomes = [g.outcome for g in gains]
    n_steps = len(gains)
    j, w, open_steps = curve_shape(outcomes)
    rises = [i for i in range(w) if outcomes[i] == "better"]
    lead = ""
    if rises:
        g = gains[j - 1]
        ci = ("every seed of both gave one value each" if g.low == g.high else
              _ci(g.low, g.high, o))
        lead = f"{names[j]} {verb} {signed(g.diff, o.scale)} {o.unit} over {names[j - 1]} ({ci})"
    if j == n_steps:
        return CurveVerdict(f"Gains do not level off within the range: {lead}.", True, "", best,
                            None, [], gains, False)
    between = list(range(j, w))  # steps from the plateau's start to the regression (or end)
    regressions = [gains[k].to for k in range(w, n_steps) if outcomes[k] == "worse"]
    clauses = [lead] if lead else []
    if w < n_steps:
        g = gains[w]
        size = " (a worthwhile loss)" if g.worthwhile else ""
        regress = f"{g.to} regresses{size}: {amount(g, o)} against {g.frm}"
        later = [gains[k].to for k in range(w + 1, n_steps) if outcomes[k] == "better"]
        if later:
            regress += f", then gains again at {_join(later)}"
    if not open_steps:
        equiv = [gains[k] for k in between]
        if equiv:
            steps = "; ".join(f"{g.to}: {amount(g, o)}" for g in equiv)
            which = ("every later step" if w == n_steps else
                     "the next step" + ("s" if len(equiv) > 1 else ""))
            clauses.append(f"{which} within {_mag(o.min_gain, o.scale)} {o.unit} of the one "
                           f"before (equivalence shown: {steps})")
        if w < n_steps:
            clauses.append(regress)
        where = names[j]
        if not equiv:
            head = f"Gains stop at {where} and the curve regresses after it"
        elif not rises:
            head = (f"No step gains: the curve is flat from {where}" if w == n_steps else
                    f"No step gains, and the curve is flat from {where} until it regresses")
        else:
            head = f"Gains level off at {where}"
        return CurveVerdict(f"{head}: " + "; ".join(clauses) + ".", True, "", best, where,
                            regressions, gains, True)

    # Open: a step between the last gain and the first loss is neither gain nor equivalence.
    gaps = [(comps[k], decs[k]) for k in open_steps]
    need, n, over = need_sentence(gaps, o, k_family)
    shown = (f"gains are shown up to {names[j]} ({lead})" if rises else
             f"no step is shown to gain over {names[0]}")
    opens = "; ".join(f"{gains[k].to} vs {gains[k].frm}: {amount(gains[k], o)}"
                      for k in open_steps)
    also = f"; {regress}" if w < n_steps else ""
    sentence = (f"Inconclusive: {shown}, but where they level off is not decided ({opens}: "
                f"neither a gain nor equivalence within {_mag(o.min_gain, o.scale)} {o.unit} is "
                f"shown{also}); {need}.")
    return CurveVerdict(sentence, False, "inconclusive", best, None, regressions, gains, False,
                        seeds_needed=n, seeds_over_cap=over,
                        open_pairs=[(stats[k].setting, stats[k + 1].setting) for k in open_steps],
                        shown_up_to=names[j] if rises else None)


def compare_verdict(
    stats: list[SettingStats],
    reference: str,
    options: VerdictOptions = VerdictOptions(),  # noqa: B008 - frozen, so shared safely
    *,
    noun: str = "setting",
    decisions: dict[str, Decision] | None = None,
    family_size: int | None = None,
) -> CompareVerdict:
    """Unordered settings against a reference setting (matched on `setting`).

    `diffs` maps every other setting to its improvement over the reference (positive is
    better, also when minimizing) with its Welch interval; `outcomes` to its decision:
    better, worse, equivalent (TOST within +-min_gain) or open. The verdict is decided when
    every comparison is; "X wins" needs X best, better than the reference, and a gain beyond
    min_gain shown.
    """
    o = options
    by_name = {s.setting: s for s in stats}
    if reference not in by_name:
        raise ValueError(f"reference {reference!r} is not among the settings")
    comps = reference_comparisons(stats, reference, o) if len(stats) > 1 else []
    if decisions is None:
        decisions = decide_alone(comps, o)
        family_size = len(comps)
    k_family = family_size or len(comps)
    decs = {c.b: decisions.get(c.name) or Decision(c, None) for c in comps}
    gains = {c.b: _gain(c, decs[c.b], reference, c.b, o) for c in comps}
    diffs = {k: (g.diff, g.low, g.high) for k, g in gains.items()}
    outcomes = {k: g.outcome for k, g in gains.items()}
    best = stats[best_index(stats, o.sign)].setting

    def unsupported(reason: str, sentence: str, **kw) -> CompareVerdict:
        return CompareVerdict(sentence, False, reason, best, diffs, outcomes, **kw)

    if not comps:
        return unsupported("fewer than 2 settings", f"Nothing to compare: only {reference} was run.")
    rule = no_verdict_reason(stats, lambda s: s.setting, o)
    if rule is not None:
        return unsupported(*rule)

    def listed(keys: list[str]) -> str:
        return "; ".join(f"{k}: {amount(gains[k], o)}" for k in keys)

    better = [k for k, x in outcomes.items() if x == "better"]
    worse = [k for k, x in outcomes.items() if x == "worse"]
    same = [k for k, x in outcomes.items() if x == "equivalent"]
    open_ = [k for k, x in outcomes.items() if x == "open"]
    clauses: list[str] = []
    if best in better and gains[best].worthwhile:
        clauses.append(f"{best} wins: {amount(gains[best], o)} over {reference}")
    elif best in better:
        clauses.append(f"{best} is best and better than {reference} ({amount(gains[best], o)}), "
                       f"but a gain of at least {_mag(o.min_gain, o.scale)} {o.unit} is not shown")
    elif best == reference and not open_ and not better:
        clauses.append(f"{reference} is best")
    rest = [k for k in better if k != best]
    if rest:
        clauses.append(f"{_join(rest)} {'is' if len(rest) == 1 else 'are'} also better than "
                       f"{reference} ({listed(rest)})")
    if same:
        clauses.append(f"{_join(same)} {'is' if len(same) == 1 else 'are'} equivalent to "
                       f"{reference} within {_mag(o.min_gain, o.scale)} {o.unit} (TOST; "
                       f"{listed(same)})")
    if worse:
        clauses.append(f"{_join(worse)} {'is' if len(worse) == 1 else 'are'} worse than "
                       f"{reference} ({listed(worse)})")
    if open_:
        clauses.append(f"{_join(open_)} {'is' if len(open_) == 1 else 'are'} not "
                       f"distinguishable from {reference} at this precision ({listed(open_)})")
    sentence = "; ".join(clauses) + "."  # labels keep their case, even first
    if not open_:
        return CompareVerdict(sentence, True, "", best, diffs, outcomes)
    need, n, over = need_sentence([(c, decs[c.b]) for c in comps if c.b in open_], o, k_family)
    lead = "Inconclusive" if not (better or worse or same) else "Partly decided"
    return unsupported("inconclusive", f"{lead}: {sentence[:-1]}; {need}.", seeds_needed=n,
                       seeds_over_cap=over, open_pairs=[(reference, k) for k in open_])

