"""`lab rerun`: retrain one setting and seed of a study outside it.

The config is built as the study's trial built it (:func:`lab.study.objective.measured_config`:
the ablation's overrides, the command line's config overrides, the setting, the seed and the
values tuned for the setting, ``lab.tuned``), so a rerun at the trial's thread count reproduces
the stored trial. The run goes to ``runs/<study>-rerun/`` with the study's hparams, for a
closer look in TensorBoard. The study must exist (it is not written): a missing storage or
study, or a seed the study never had, is refused before anything trains.
"""

from __future__ import annotations

from lab.errors import LabError
from lab.study.attrs import ABLATION_ATTR, SETTING_ATTR, trial_seed
from lab.study.hparams import hparam_domain, trial_hparams
from lab.study.space import Setting
from lab.study.spec import Ablation, load_ablation
from lab.train import RunResult, train


def find_setting(abl: Ablation, name: str) -> Setting:
    """The setting labelled `name`: exactly, else ignoring case and spaces, else the one
    setting whose label contains it."""
    settings = abl.settings()
    if not settings:
        raise LabError(f"ablation '{abl.path}' samples its settings ({abl.sampler}); rerun "
                       "works on grid ablations.")

    def norm(s: str) -> str:
        return "".join(s.lower().split())

    for match in (lambda s: s.label == name, lambda s: norm(s.label) == norm(name),
                  lambda s: norm(name) in norm(s.label)):
        found = [s for s in settings if match(s)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise LabError(f"setting '{name}' matches {len(found)} settings of {abl.name}: "
                           + "; ".join(s.label for s in found) + ". Give the whole label.")
    raise LabError(f"ablation {abl.name} has no setting '{name}'. Its settings: "
                   + "; ".join(s.label for s in settings) + ".")


def split_seed(overrides: list[str]) -> tuple[int | None, list[str]]:
    """`seed=N` out of the overrides (it picks the trial, it does not name a new study)."""
    seed, rest = None, []
    for o in overrides:
        key, _, value = o.partition("=")
        if key == "seed":
            try:
                seed = int(value)
            except ValueError:
                raise LabError(f"seed must be an integer, got '{value}'.") from None
        else:
            rest.append(o)
    return seed, rest


def rerun(path: str, setting: str, overrides: list[str] | None = None,
          runs_dir: str = "runs", progress: bool = True,
          announce=None) -> tuple[Ablation, Setting, int, RunResult]:
    from lab.study.identity import load_existing_study
    from lab.study.objective import measured_config

    seed, rest = split_seed(overrides or [])
    abl = load_ablation(path, rest)
    s = find_setting(abl, setting)
    owner = abl.twins().get(s.label)
    if owner is not None:  # the same model as an earlier setting, whose trials stand for it
        if announce is not None:
            announce(f"'{s.label}' is the same model as '{owner}': rerunning that trial.")
        s = find_setting(abl, owner)
    study = load_existing_study(abl)  # refuses a missing storage or study
    seed = abl.seeds[0] if seed is None else seed
    trials = study.get_trials(deepcopy=False)
    check_seed(abl, study, trials, seed)
    cfg, tuned = measured_config(abl, study, s.label, s.params, seed)
    if abl.tune is not None and not tuned:
        raise LabError(f"study '{abl.study}' has no tuned values for '{s.label}' yet (its tuning "
                       f"has not finished), so no trial of it has run: finish the sweep first "
                       f"(lab sweep {abl.path}).")
    if announce is not None and stored_value(abl, s.label, seed, trials) is None:
        announce(f"study '{abl.study}' has no completed trial of '{s.label}', seed {seed}: "
                 "training it anyway, with nothing stored to compare against.")
    res = train(cfg, save_dir=runs_dir, name=f"{abl.study}-rerun", progress=progress,
                hparams=trial_hparams(abl, cfg, s.label), hparam_domain=hparam_domain(abl))
    return abl, s, seed, res


def check_seed(abl: Ablation, study, trials, seed: int) -> None:
    """A rerun reproduces a trial of the study: a seed the study never had is refused (it
    would train a run that nothing can be compared with; new seeds belong in the study)."""
    had = set((study.user_attrs.get(ABLATION_ATTR) or {}).get("seeds") or [])
    had |= {s for t in trials if (s := trial_seed(t)) is not None}
    if seed not in had:
        listed = ", ".join(map(str, sorted(had))) or "none yet"
        raise LabError(
            f"study '{abl.study}' has no seed {seed} (its seeds: {listed}), so there is no trial "
            f"to rerun. Pick one of its seeds (seed=N), or add seed {seed} to the study: "
            f"lab sweep {abl.path} seeds=[{', '.join(map(str, sorted(had | {seed})))}]."
        )


def stored_value(abl: Ablation, label: str, seed: int, trials=None) -> float | None:
    """The study's completed value for (setting, seed), when the study has one."""
    from optuna.trial import TrialState

    from lab.study.identity import load_existing_study

    if trials is None:
        try:
            trials = load_existing_study(abl).get_trials(deepcopy=False)
        except LabError:
            return None
    for t in trials:
        if (t.state == TrialState.COMPLETE and t.user_attrs.get(SETTING_ATTR) == label
                and t.params.get("seed") == seed):
            return t.value
    return None
