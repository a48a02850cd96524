"""`lab rerun`: retrain one setting and seed of an ablation outside its study.

The config is exactly the one the study's trial ran with (``Ablation.config(params, seed)``,
with the ablation's overrides and the command line's config overrides); the run goes to
``runs/<study>-rerun/`` with the study's hparams, for a closer look in TensorBoard. The
study storage is not written.
"""

from __future__ import annotations

from lab.errors import LabError
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
          runs_dir: str = "runs", progress: bool = True) -> tuple[Ablation, Setting, int, RunResult]:
    seed, rest = split_seed(overrides or [])
    abl = load_ablation(path, rest)
    s = find_setting(abl, setting)
    seed = abl.seeds[0] if seed is None else seed
    cfg = abl.config(s.params, seed)
    res = train(cfg, save_dir=runs_dir, name=f"{abl.study}-rerun", progress=progress,
                hparams=trial_hparams(abl, cfg, s.label), hparam_domain=hparam_domain(abl))
    return abl, s, seed, res


def stored_value(abl: Ablation, label: str, seed: int) -> float | None:
    """The study's completed value for (setting, seed), when the study exists."""
    from optuna.trial import TrialState

    from lab.study.attrs import SETTING_ATTR
    from lab.study.run import load_existing_study

    try:
        study = load_existing_study(abl)
    except LabError:
        return None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get(SETTING_ATTR) == label and t.params.get("seed") == seed:
            return t.value
    return None
