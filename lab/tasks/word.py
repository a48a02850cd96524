"""The word problem over a small non-abelian group: running products in S3 or S5.

Layout: ``g_1 g_2 ... g_T`` with g_i uniform over the group; the target at position t is the
product g_1 g_2 ... g_t. Composing t elements of a non-abelian group has no shortcut in
general (for S5 the problem is NC1-complete, Barrington 1989), so a transformer needs depth
that grows with log t (Merrill & Sabharwal; Liu et al. 2023, "Transformers learn shortcuts
to automata"). The difficulty knob is the length; the OOD split is longer than training
(positions beyond the trained length included). ``difficulty(x)`` is the prefix length t of
each position (1-based), so OOD values run to ``ood_length``.

Floors: for t >= 2 the prefix product g_1 ... g_{t-1} is uniform over the group and
independent of g_t, so the target is uniform whatever a depth-0 model sees (t and g_t):
floor(t) = 1/|G|; at t = 1 the target is the input g_1 itself, floor(1) = 1 (copying the
input). ``chance`` averages over the T positions. A model that tracks the sign of the product
(the abelian quotient S_n -> Z_2, a running parity) could reach 2/|G| without solving the
non-abelian part; that needs counting over the prefix, not a depth-0 shortcut, and is not
modelled here.

Held-out instances: the whole word is the instance hashed to the train or evaluation
partition (``holdout``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from lab.errors import ConfigError
from lab.tasks.base import Task, check_holdout, draw_partitioned, mean_floor

_DEGREE = {"S3": 3, "S4": 4, "S5": 5}


def compose(p: tuple[int, ...], q: tuple[int, ...]) -> tuple[int, ...]:
    """(p q)(i) = p(q(i)): apply q first, then p."""
    return tuple(p[q[i]] for i in range(len(p)))


@dataclass
class WordConfig:
    name: str = "word"
    group: str = "S3"
    length: int = 16
    ood_length: int | None = None  # default: 2 * length
    holdout: float = 0.125  # fraction of words reserved for val/OOD (0: no partition)


class WordProblemTask(Task):
    name = "word"
    causal = True
    Config = WordConfig
    difficulty_name = "prefix length"

    def __init__(self, cfg: WordConfig):
        super().__init__(cfg)
        if cfg.group not in _DEGREE:
            raise ConfigError("task.group", f"'{cfg.group}' is not one of {sorted(_DEGREE)}.")
        if cfg.length < 1:
            raise ConfigError("task.length", f"must be at least 1, got {cfg.length}.")
        self.ood_length = cfg.ood_length if cfg.ood_length is not None else 2 * cfg.length
        if self.ood_length <= cfg.length:
            raise ConfigError(
                "task.ood_length", f"must exceed task.length={cfg.length}, got {self.ood_length}."
            )
        check_holdout(cfg.holdout)
        self.elements = list(itertools.permutations(range(_DEGREE[cfg.group])))
        index = {p: i for i, p in enumerate(self.elements)}
        n = len(self.elements)
        self.table = torch.tensor(
            [[index[compose(a, b)] for b in self.elements] for a in self.elements]
        )  # (n, n): table[a, b] = a b
        self.vocab_size = n
        self.seq_len = cfg.length
        self.max_seq_len = self.ood_length
        self.chance = mean_floor(self.floor("train"))

    # ---------------------------------------------------------------- difficulty
    def difficulty(self, x: torch.Tensor) -> torch.Tensor:
        """The prefix length t (1-based) of every position."""
        return torch.arange(1, x.shape[1] + 1, device=x.device).expand_as(x).clone()

    def difficulty_values(self, split: str) -> list[int]:
        T = self.ood_length if split == "ood" else self.cfg.length
        return list(range(1, T + 1))

    def floor(self, split: str) -> dict[int, float]:
        return {t: 1.0 if t == 1 else 1.0 / self.vocab_size for t in self.difficulty_values(split)}

    # ---------------------------------------------------------------- sampling
    def sample(self, n: int, generator: torch.Generator, split: str = "train"):
        T = self.ood_length if split == "ood" else self.cfg.length
        x = draw_partitioned(
            lambda m: torch.randint(0, self.vocab_size, (m, T), generator=generator),
            n, split, self.cfg.holdout)
        y = torch.empty_like(x)
        prod = x[:, 0]
        y[:, 0] = prod
        for t in range(1, T):
            prod = self.table[prod, x[:, t]]
            y[:, t] = prod
        return x, y

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        index = {p: i for i, p in enumerate(self.elements)}
        y = torch.empty_like(x)
        for b, row in enumerate(x.tolist()):
            acc = tuple(range(len(self.elements[0])))
            for t, g in enumerate(row):
                acc = compose(acc, self.elements[g])
                y[b, t] = index[acc]
        return y

    def describe(self) -> str:
        c = self.cfg
        return f"word problem in {c.group}: length {c.length} (OOD {self.ood_length}), causal"
