"""Depth-sensitive tasks, found by registry name or by import path ``package.module:Class``."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lab.errors import ConfigError
from lab.tasks.base import (
    IGNORE,
    SPLITS,
    Task,
    accuracy_by_difficulty,
    check_eval_room,
    describe,
    eval_set,
    has_difficulty,
    largest_solved,
    merge_counts,
    task_record,
)
from lab.tasks.induction import InductionTask
from lab.tasks.pointer import PointerTask
from lab.tasks.text import TextTask
from lab.tasks.word import WordProblemTask

TASKS: dict[str, type] = {
    "pointer": PointerTask,
    "induction": InductionTask,
    "word": WordProblemTask,
    "text": TextTask,
}

__all__ = [
    "IGNORE", "SPLITS", "TASKS", "Task", "accuracy_by_difficulty", "build_task",
    "check_eval_room", "describe",
    "eval_set", "has_difficulty", "largest_solved", "merge_counts", "resolve_task_class",
    "task_record",
]


def resolve_task_class(name: str) -> type:
    if name in TASKS:
        return TASKS[name]
    if ":" in name:
        module_name, _, cls_name = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ConfigError(
                "task.name", f"cannot import module '{module_name}' for task '{name}': {e}."
            ) from None
        cls = getattr(module, cls_name, None)
        if cls is None:
            raise ConfigError("task.name", f"module '{module_name}' has no class '{cls_name}'.")
        missing = [a for a in ("Config", "sample", "causal") if not hasattr(cls, a)]
        if missing:
            raise ConfigError(
                "task.name",
                f"'{name}' does not implement the task protocol (missing {', '.join(missing)}); "
                "see 'Adding a task' in the README.",
            )
        return cls
    raise ConfigError(
        "task.name",
        f"unknown task '{name}'. Built-in tasks: {', '.join(sorted(TASKS))}; or give an import "
        "path 'package.module:ClassName'.",
    )


def build_task(spec: dict[str, Any]) -> Task:
    """Build a task from the config's task section ({'name': ..., knob: value, ...})."""
    spec = dict(spec)
    cls = resolve_task_class(str(spec.get("name")))
    valid = [f.name for f in dataclasses.fields(cls.Config)]
    unknown = [k for k in spec if k not in valid and k != "name"]
    if unknown:
        raise ConfigError(
            f"task.{unknown[0]}",
            f"unknown key for task '{spec['name']}'. Valid keys: {', '.join(['name', *valid])}.",
        )
    params = {k: v for k, v in spec.items() if k in valid}
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls.Config), params))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "?")
        raise ConfigError(f"task.{key}", str(getattr(e, "msg", e)).splitlines()[0]) from None
    return cls(cfg)
