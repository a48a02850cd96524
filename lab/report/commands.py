"""The commands a report prints to rerun or inspect its study, with everything that names it.

A study made with config overrides (``NAME-<hash>``), more seeds, another storage or an
explicit study name is only found again with the same arguments, so they are all kept:
``make sweep ABLATION=tiny ARGS="train.steps=30 'seeds=[0, 1, 2]' storage=..."``. Arguments are
shell-quoted where needed; the whole command is one code span.
"""

from __future__ import annotations

import functools
import shlex
from pathlib import Path
from typing import Any

from lab.provenance import REPO
from lab.study.spec import Ablation, load_ablation
from lab.study.storage import redact_url


@functools.lru_cache(maxsize=32)
def file_defaults(path: str, mtime_ns: int, overrides: tuple[str, ...]) -> tuple[list[int], str]:
    """The seeds and study name the ablation file gives with these overrides (a report asks
    three times)."""
    default = load_ablation(path, list(overrides))
    return list(default.seeds), default.study


def study_args(abl: Ablation, meta: dict[str, Any] | None = None) -> list[str]:
    """Config overrides, then the study keys that differ from the file's defaults."""
    meta = meta or {}
    overrides = list(meta.get("config_overrides") or abl.config_overrides)
    args = list(overrides)
    default_seeds, default_study = file_defaults(str(abl.path), Path(abl.path).stat().st_mtime_ns,
                                                 tuple(overrides))
    seeds = meta.get("seeds") or abl.seeds
    if list(seeds) != list(default_seeds):
        args.append(f"seeds=[{','.join(map(str, seeds))}]")
    if abl.study != default_study:
        args.append(f"study={abl.study}")
    if abl.storage != f"sqlite:///studies/{abl.study}.db":
        args.append(f"storage={redact_url(abl.storage)}")
    return args


def _shipped_name(abl: Ablation) -> str | None:
    """NAME when the ablation file is the repository's ablations/NAME.yaml (make targets)."""
    try:
        rel = Path(abl.path).resolve().relative_to(REPO.resolve())
    except ValueError:
        return None
    return rel.stem if rel.parent == Path("ablations") and rel.suffix == ".yaml" else None


def lab_command(command: str, abl: Ablation, meta: dict[str, Any] | None = None) -> str:
    """`lab COMMAND FILE ARGS...`, shell-quoted."""
    return " ".join(["lab", command, shlex.quote(str(abl.path)),
                     *(shlex.quote(a) for a in study_args(abl, meta))])


def make_command(target: str, abl: Ablation, meta: dict[str, Any] | None = None) -> str:
    """`make TARGET ABLATION=NAME ARGS="..."` for a shipped ablation, else the lab command."""
    name = _shipped_name(abl)
    if name is None:
        return lab_command(target, abl, meta)
    args = " ".join(shlex.quote(a) for a in study_args(abl, meta))
    return f'make {target} ABLATION={name}' + (f' ARGS="{args}"' if args else "")


def rerun_command(abl: Ablation, meta: dict[str, Any] | None = None) -> str:
    """`lab rerun FILE SETTING ARGS seed=N`: one trial outside the study (placeholders)."""
    args = [a for a in study_args(abl, meta) if not a.startswith("seeds=")]
    return " ".join(["lab", "rerun", shlex.quote(str(abl.path)), "SETTING",
                     *(shlex.quote(a) for a in args), "seed=N"])
