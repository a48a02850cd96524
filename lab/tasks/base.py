"""The task protocol every task implements (built-in or user-supplied).

A task is a class with:

- ``name``: a short string; ``Config``: a dataclass of its knobs (checked strictly);
- ``__init__(self, cfg: Config)``;
- ``vocab_size``, ``seq_len`` (training length), ``max_seq_len`` (over all splits),
  ``causal`` (whether a position may only see earlier ones), ``chance`` (per-token accuracy
  of the best input-independent guess);
- ``sample(n, generator, split) -> (x, y)``: ``n`` sequences of ``split`` in
  ``{"train", "val", "ood", "tune"}`` ("tune" is drawn like "val"), generated with vectorised
  torch ops from ``generator``;
  ``x`` is ``(n, T) int64``, ``y`` is ``(n, T) int64`` with ``-100`` where there is no target;
- ``reference(x) -> y``: the same labels computed by a plain, obviously-correct loop over the
  examples (used by the tests only);
- ``describe() -> str`` (optional): one line for reports;
- ``provenance() -> dict`` (optional): where the task's data came from (the text task: roots,
  patterns, files and bytes per split, a content hash, the Python version for the stdlib);
- ``tokens_are_bytes`` (optional class attribute, default false): tokens are raw bytes, so a
  loss in nats per token is also one per byte and can be reported in bits per byte.

``reference`` and ``describe`` are optional for user tasks; :class:`Task` below gives the
shared pieces, and subclassing it is optional.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lab.errors import ConfigError

IGNORE = -100
# "tune": instances of the validation distribution, drawn apart from "val", that per-setting
# hyperparameter tuning is scored on, so the reported validation split never chose a value.
SPLITS = ("train", "val", "ood", "tune")


class Task:
    name: ClassVar[str] = "task"
    causal: ClassVar[bool] = True
    tokens_are_bytes: ClassVar[bool] = False
    Config: ClassVar[type]

    vocab_size: int
    seq_len: int
    max_seq_len: int
    chance: float

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def sample(self, n: int, generator: torch.Generator, split: str = "train"):
        raise NotImplementedError

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def eval_set(self, split: str, n: int, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
        return eval_set(self, split, n, seed)


def eval_set(task, split: str, n: int, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed evaluation set: the same for every model, seed and trial of a study."""
    g = torch.Generator().manual_seed(seed + 7919 * SPLITS.index(split))
    return task.sample(n, g, split)


def describe(task) -> str:
    return task.describe() if hasattr(task, "describe") else type(task).__name__


def check_hops(hops: int, hops_min: int | None, ood_hops: int | None, ood_extra: int,
               check_ood: bool = True) -> tuple[int, int]:
    """Validate the shared hop knobs; returns (hops_min, ood_hops) with defaults filled in.

    hops_min defaults to hops (a fixed hop count), ood_hops to hops + ood_extra.
    """
    if hops < 1:
        raise ConfigError("task.hops", f"must be at least 1, got {hops}.")
    lo = hops if hops_min is None else hops_min
    if not 1 <= lo <= hops:
        raise ConfigError("task.hops_min", f"must be in [1, task.hops={hops}], got {lo}.")
    hi = ood_hops if ood_hops is not None else hops + ood_extra
    if check_ood and hi <= hops:
        raise ConfigError("task.ood_hops", f"must exceed task.hops={hops}, got {hi}.")
    return lo, hi


def hop_counts(
    n: int, lo: int, hi: int, generator: torch.Generator
) -> torch.Tensor:
    """Per-sequence hop counts, uniform over [lo, hi]."""
    return torch.randint(lo, hi + 1, (n,), generator=generator)
