"""p-hop induction over a random string.

Layout: ``<hop p>  x_1 x_2 ... x_T`` with x_i uniform over an alphabet of A symbols. At every
position t the target is found by p jumps, each "from the current position, go to the
position just after the previous occurrence of the current token"; the target is the token
reached. One hop is an induction head; p hops need depth that grows with p (Sanford et al.
2024, "Transformers, parallel computation, and logarithmic depth"). Positions whose chain
runs out (no earlier occurrence) carry no target. As for pointer chasing, p is drawn per
sequence from [hops_min, hops], and from [hops + 1, ood_hops] in the OOD split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lab.errors import ConfigError
from lab.tasks.base import IGNORE, Task, check_hops, hop_counts


@dataclass
class InductionConfig:
    name: str = "induction"
    alphabet: int = 8
    length: int = 32
    hops: int = 2
    hops_min: int = 1
    ood_hops: int | None = None  # default: hops + 1


class InductionTask(Task):
    name = "induction"
    causal = True
    Config = InductionConfig

    def __init__(self, cfg: InductionConfig):
        super().__init__(cfg)
        if cfg.alphabet < 2:
            raise ConfigError("task.alphabet", f"needs at least 2 symbols, got {cfg.alphabet}.")
        if cfg.length < 2:
            raise ConfigError("task.length", f"must be at least 2, got {cfg.length}.")
        _, self.ood_hops = check_hops(cfg.hops, cfg.hops_min, cfg.ood_hops, ood_extra=1)
        self.vocab_size = cfg.alphabet + self.ood_hops
        self.seq_len = cfg.length + 1
        self.max_seq_len = self.seq_len
        self.chance = 1.0 / cfg.alphabet

    def hop_range(self, split: str) -> tuple[int, int]:
        if split == "ood":
            return self.cfg.hops + 1, self.ood_hops
        return self.cfg.hops_min, self.cfg.hops

    def sample(self, n: int, generator: torch.Generator, split: str = "train"):
        A, T = self.cfg.alphabet, self.cfg.length
        k = hop_counts(n, *self.hop_range(split), generator)
        s = torch.randint(0, A, (n, T), generator=generator)
        x = torch.cat([(A + k - 1)[:, None], s], dim=1)  # (n, T + 1)
        L = T + 1
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
        return x, y

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
