"""k-hop pointer chasing over a permutation f of N nodes given in context.

Two layouts (``causal``):

- dense, bidirectional (default)::

      <hop k>  f(0) f(1) ... f(N-1)        target at position 1 + i: f^k(i)

  Every position is a query. Position i holds f(i), so one hop is one attention lookup by
  position, and a layer can compose the map with itself: after layer l a position can hold
  f^(2^l)(i) (pointer doubling). Depth ~ log2(k) is necessary and, empirically, enough.

- causal, with queries::

      f(0) ... f(N-1)  <hop k>  q_1 ... q_M    target at q_m: f^k(q_m)

  Under causal attention the permutation cannot be pre-composed, so a query needs about
  one layer (or loop) per hop.

Difficulty: ``hops`` (k) and ``nodes`` (N; with few nodes a shallow model can hold the whole
permutation in its residual stream and shortcut, which 16 nodes prevents at width 64). The
hop count is a token, drawn per sequence from [hops_min, hops] (default: exactly ``hops``).

Out-of-distribution split (``ood``):

- ``cycle`` (default): the same hop counts, but every permutation is a single N-cycle. A
  random permutation has fixed points and short cycles on which f^k is easy (f^k(i) = i
  when the cycle length divides k); a single cycle has none, so only a model that really
  follows k pointers scores well.
- ``hops``: more hops than trained, k in [hops + 1, ood_hops]; meaningful when training
  varies k (hops_min < hops), the natural test for running a looped model for more loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from lab.errors import ConfigError
from lab.tasks.base import IGNORE, Task, check_hops, hop_counts


@dataclass
class PointerConfig:
    name: str = "pointer"
    nodes: int = 16
    hops: int = 8
    hops_min: int | None = None  # default: hops (a fixed hop count)
    causal: bool = False
    queries: int = 16  # causal layout only
    ood: Literal["cycle", "hops"] = "cycle"
    ood_hops: int | None = None  # ood=hops: default hops + 2


class PointerTask(Task):
    name = "pointer"
    Config = PointerConfig

    def __init__(self, cfg: PointerConfig):
        super().__init__(cfg)
        if cfg.nodes < 2:
            raise ConfigError("task.nodes", f"needs at least 2 nodes, got {cfg.nodes}.")
        self.hops_min, self.ood_hops = check_hops(cfg.hops, cfg.hops_min, cfg.ood_hops,
                                                  ood_extra=2, check_ood=cfg.ood == "hops")
        if cfg.causal and cfg.queries < 1:
            raise ConfigError("task.queries", f"must be at least 1, got {cfg.queries}.")
        self.n = cfg.nodes
        self.causal = cfg.causal
        max_hops = self.ood_hops if cfg.ood == "hops" else cfg.hops
        self.vocab_size = cfg.nodes + max_hops  # node tokens, then one token per hop count
        self.seq_len = cfg.nodes + 1 + (cfg.queries if cfg.causal else 0)
        self.max_seq_len = self.seq_len
        self.chance = 1.0 / cfg.nodes

    def hop_range(self, split: str) -> tuple[int, int]:
        if split == "ood" and self.cfg.ood == "hops":
            return self.cfg.hops + 1, self.ood_hops
        return self.hops_min, self.cfg.hops

    def permutations(self, n: int, generator: torch.Generator, split: str) -> torch.Tensor:
        N = self.n
        order = torch.argsort(torch.rand(n, N, generator=generator), dim=1)
        if split != "ood" or self.cfg.ood != "cycle":
            return order  # (n, N): f(j) = order[j], uniform over permutations
        # A single cycle order[0] -> order[1] -> ... -> order[N-1] -> order[0].
        f = torch.empty_like(order)
        f.scatter_(1, order, order.roll(-1, dims=1))
        return f

    def sample(self, n: int, generator: torch.Generator, split: str = "train"):
        N, M = self.n, self.cfg.queries
        perm = self.permutations(n, generator, split)  # (n, N) = f
        k = hop_counts(n, *self.hop_range(split), generator)  # (n,)
        hop = (N + k - 1)[:, None]  # (n, 1)
        start = torch.arange(N).expand(n, N) if not self.causal else (
            torch.randint(0, N, (n, M), generator=generator))
        cur = start
        for step in range(int(k.max())):
            cur = torch.where((step < k)[:, None], perm.gather(1, cur), cur)
        if not self.causal:
            x = torch.cat([hop, perm], dim=1)  # (n, 1 + N)
            y = torch.cat([torch.full((n, 1), IGNORE), cur], dim=1)
            return x, y
        x = torch.cat([perm, hop, start], dim=1)  # (n, N + 1 + M)
        y = torch.full_like(x, IGNORE)
        y[:, N + 1 :] = cur
        return x, y

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        N = self.n
        y = torch.full_like(x, IGNORE)
        for b, row in enumerate(x.tolist()):
            if self.causal:
                f, k, queries, first = row[:N], row[N] - N + 1, row[N + 1 :], N + 1
            else:
                f, k, queries, first = row[1:], row[0] - N + 1, list(range(N)), 1
            for t, node in enumerate(queries):
                for _ in range(k):
                    node = f[node]
                y[b, first + t] = node
        return y

    def describe(self) -> str:
        c = self.cfg
        hops = f"{c.hops}" if self.hops_min == c.hops else f"{self.hops_min}-{c.hops}"
        ood = ("single-cycle permutations" if c.ood == "cycle"
               else f"{c.hops + 1}-{self.ood_hops} hops")
        layout = f"causal, {c.queries} queries" if self.causal else "dense, bidirectional"
        return f"pointer chasing: {c.nodes} nodes, {hops} hops, {layout}; OOD: {ood}"
