"""Budgets as real decayed models: one stable run, and a decayed branch for each smaller budget.

With ``train.schedule=wsd`` and ``train.budgets=[b_1, ..., 1.0]`` a run trains ``train.steps``
steps (its own decay, over the last ``decay_fraction`` of them, makes the full budget). The
wsd schedule of a run of B_i = round(b_i * steps) steps is the long run's schedule up to
D_i = decay_start(B_i) (warm-up, then constant), so::

    steps 0 ......... D_1 ..... D_2 ............................ D ........ S
          warm-up, stable  |         |                           decay (full budget)
                           +- decay to B_1: branch 1, evaluated
                                     +- decay to B_2: branch 2, evaluated

the run saves a checkpoint at every branch point D_i, and after it, each branch resumes from
its checkpoint as a run of ``train.steps = B_i``: it trains the decay from D_i to B_i and is
evaluated like any run. Data are a pure function of (seed, step) and resuming restores the
model, the optimizer and the step (the learning rate is re-applied from the branch's own
schedule at the step it resumes from), so a branch is the same computation as a run trained
for B_i steps from scratch: tests check they are bit-identical at the same thread count.

Extra compute: each branch trains B_i - D_i (about decay_fraction x B_i) steps and evaluates
once; :func:`branch_overhead` gives the fraction of the run's own steps.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from lab.config import LabConfig, budget_steps, decay_start

BUDGETS_FILE = "budgets.json"


def branches(cfg: LabConfig) -> list[tuple[float, int, int]]:
    """(fraction, budget steps B, branch point D) of every budget below the full one."""
    t = cfg.train
    if not t.budgets or len(t.budgets) < 2:
        return []
    out = []
    for b in t.budgets[:-1]:
        steps = budget_steps(t.steps, float(b))
        out.append((float(b), steps, decay_start(steps, t.decay_fraction)))
    return out


def branch_overhead(cfg: LabConfig) -> float:
    """Training steps of the branches as a fraction of the run's own steps."""
    return sum(s - d for _, s, d in branches(cfg)) / cfg.train.steps


def branch_checkpoint(run_dir: Path, steps: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"branch-{steps}.ckpt"


class BranchPoints(Callback):
    """Saves a checkpoint at every branch point of the run (once: a resumed run keeps it)."""

    def __init__(self, cfg: LabConfig, run_dir: Path):
        self.points = {d: branch_checkpoint(run_dir, s) for _, s, d in branches(cfg)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        path = self.points.get(trainer.global_step)
        if path is not None and not path.is_file():
            trainer.save_checkpoint(path)


def budget_config(cfg: LabConfig, steps: int) -> LabConfig:
    """The config of the run of `steps` steps that a branch reproduces."""
    return replace(cfg, train=replace(cfg.train, steps=steps, budgets=None), resume=False)


def load_done(run_dir: Path) -> dict[str, Any]:
    p = Path(run_dir) / BUDGETS_FILE
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def save_done(run_dir: Path, done: dict[str, Any]) -> None:
    p = Path(run_dir) / BUDGETS_FILE
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(done, indent=2))
    tmp.replace(p)


def budget_key(fraction: float) -> str:
    return f"{fraction:g}"
