"""`lab sample`: generate bytes from a trained text-task run, to see what a model learned.

The run is a run directory (``runs/<name>/version_<n>``, with its ``config.yaml`` and
``checkpoints/last.ckpt``) or a study's trial, named like ``lab rerun`` does (ablation file,
setting, ``seed=N``), whose run directory the study recorded. The model is rebuilt from the
run's resolved config and its last checkpoint, and decodes with its KV cache at the loop
count it was evaluated at (lab.eval.generate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import LabError

CHECKPOINT = Path("checkpoints") / "last.ckpt"


@dataclass
class LoadedRun:
    run_dir: Path
    model: Any  # lab.model.Stack, in eval mode
    loops: int  # the loop count the run was evaluated at
    context: int  # the training window (tokens the model sees at once)
    step: int | None  # the checkpoint's training step
    steps: int  # train.steps of the run


def load_run(run_dir: str | Path) -> LoadedRun:
    """The trained model of a text-task run directory."""
    import torch

    from lab.config import load_config
    from lab.model import build_model, resolve

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise LabError(f"'{run}' is not a run directory (no config.yaml in it); give one such as "
                       "runs/<name>/version_<n>, or an ablation file, a setting and seed=N.")
    cfg, task, plan = resolve(load_config([run / "config.yaml"]))
    if not getattr(task, "tokens_are_bytes", False):
        raise LabError(f"run '{run}' is on task '{cfg.task.get('name')}', whose tokens are not "
                       "bytes: lab sample generates text from text-task runs (task.name=text).")
    ckpt = run / CHECKPOINT
    if not ckpt.is_file():
        raise LabError(f"run '{run}' has no checkpoint ({ckpt}): it did not finish a training "
                       "step, or its checkpoints were deleted.")
    try:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        state = {k[len("model."):]: v for k, v in saved["state_dict"].items()
                 if k.startswith("model.")}
        model = build_model(cfg, task, plan)
        model.load_state_dict(state)
    except Exception as e:  # a corrupt file, or weights of another model
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LabError(f"cannot load the model of run '{run}' from {ckpt}: {detail}.") from None
    return LoadedRun(run, model.eval(), cfg.model.eval_loops or cfg.model.loops,
                     task.max_seq_len, saved.get("global_step"), cfg.train.steps)


def trial_run_dir(path: str, setting: str, overrides: list[str]) -> tuple[Path, str]:
    """The run directory of a study's trial (setting, `seed=N` or the first seed), and a
    description of the trial for messages."""
    from optuna.trial import TrialState

    from lab.study.attrs import SETTING_ATTR
    from lab.study.identity import load_existing_study
    from lab.study.rerun import find_setting, split_seed
    from lab.study.spec import load_ablation

    seed, rest = split_seed(overrides)
    abl = load_ablation(path, rest)
    s = find_setting(abl, setting)
    seed = abl.seeds[0] if seed is None else seed
    done = [t for t in load_existing_study(abl).get_trials(deepcopy=False,
                                                           states=(TrialState.COMPLETE,))
            if t.user_attrs.get(SETTING_ATTR) == s.label and t.params.get("seed") == seed]
    what = f"{abl.study}: {s.label}, seed {seed}"
    if not done:
        raise LabError(f"study '{abl.study}' has no completed trial of '{s.label}' at seed "
                       f"{seed}. Its seeds: {abl.seeds}.")
    run_dir = Path(str(done[-1].user_attrs.get("run_dir") or ""))
    if not (run_dir / "config.yaml").is_file():
        raise LabError(
            f"the run directory of trial #{done[-1].number} ({what}), '{run_dir}', is not on "
            f"this machine (runs/ is not shipped with the reports). Train it again with "
            f"lab rerun {path} \"{s.label}\" seed={seed}, then sample that run "
            f"(runs/{abl.study}-rerun/version_<n>).")
    return run_dir, f"trial #{done[-1].number} of {what}:"


def parse_prompt(text: str) -> list[int]:
    """The prompt's bytes: UTF-8, with backslash escapes (\\n, \\t, \\xNN) as in Python."""
    try:
        data = text.encode("utf-8").decode("unicode_escape").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError):
        data = text.encode("utf-8")  # not escapes after all: the text as given
    if not data:
        raise LabError("the prompt is empty: give at least one byte (--prompt 'def ').")
    return list(data)


def check_sampling(length: int, temperature: float) -> None:
    if length < 1:
        raise LabError(f"--length must be at least 1 byte, got {length}.")
    if not temperature >= 0:
        raise LabError(f"--temperature must be >= 0 (0 = the most likely byte), got {temperature}.")
