"""A study's identity: create or resume it, refuse one that would mix incomparable trials
(with the migration of identities made when fewer keys were in them), and read an existing one
from its storage or from the journal beside its report."""

from __future__ import annotations

import json
import time
from pathlib import Path

from lab.config import flatten, to_dict
from lab.errors import LabError
from lab.provenance import provenance
from lab.study.attrs import (
    ABLATION_ATTR,
    BASE_CONFIG_ATTR,
    CREATED_ATTR,
    FINGERPRINT_ATTR,
    IDENTITY_ATTR,
    PROVENANCE_ATTR,
    TASK_ATTR,
    stored_seed_choices,
)
from lab.study.journal import journal_path, read_journal, write_journal
from lab.study.spec import ADDED_IDENTITY_KEYS, Ablation
from lab.study.storage import open_storage, redact_url, storage_errors


def sampler_and_pruner(abl: Ablation) -> dict:
    """The sampler and pruner of the main study: every process that opens it uses these."""
    import optuna

    # Grid studies queue every trial with its parameters; the sampler only answers a worker
    # that finds the queue empty (a spurious trial, pruned at once). A brute-force sampler
    # would enumerate the seed's integer range after every trial.
    sampler = (optuna.samplers.TPESampler(seed=abl.seeds[0]) if abl.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=0))
    pruner = {"median": optuna.pruners.MedianPruner(n_warmup_steps=1),
              "hyperband": optuna.pruners.HyperbandPruner()}.get(abl.pruner or "",
                                                                 optuna.pruners.NopPruner())
    return {"sampler": sampler, "pruner": pruner}


def create_or_load_study(abl: Ablation, storage=None):
    import optuna

    storage = storage or open_storage(abl.storage)
    fp, ident = abl.fingerprint()
    study = optuna.create_study(study_name=abl.study, storage=storage,
                                direction=abl.direction, load_if_exists=True,
                                **sampler_and_pruner(abl))
    name_objective(study, abl.objective)
    old = study.user_attrs.get(FINGERPRINT_ATTR)
    if old is None:
        # Building the task (torch) only for a new study: resuming one, the parent of the
        # workers stays light.
        from lab.model import resolve
        from lab.tasks import check_eval_room, task_record

        cfg, task, _ = resolve(abl.config())
        # A corpus too small for the evaluation sets: one message now, not a failed trial each.
        check_eval_room(task, cfg.train.val_size,
                        ("train", "val", "ood", *(("tune",) if abl.tune is not None else ())))
        study.set_user_attr(FINGERPRINT_ATTR, fp)
        study.set_user_attr(IDENTITY_ATTR, ident)
        study.set_user_attr(ABLATION_ATTR, {
            "name": abl.name, "file": str(abl.path), "description": abl.description,
            "question": abl.question, "seeds": abl.seeds, "objective": abl.objective,
            "direction": abl.direction, "sampler": abl.sampler, "n_trials": abl.n_trials,
            "pruner": abl.pruner, "axis": abl.axis, "analysis": abl.analysis,
            "config_overrides": abl.config_overrides,
        })
        study.set_user_attr(BASE_CONFIG_ATTR, to_dict(cfg))
        study.set_user_attr(TASK_ATTR, {**task_record(task), "causal": bool(task.causal)})
        study.set_user_attr(PROVENANCE_ATTR, provenance())
        study.set_user_attr(CREATED_ATTR, time.time())
    elif old != fp and canonical(stored_identity(study)) == canonical(ident):
        # Made when fewer keys were in the identity, with the values it has now: migrate.
        study.set_user_attr(FINGERPRINT_ATTR, fp)
        study.set_user_attr(IDENTITY_ATTR, ident)
        check_seeds(study, abl)
    elif old != fp:
        prev = stored_identity(study)
        recipe = recipe_change(prev, ident)
        if recipe:
            then = " ".join(f"{k}={json.dumps(v)}" for k, v in recipe.items())
            raise LabError(
                f"study '{abl.study}' in {redact_url(abl.storage)} was made with the earlier model "
                f"recipe ({then}); this run uses the current one (rotary positions, tied "
                f"embeddings), so it is a new study: start it with study=<new-name> (e.g. "
                f"study={abl.study}-rope), or report and resume the old one with its recipe "
                f"(add the overrides {then}).")
        raise LabError(
            f"study '{abl.study}' in {redact_url(abl.storage)} was created with a different "
            f"{first_difference(prev, ident)}. Resuming would mix incomparable trials. Start a new "
            f"study with study=<new-name> (e.g. study={abl.study}-v2), or remove the old one "
            f"(rm {abl.storage[len('sqlite:///'):]} for the default SQLite storage)."
        )
    else:
        check_seeds(study, abl)
        # Seeds may grow between runs; keep the latest list for the report.
        meta = dict(study.user_attrs.get(ABLATION_ATTR, {}))
        if meta.get("seeds") != abl.seeds:
            meta["seeds"] = sorted(set(meta.get("seeds", [])) | set(abl.seeds))
            study.set_user_attr(ABLATION_ATTR, meta)
    return study


