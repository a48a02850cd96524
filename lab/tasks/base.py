"""The task protocol every task implements (built-in or user-supplied).

A task is a class with:

- ``name``: a short string; ``Config``: a dataclass of its knobs (checked strictly);
- ``__init__(self, cfg: Config)``;
- ``vocab_size``, ``seq_len`` (training length), ``max_seq_len`` (over all splits),
  ``causal`` (whether a position may only see earlier ones);
- ``chance``: the per-token accuracy of the best *shortcut* on the training distribution:
  the best prediction a depth-0 model (one that sees only the token at the query position,
  its position and the difficulty value) can make, which is at least the best
  input-independent guess (1/vocabulary-style chance) and higher wherever the task has a
  structured shortcut (pointer chasing: predict the query itself, right whenever the query
  lies on a cycle whose length divides k). For tasks with difficulty labels it is the
  token-weighted average of ``floor("train")``;
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
  loss in nats per token is also one per byte and can be reported in bits per byte;
- ``check_room(n, splits, what)`` (optional): raise a ``ConfigError`` naming the key to change
  when a split of a finite corpus cannot supply ``n`` distinct sequences (the text task);
  generated tasks never run out.

Difficulty (optional; every built-in task implements it), a graded axis along which
accuracy is reported:

- ``difficulty_name: str``: what the label counts, e.g. ``"hops"``, ``"prefix length"``;
- ``difficulty(x) -> d``: the per-position difficulty label, ``(n, T) int64`` like ``y``,
  computed from the input alone (only positions with a target matter; others carry any
  value). Pointer chasing: the hop count k; p-hop induction: p; word problem: the prefix
  length t;
- ``difficulty_values(split) -> list[int]``: the values ``split`` contains, ascending;
- ``floor(split) -> dict[int, float]``: for every difficulty value of ``split``, the
  accuracy of the best shortcut (as for ``chance``) on positions of that difficulty.

A task has difficulty labels when ``has_difficulty(task)``. Per-difficulty accuracy is
aggregated by :func:`accuracy_by_difficulty` (and :func:`merge_counts` over batches); the sum of
its counts is the overall token accuracy; :func:`largest_solved` reads off the largest value
solved.

Held-out instances. Built-in tasks hash every instance (the permutation, the string, the
word) to one of 2**16 buckets with :func:`row_hash`; a fraction ``holdout`` of the buckets is
reserved for evaluation: ``sample(.., "train")`` only returns instances from the other
buckets and ``sample(.., "val" | "ood")`` only from the held-out ones (:func:`draw_partitioned`,
rejection sampling that stays a deterministic function of the generator). So no validation
or OOD instance can occur in any training stream, whatever its seed or length.

``reference``, ``describe`` and the difficulty methods are optional for user tasks;
:class:`Task` below gives the shared pieces, and subclassing it is optional.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
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


def check_eval_room(task, n: int, splits: tuple[str, ...]) -> None:
    """Refuse a task whose `splits` cannot supply `n` distinct evaluation sequences (the
    evaluation set of train.val_size sequences would repeat them)."""
    check = getattr(task, "check_room", None)
    if check is not None:
        check(n, tuple(splits), " (train.val_size: the sequences of each evaluation set)")


def windows(data: np.ndarray | torch.Tensor, starts: np.ndarray, length: int) -> torch.Tensor:
    """Rows ``data[s : s + length]`` for every start ``s``, as int64: gathered on the host from
    an array (a memory-mapped corpus), or on the tensor's device (only the starts are copied
    there, without blocking), so a task that keeps its data on a GPU samples off the host."""
    if isinstance(data, torch.Tensor):
        at = torch.from_numpy(starts).to(data.device, non_blocking=True)[:, None]
        return data[at + torch.arange(length, device=data.device)].long()
    return torch.from_numpy(data[starts[:, None] + np.arange(length)].astype(np.int64))


def describe(task) -> str:
    return task.describe() if hasattr(task, "describe") else type(task).__name__


def task_record(task) -> dict:
    """What the task says about itself: its description and, where it has one, its data's
    provenance (a corpus's roots, files and bytes per split, content hash, Python version)."""
    rec: dict = {"description": describe(task), "chance": task.chance}
    if has_difficulty(task):
        rec["difficulty_name"] = getattr(task, "difficulty_name", "difficulty")
        rec["floors"] = {str(k): v for k, v in task.floor("val").items()}
    if hasattr(task, "provenance"):
        rec["provenance"] = task.provenance()
    return rec


def has_difficulty(task) -> bool:
    """Whether ``task`` implements the optional difficulty protocol."""
    return all(callable(getattr(task, m, None)) for m in ("difficulty", "difficulty_values", "floor"))


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


# --------------------------------------------------------------------------------------------
# Accuracy by difficulty


def accuracy_by_difficulty(
    pred: torch.Tensor, y: torch.Tensor, d: torch.Tensor
) -> dict[int, tuple[int, int]]:
    """``{difficulty: (correct, count)}`` over the labelled positions (``y != -100``).

    ``pred`` holds predicted tokens ``(n, T)`` (or logits ``(n, T, V)``, argmax taken), ``d``
    the difficulty labels ``(n, T)`` from ``task.difficulty(x)``. Summing correct and count
    over all keys gives the overall token accuracy's numerator and denominator.
    """
    if pred.dim() == y.dim() + 1:
        pred = pred.argmax(-1)
    mask = y != IGNORE
    dv = d[mask].long()
    hit = pred[mask] == y[mask]
    if dv.numel() == 0:
        return {}
    # Counted by sorting (torch.unique), which is deterministic on every device: a weighted
    # bincount has no deterministic CUDA kernel and raises under train.deterministic.
    values, count = torch.unique(dv, return_counts=True)
    hit_values, hit_count = torch.unique(dv[hit], return_counts=True)
    correct = torch.zeros_like(count)
    correct[torch.searchsorted(values, hit_values)] = hit_count
    # One copy to the host for the whole table.
    rows = torch.stack([values, correct, count]).tolist()
    return {v: (c, k) for v, c, k in zip(*rows, strict=True)}


def merge_counts(*parts: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """Add up ``accuracy_by_difficulty`` results (e.g. over evaluation batches)."""
    out: dict[int, list[int]] = {}
    for part in parts:
        for v, (c, k) in part.items():
            acc = out.setdefault(v, [0, 0])
            acc[0] += c
            acc[1] += k
    return {v: (c, k) for v, (c, k) in sorted(out.items())}


def largest_solved(counts: dict[int, tuple[int, int]], threshold: float = 0.95) -> int | None:
    """The largest difficulty value whose accuracy is at least ``threshold`` (None: none)."""
    solved = [v for v, (c, k) in counts.items() if k and c / k >= threshold]
    return max(solved) if solved else None


def mean_floor(floors: dict[int, float], weights: dict[int, float] | None = None) -> float:
    """The floor of a split: per-difficulty floors averaged with the split's token weights
    (default: uniform over the values)."""
    w = weights or {v: 1.0 for v in floors}
    total = sum(w[v] for v in floors)
    return sum(floors[v] * w[v] for v in floors) / total


# --------------------------------------------------------------------------------------------
# Held-out partition of instances

HASH_BUCKETS = 1 << 16
_P = 2_147_483_647  # 2**31 - 1
_MAX_ROUNDS = 64


def row_hash(rows: torch.Tensor) -> torch.Tensor:
    """A deterministic 32-bit hash of every row of a 2-D tensor of non-negative integers.

    A polynomial hash modulo 2**31 - 1 over the row (its length included), then a
    lowbias32-style avalanche; every product stays below 2**63, so int64 never overflows.
    Equal rows hash equally, on every machine and torch version.
    """
    rows = rows.long()
    n, length = rows.shape
    h = torch.full((n,), (0x3C6EF372 + length) % _P, dtype=torch.long)
    for j in range(length):
        h = (h * 1_000_003 + rows[:, j] + 1) % _P
    h = ((h ^ (h >> 16)) * 0x7FEB352D) & 0xFFFFFFFF
    h = ((h ^ (h >> 15)) * 0x5BD1E995) & 0xFFFFFFFF
    return h ^ (h >> 16)


def held_out(keys: torch.Tensor, holdout: float) -> torch.Tensor:
    """Whether each instance (a row of ``keys``) belongs to the evaluation partition."""
    cut = round(holdout * HASH_BUCKETS)
    return (row_hash(keys) >> 16) % HASH_BUCKETS < cut


def draw_partitioned(
    draw: Callable[[int], torch.Tensor],
    n: int,
    split: str,
    holdout: float,
    key: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``n`` instances from ``draw(m)`` (``m`` rows, drawn from a generator it closes over)
    restricted to ``split``'s partition: the held-out buckets for ``val``/``ood``, the others
    for ``train``. ``key(rows)`` gives what is hashed (default: the rows).

    Rejection sampling: each round draws the expected number of rows needed, times 1.25,
    plus 16, keeps those in the partition, and repeats until there are ``n``; the result is a
    deterministic function of the generator's state. ``holdout=0`` disables the partition.
    """
    if holdout <= 0:
        return draw(n)
    want = split != "train"
    frac = holdout if want else 1.0 - holdout
    chunks, have = [], 0
    for _ in range(_MAX_ROUNDS):
        m = math.ceil((n - have) / frac * 1.25) + 16
        rows = draw(m)
        keep = held_out(rows if key is None else key(rows), holdout) == want
        rows = rows[keep]
        chunks.append(rows)
        have += len(rows)
        if have >= n:
            return torch.cat(chunks)[:n]
    raise ConfigError(
        "task.holdout",
        f"found only {have} of {n} '{split}' instances in {_MAX_ROUNDS} rounds of rejection "
        f"sampling: the instance space is too small for a held-out fraction of {holdout}. "
        "Use a larger task or task.holdout=0 (evaluation instances may then repeat training "
        "ones).",
    )


def check_holdout(holdout: float) -> None:
    if not 0 <= holdout < 1:
        raise ConfigError("task.holdout", f"must be in [0, 1), got {holdout}.")
