"""Sequential seeds: add seeds where a verdict is still open, and keep the error rate promised.

A study with ``seeds: {min: m, max: M}`` runs m seeds per setting, then looks at its
comparisons; each look after the first adds one seed to every setting in a comparison that is
still open, until every comparison is decided or the settings that need one more have M.

Repeated looks at growing data would inflate the error rate if every look used the full
alpha. The rule here is **alpha spending** (Lan and DeMets 1983) with the Pocock-type spending
function alpha(t) = alpha * ln(1 + (e - 1) t), where t = n / M is the information fraction of
the look (n seeds per setting at the look): look k spends alpha(t_k) - alpha(t_(k-1)), and the
spends add up to alpha at n = M. At each look the whole family of comparisons is tested at
that look's spend (Holm's procedure, lab.stats.family); a comparison decided at a look keeps
its claims. By the union bound, the probability of any false claim over all looks is at most
the sum of the spends, alpha, whatever the correlation between looks (conservative: it does
not use that correlation, as exact group-sequential boundaries would). Tests check it by
simulation over thousands of null studies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lab.stats.family import Decision, Family

METHOD = ("alpha spending over looks (Lan-DeMets, Pocock-type spending function "
          "alpha * ln(1 + (e - 1) t), t = seeds per setting / maximum seeds), each look "
          "tested with Holm's procedure at its spend; the union bound keeps the family-wise "
          "error rate over all looks at or below alpha")


def spent(alpha: float, t: float) -> float:
    """Alpha spent up to information fraction t in [0, 1]."""
    t = min(1.0, max(0.0, t))
    return alpha * math.log(1 + (math.e - 1) * t)


def look_alphas(alpha: float, ns: Iterable[int], max_seeds: int) -> list[float]:
    """The spend of each look, for looks at ns[k] seeds per setting (increasing)."""
    out, before = [], 0.0
    for n in ns:
        now = spent(alpha, n / max_seeds)
        out.append(max(0.0, now - before))
        before = now
    return out


@dataclass
class Look:
    """One look: seeds per setting at it, and its alpha spend."""

    n: int  # the look's information (seeds per setting a full round would have)
    alpha: float
    seeds: dict[str, int] = field(default_factory=dict)  # seeds completed per setting


@dataclass
class Record:
    """The claims made so far: each comparison's decision from the first look that decided
    it, and that look's index."""

    decided: dict[str, Decision] = field(default_factory=dict)
    when: dict[str, int] = field(default_factory=dict)
    last: dict[str, Decision] = field(default_factory=dict)
    looks: int = 0

    def advance(self, family: Family, alpha: float) -> dict[str, Decision]:
        """Test the whole family at this look's spend; keep earlier claims. Returns the
        decisions of the family's comparisons now."""
        family.alpha = alpha
        now = family.decisions()
        for name, d in now.items():
            if d.decided and name not in self.decided:
                self.decided[name], self.when[name] = d, self.looks
        self.looks += 1
        self.last = {**now, **{n: d for n, d in self.decided.items() if n in now}}
        return self.last


def replay(looks: list[Look], family_at: Callable[[Look], Family]
           ) -> tuple[dict[str, Decision], dict[str, int]]:
    """Decisions over a sequence of looks: each look's family tested at its spend; the first
    look at which a comparison is decided fixes its claims. Returns (decisions of the last
    look's comparisons with earlier claims kept, {comparison: index of the deciding look})."""
    rec = Record()
    for look in looks:
        rec.advance(family_at(look), look.alpha)
    return rec.last, rec.when


def needs_seed(open_comparisons: Iterable[tuple[str, str]], seeds: dict[str, int],
               max_seeds: int) -> set[str]:
    """Settings that get one more seed: both sides of every open comparison, below the max."""
    out = set()
    for a, b in open_comparisons:
        for s in (a, b):
            if seeds.get(s, 0) < max_seeds:
                out.add(s)
    return out