RECIPE_KEYS = ("model.positions", "model.tie_embeddings")


def recipe_change(prev: dict, ident: dict) -> dict:
    """{key: the value the study ran with} when the two identities differ in the model
    recipe (positions, tied embeddings) and in nothing else; else {}."""
    fa, fb = flatten(prev), flatten(ident)
    diff = {k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k)}
    keys = {f"base.{k}" for k in RECIPE_KEYS}
    if not diff or not diff <= keys:
        return {}
    return {k.split(".", 1)[1]: fa.get(k) for k in sorted(diff)}


def name_objective(study, metric: str) -> None:
    """Name the study's objective (optuna-dashboard and the importance plots show it instead
    of "Objective 0")."""
    if study.metric_names != [metric]:
        study.set_metric_names([metric])


def stored_identity(study) -> dict:
    """The study's stored identity; for a study made when fewer keys were in the identity,
    with those keys added at the values it ran with (its stored base config, else the
    defaults of that time)."""
    prev = study.user_attrs.get(IDENTITY_ATTR)
    if not isinstance(prev, dict) or not isinstance(prev.get("base"), dict):
        return prev if isinstance(prev, dict) else {}
    ran_with = flatten(study.user_attrs.get(BASE_CONFIG_ATTR) or {})
    added = {k: ran_with.get(k, default) for k, default in ADDED_IDENTITY_KEYS.items()
             if k not in prev["base"]}
    return {**prev, "base": {**prev["base"], **added}}


def canonical(x) -> str:
    return json.dumps(json.loads(json.dumps(x, default=str)), sort_keys=True)


def check_seeds(study, abl: Ablation) -> None:
    """A study that stored its seed as a fixed categorical (made before seeds were integers)
    can run only the seeds it was made with."""
    choices = stored_seed_choices(study.get_trials(deepcopy=False))
    if choices is None:
        return
    extra = sorted(set(abl.seeds) - set(choices))
    if extra or (abl.sampler != "grid" and set(abl.seeds) != set(choices)):
        raise LabError(
            f"study '{abl.study}' was made by an older version of the lab, which fixed its seeds "
            f"to {choices}; it cannot run seeds={abl.seeds}"
            + (f" (new: {extra})" if extra else "") + ". Run the new seeds in a new study "
            f"(study={abl.study}-v2 seeds={abl.seeds}), or keep seeds within {choices}."
        )


def first_difference(a: dict, b: dict) -> str:
    fa, fb = flatten(a), flatten(b)
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k) != fb.get(k):
            what = "search space" if k.startswith("space") else (
                "config" if k.startswith("base") else k)
            key = k.split(".", 1)[1] if "." in k else k
            return f"{what} (first difference at '{key}': was {fa.get(k)!r}, now {fb.get(k)!r})"
    return "setup"


def existing_storage(abl: Ablation) -> tuple[object, str]:
    """The storage that holds the study, and its name for messages: the study's own storage,
    or, when that does not exist (a fresh clone has no studies/), the journal its sweep wrote
    beside its report (read into memory: the committed file is never written)."""
    if abl.storage.startswith("sqlite:///") and not Path(abl.storage[len("sqlite:///"):]).is_file():
        journal = journal_path(abl.study)
        if journal.is_file():
            return read_journal(journal), str(journal)
        raise LabError(
            f"no study '{abl.study}': its storage {abl.storage[len('sqlite:///'):]} does not exist, "
            f"nor {journal}, the copy a sweep writes beside its report. Run it first: "
            f"lab sweep {abl.path}."
        )
    return open_storage(abl.storage, heartbeat=False), redact_url(abl.storage)


def write_study_journal(abl: Ablation) -> Path:
    """reports/<study>/study.jsonl from the study's own storage (see lab.study.journal)."""
    storage = open_storage(abl.storage, heartbeat=False)
    with storage_errors(abl.storage):
        return write_journal(storage, abl.study)


def load_existing_study(abl: Ablation):
    """The study a sweep wrote (from its storage, else from the journal beside its report)."""
    import optuna

    storage, where = existing_storage(abl)
    try:
        with storage_errors(abl.storage):
            return optuna.load_study(study_name=abl.study, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise LabError(
            f"no study '{abl.study}' in {where}"
            + (f" (it holds: {', '.join(names)})" if names else " (it holds no studies)")
            + f". Run it first: lab sweep {abl.path}."
        ) from None
