"""Models: the plan (pure data), the executor, and the assembly from a config."""

from __future__ import annotations

from dataclasses import replace

from lab.config import LabConfig
from lab.model.plan import (
    FAMILIES,
    StackPlan,
    check_loop_mode,
    count_params,
    make_plan,
    match_params,
)
from lab.model.stack import Stack, StackOutput
from lab.tasks import Task, build_task

__all__ = [
    "FAMILIES",
    "Stack",
    "StackOutput",
    "StackPlan",
    "build_model",
    "count_params",
    "make_plan",
    "resolve",
]


def resolve(cfg: LabConfig, task: Task | None = None) -> tuple[LabConfig, Task, StackPlan]:
    """Build the task (unless `task`, built from cfg.task, is given), solve parameter
    matching, and plan the stack.

    Returns the config with matched widths filled in (what the run records), the task and
    the plan. Pure apart from building the task object.
    """
    task = build_task(cfg.task) if task is None else task
    m = cfg.model
    check_loop_mode(m.loop_mode, task.causal, f"task '{cfg.task.get('name')}'")
    if m.match_params:
        match = match_params(m, task.vocab_size, task.max_seq_len)
        m = replace(m, d_model=match.d_model, mlp_ratio=match.mlp_ratio)
    plan = make_plan(m)
    return replace(cfg, model=m), task, plan


def build_model(cfg: LabConfig, task: Task, plan: StackPlan) -> Stack:
    return Stack(plan, task.vocab_size, task.max_seq_len, task.causal, cfg.model.dropout)
