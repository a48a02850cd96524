"""What did not run, or did not finish: every setting of the ablation accounted for.

A report lists every setting the ablation defines (run or not), every failed pair with its
reason (final failures, and the last reason of pairs still to be retried), the pairs still
outstanding, and the settings a verdict could not judge (no completed seed) or judged on fewer
seeds than asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lab.study.attrs import FAIL_ATTR, final_pairs, pair_key, pair_params, trial_pair

if TYPE_CHECKING:
    from lab.report.study import StudyAnalysis


def pair_status(sa: StudyAnalysis) -> list[dict]:
    """One row per (setting, seed) pair of the ablation: done, failed (final, with reason),
    or outstanding (with the last attempt's reason, if any)."""
    if sa.abl.sampler != "grid":
        return []
    trials = [t for t in sa.study.get_trials(deepcopy=False) if t.params]
    final = final_pairs(trials)
    last_reason: dict[str, str] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state.name == "FAIL" and t.user_attrs.get(FAIL_ATTR):
            last_reason[trial_pair(t)] = str(t.user_attrs[FAIL_ATTR])
    # The seeds asked for: with sequential seeds each setting's plan, else the study's (they
    # may have grown) and this ablation file's. A twin's pairs are its owner's.
    from lab.study.queue import seed_plan

    plan = seed_plan(sa.abl, sa.study)
    if not sa.abl.sequential:
        seeds = sorted(set(sa.meta.get("seeds", [])) | set(sa.abl.seeds))
        plan = dict.fromkeys(plan, seeds)
    tw = sa.abl.twins()
    by_label = {s.label: s for s in sa.abl.settings()}
    rows = []
    for s in sa.abl.settings():
        owner = by_label[tw.get(s.label, s.label)]
        for seed in plan.get(owner.label, []):
            key = pair_key(pair_params(owner.params, seed))
            if key in final:
                reason = final[key]
                state = "done" if reason is None else "failed"
            else:
                reason, state = last_reason.get(key), "outstanding"
            rows.append({"setting": s.label, "group": s.group, "seed": seed, "state": state,
                         "reason": reason})
    return rows


def first_line(text: str | None, limit: int = 160) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def verdict_caveats(sa: StudyAnalysis, group: str) -> str:
    """A clause naming the arm's settings that the verdict could not judge or judged on
    fewer seeds than asked for ('' when there are none)."""
    rows = [r for r in pair_status(sa) if r["group"] == group]
    if not rows:
        return ""
    by: dict[str, dict[str, int]] = {}
    for r in rows:
        d = by.setdefault(r["setting"], {"done": 0, "failed": 0, "outstanding": 0})
        d[r["state"]] += 1
    missing = [k for k, d in by.items() if d["done"] == 0]
    thin = [k for k, d in by.items() if 0 < d["done"] < sum(d.values())]
    parts = []
    if missing:
        parts.append("not judged (no completed seed): " + "; ".join(
            f"{k} ({describe(by[k])})" for k in missing))
    if thin:
        parts.append("judged on fewer seeds than asked: " + "; ".join(
            f"{k} ({by[k]['done']} of {sum(by[k].values())} done, {describe(by[k], done=False)})"
            for k in thin))
    return (" " + ". ".join(p[0].upper() + p[1:] for p in parts) + ".") if parts else ""


def describe(d: dict[str, int], done: bool = True) -> str:
    parts = [f"{d['failed']} failed"] if d["failed"] else []
    if d["outstanding"]:
        parts.append(f"{d['outstanding']} not run yet")
    if done and d["done"]:
        parts.insert(0, f"{d['done']} done")
    return ", ".join(parts) or "none"


def failures_section(sa: StudyAnalysis) -> list[str]:
    from lab.report.fmt import md_table

    rows = pair_status(sa)
    bad = [r for r in rows if r["state"] != "done"]
    if not bad:
        return []
    failed = [r for r in bad if r["state"] == "failed"]
    outstanding = [r for r in bad if r["state"] == "outstanding"]
    lines = ["## Failures and missing trials", ""]
    if failed:
        lines += [f"{len(failed)} pair(s) failed for good (diverged, or failed the same way "
                  "when retried); they are not in the means above:", "",
                  md_table(["setting", "seed", "reason"],
                           [[r["setting"], str(r["seed"]), first_line(r["reason"])]
                            for r in failed], "lrl"), ""]
    if outstanding:
        lines += [f"{len(outstanding)} pair(s) have not completed yet (interrupted, not yet "
                  "run, or to be retried); `lab sweep` again runs them:", "",
                  md_table(["setting", "seed", "last attempt"],
                           [[r["setting"], str(r["seed"]), first_line(r["reason"]) or "not run"]
                            for r in outstanding], "lrl"), ""]
    return lines
