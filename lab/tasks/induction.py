"""p-hop induction over a random string.

Layout: ``<hop p>  x_1 x_2 ... x_T`` with x_i uniform over an alphabet of A symbols. At every
position t the target is found by p jumps, each "from the current position, go to the
position just after the previous occurrence of the current token"; the target is the token
reached. One hop is an induction head; p hops need depth that grows with p (Sanford et al.
2024, "Transformers, parallel computation, and logarithmic depth"). Positions whose chain
runs out (no earlier occurrence) carry no target. As for pointer chasing, p is drawn per
sequence from [hops_min, hops], and from [hops + 1, ood_hops] in the OOD split.
``difficulty(x)`` is p.

Floors: the best depth-0 prediction sees p, the position t and the current token x_t. By the
symmetry of the alphabet, the target is x_t with some probability c(t, p) and otherwise
uniform over the other A - 1 symbols, so the best prediction is "copy x_t" (right when the
chain lands on a copy of x_t, e.g. one hop when x_{t-1} = x_t) or, when c < 1/A, any other
symbol: floor(p) = sum_t n(t, p) max(c(t, p), (1 - c(t, p))/(A - 1)) / sum_t n(t, p), over the
labelled positions n(t, p). There is no closed form, so it is counted once per task over
every string when there are at most ``FLOOR_SAMPLES`` of them (exact), else over a fixed
sample of ``FLOOR_SAMPLES`` strings per p (standard error about 0.1 point at the defaults);
``chance`` averages it over p weighted by labelled tokens. Copying the
one-hop answer is a further shortcut for p >= 2, but it needs an induction head (two layers),
so it is not a depth-0/1 floor.

Held-out instances: the string (without the hop token) is the instance hashed to the train
or evaluation partition (``holdout``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from lab.errors import ConfigError
from lab.tasks.base import (
    IGNORE,
    Task,
    check_holdout,
    check_hops,
    draw_partitioned,
    hop_counts,
    mean_floor,
)

FLOOR_SAMPLES = 8192


@dataclass
class InductionConfig:
    name: str = "induction"
    alphabet: int = 8
    length: int = 32
    hops: int = 2
    hops_min: int = 1
    ood_hops: int | None = None  # default: hops + 1
    holdout: float = 0.125  # fraction of strings reserved for val/OOD (0: no partition)


class InductionTask(Task):
    name = "induction"
    causal = True
    Config = InductionConfig
    difficulty_name = "hops"

    def __init__(self, cfg: InductionConfig):
        super().__init__(cfg)
        if cfg.alphabet < 2:
            raise ConfigError("task.alphabet", f"needs at least 2 symbols, got {cfg.alphabet}.")
        if cfg.length < 2:
            raise ConfigError("task.length", f"must be at least 2, got {cfg.length}.")
        _, self.ood_hops = check_hops(cfg.hops, cfg.hops_min, cfg.ood_hops, ood_extra=1)
        check_holdout(cfg.holdout)
        self.vocab_size = cfg.alphabet + self.ood_hops
        self.seq_len = cfg.length + 1
        self.max_seq_len = self.seq_len

    def hop_range(self, split: str) -> tuple[int, int]:
        if split == "ood":
            return self.cfg.hops + 1, self.ood_hops
        return self.cfg.hops_min, self.cfg.hops

    # ---------------------------------------------------------------- difficulty
    def difficulty(self, x: torch.Tensor) -> torch.Tensor:
        """The hop count p of each sequence, at every position."""
        return (x[:, 0] - self.cfg.alphabet + 1)[:, None].expand_as(x).clone()

    def difficulty_values(self, split: str) -> list[int]:
        lo, hi = self.hop_range(split)
        return list(range(lo, hi + 1))

    def floor(self, split: str) -> dict[int, float]:
        return {p: self._floors[p][0] for p in self.difficulty_values(split)}

    @property
    def chance(self) -> float:
        values = self.difficulty_values("train")
        return mean_floor(self.floor("train"), {p: self._floors[p][1] for p in values})

    @cached_property
    def _floors(self) -> dict[int, tuple[float, float]]:
        """p -> (floor, labelled tokens per sequence), measured on a fixed sample."""
        A, T = self.cfg.alphabet, self.cfg.length
        out = {}
        for p in range(self.cfg.hops_min, self.ood_hops + 1):
            if A**T <= FLOOR_SAMPLES:  # every string once: the exact floor
                s = torch.arange(A**T)[:, None] // A ** torch.arange(T) % A
            else:
                g = torch.Generator().manual_seed(0xF1008 + p)
                s = torch.randint(0, A, (FLOOR_SAMPLES, T), generator=g)
            x = torch.cat([torch.full((len(s), 1), A + p - 1), s], dim=1)
            y = self.label(x)
            mask = y != IGNORE
            n_t = mask.sum(0).double()
            c_t = ((y == x) & mask).sum(0).double()
            best = torch.maximum(c_t, (n_t - c_t) / (A - 1)).sum()
            n = float(n_t.sum())
            out[p] = (float(best) / n if n else 1.0 / A, n / len(s))
        return out

    # ---------------------------------------------------------------- sampling
    def sample(self, n: int, generator: torch.Generator, split: str = "train"):
        A, T = self.cfg.alphabet, self.cfg.length
        k = hop_counts(n, *self.hop_range(split), generator)
        s = draw_partitioned(lambda m: torch.randint(0, A, (m, T), generator=generator),
                             n, split, self.cfg.holdout)
        x = torch.cat([(A + k - 1)[:, None], s], dim=1)  # (n, T + 1)
        return x, self.label(x)

    def label(self, x: torch.Tensor) -> torch.Tensor:
        """Vectorised labels of ``x`` (the hop count read from its first token)."""
        n, L = x.shape
        k = x[:, 0] - self.cfg.alphabet + 1
        idx = torch.arange(L)
        earlier = idx[None, :] < idx[:, None]  # (t, s): s < t
        same = (x[:, :, None] == x[:, None, :]) & earlier  # (n, t, s)
        prev = torch.where(same, idx, -1).amax(-1)  # (n, t) last earlier occurrence
        nxt = torch.where(prev >= 0, prev + 1, -1)
        pos = idx.expand(n, L).clone()
        ok = torch.ones(n, L, dtype=torch.bool)
        for step in range(int(k.max())):
            active = (step < k)[:, None]
            jumped = nxt.gather(1, pos.clamp(min=0))
            pos = torch.where(active, jumped, pos)
            ok = ok & (~active | (jumped >= 0))
        y = torch.where(ok, x.gather(1, pos.clamp(min=0)), IGNORE)
        y[:, 0] = IGNORE
        return y

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        A = self.cfg.alphabet
        y = torch.full_like(x, IGNORE)
        for b, row in enumerate(x.tolist()):
            p = row[0] - A + 1
            for t in range(1, len(row)):
                pos = t
                for _ in range(p):
                    earlier = [s for s in range(1, pos) if row[s] == row[pos]]
                    if not earlier:
                        pos = None
                        break
                    pos = earlier[-1] + 1
                if pos is not None:
                    y[b, t] = row[pos]
        return y

    def describe(self) -> str:
        c = self.cfg
        return (
            f"p-hop induction: alphabet {c.alphabet}, length {c.length}, {c.hops_min}-{c.hops} "
            f"hops (OOD {c.hops + 1}-{self.ood_hops}), causal"
        )
