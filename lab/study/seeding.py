"""The study's comparisons and their decisions, look by look; sequential seeds between rounds.

The report and the sweep decide a study's comparisons the same way, here: the design
(lab.stats.design) of the completed settings, and the decisions of every look the sweep
took (lab.stats.sequential). With ``seeds: {min, max}`` the sweep calls :func:`next_round`
after each round of trials: it records the look, and gives one more seed to each setting of
a comparison that is still open (twins through their owner), until none is open or every
setting that needs one has ``max`` seeds.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING

from lab.stats import SettingStats, TrialRecord, VerdictOptions, summarize
from lab.stats.design import StudyDesign, open_pairs, study_design
from lab.stats.family import Decision
from lab.stats.sequential import Look, look_alphas, needs_seed, replay
from lab.study.attrs import ABLATION_ATTR, LOOKS_ATTR, SEED_PLAN_ATTR, TASK_ATTR
from lab.study.queue import seed_plan
from lab.study.records import trial_records

if TYPE_CHECKING:
    from lab.study.spec import Ablation


def options_for(abl: Ablation, study, scale: float = 1.0, unit: str = "") -> VerdictOptions:
    meta = study.user_attrs.get(ABLATION_ATTR, {}) if study is not None else {}
    opts = {**meta.get("analysis", {}), **abl.analysis}
    objective = meta.get("objective", abl.objective)
    chance = None
    if "acc" in objective and study is not None:
        chance = (study.user_attrs.get(TASK_ATTR) or {}).get("chance")
    return VerdictOptions(direction=meta.get("direction", abl.direction),
                          confidence=float(opts.get("confidence", 0.95)),
                          min_gain=float(opts.get("min_gain", 0.01)), chance=chance,
                          scale=scale, unit=unit)


def bounds_of(objective: str) -> tuple[float, float] | None:
    if "acc" in objective:
        return (0.0, 1.0)
    return (0.0, math.inf) if objective.endswith(("loss", "bpb")) else None


def design_for(abl: Ablation, study, stats: list[SettingStats], options: VerdictOptions
               ) -> StudyDesign:
    """The study's design over these statistics (its primary arm first)."""
    meta = study.user_attrs.get(ABLATION_ATTR, {}) if study is not None else {}
    opts = {**meta.get("analysis", {}), **abl.analysis}
    by_group: dict[str, list[SettingStats]] = defaultdict(list)
    for s in stats:
        by_group[s.group].append(s)
    primary = opts.get("primary")
    groups = list(by_group)
    if primary in by_group:
        groups = [primary] + [g for g in groups if g != primary]
    pairs = {frozenset((t, o)) for t, o in abl.twins().items()}
    return study_design(dict(by_group), groups, options, primary=primary,
                        reference=opts.get("reference"), twins=pairs)


def looks_of(abl: Ablation, study) -> list[Look]:
    """The looks the sweep recorded, with each look's alpha spend; a study without sequential
    seeds has one look (all its data) at the full alpha."""
    alpha = options_for(abl, study).alpha
    stored = (study.user_attrs.get(LOOKS_ATTR) or []) if study is not None else []
    if not abl.sequential or not stored:
        return [Look(n=0, alpha=alpha, seeds={})]
    assert abl.seed_max is not None
    spends = look_alphas(alpha, [int(lk["n"]) for lk in stored], abl.seed_max)
    return [Look(int(lk["n"]), a, dict(lk["seeds"])) for lk, a in zip(stored, spends, strict=True)]


def restrict(records: list[TrialRecord], seeds: dict[str, int]) -> list[TrialRecord]:
    """Each setting's completed records of its first `seeds[setting]` seeds (all where the
    look does not name the setting)."""
    if not seeds:
        return records
    done = defaultdict(list)
    for r in records:
        if r.state == "COMPLETE":
            done[r.setting].append(r.seed)
    keep = {k: set(sorted(v)[: seeds.get(k, len(v))]) for k, v in done.items()}
    return [r for r in records if r.state != "COMPLETE" or r.seed in keep.get(r.setting, set())]


def decide_study(abl: Ablation, study, records: list[TrialRecord], options: VerdictOptions
                 ) -> tuple[StudyDesign, dict[str, Decision], dict[str, int], list[Look]]:
    """(design over all the data, decisions with each comparison's claims from the first look
    that decided it, {comparison: deciding look}, the looks)."""
    conf, bounds = options.confidence, bounds_of(abl.objective)
    looks = looks_of(abl, study)

    tw = abl.twins()

    def family_at(look: Look):
        seeds = {**look.seeds, **{t: look.seeds[o] for t, o in tw.items() if o in look.seeds}}
        stats = summarize(restrict(records, seeds), confidence=conf, bounds=bounds)
        return design_for(abl, study, stats, options).family

    decisions, when = replay(looks, family_at)
    design = design_for(abl, study, summarize(records, confidence=conf, bounds=bounds), options)
    return design, decisions, when, looks


def completed_seeds(records: list[TrialRecord]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in records:
        if r.state == "COMPLETE":
            out[r.setting] += 1
    return dict(out)


def next_round(abl: Ablation, study) -> list[str]:
    """Record this look and give one more seed to the settings of every open comparison.
    Returns the settings that got one (empty: the study is decided, or at its maximum)."""
    assert abl.seed_max is not None
    records, _ = trial_records(study, abl)
    seeds_now = completed_seeds([r for r in records if r.setting not in abl.twins()])
    stored = list(study.user_attrs.get(LOOKS_ATTR) or [])
    if not stored or stored[-1]["seeds"] != seeds_now:
        stored.append({"n": len(abl.seeds) + len(stored), "seeds": seeds_now})
        study.set_user_attr(LOOKS_ATTR, stored)
    design, decisions, _, _ = decide_study(abl, study, records, options_for(abl, study))
    tw = abl.twins()
    plan = seed_plan(abl, study)
    opens = [(tw.get(a, a), tw.get(b, b)) for a, b in open_pairs(design, decisions)]
    grow = []
    for label in sorted(needs_seed(opens, {k: len(v) for k, v in plan.items()}, abl.seed_max)
                        & set(plan)):
        nxt = next(s for s in abl.seed_pool if s not in plan[label])
        plan[label] = sorted([*plan[label], nxt])
        grow.append(label)
    if grow:
        study.set_user_attr(SEED_PLAN_ATTR, plan)
    return grow
