"""k-hop pointer chasing over a permutation f of N nodes given in context.

Two layouts (``causal``):

- dense, bidirectional (default)::

      <hop k>  f(0) f(1) ... f(N-1)        target at position 1 + i: f^k(i)

  Every position is a query. Position i holds f(i), so one hop is one attention lookup by
  position, and a layer can compose the map with itself: after layer l a position can hold
  f^m(i) for m up to 2^l (pointer doubling). Depth ~ log2(k) is necessary and, empirically,
  enough.

- causal, with queries::

      f(0) ... f(N-1)  <hop k>  q_1 ... q_M    target at q_m: f^k(q_m)

  Under causal attention the permutation cannot be pre-composed, so a query needs about
  one layer (or loop) per hop.

Difficulty: the hop count k, a token drawn per sequence, uniform over [hops_min, hops]
(default 1-16: every batch mixes easy and hard sequences, so accuracy per k grades a model
instead of one all-or-nothing number), and ``nodes`` (N; with few nodes a shallow model can
hold the whole permutation in its residual stream and shortcut: at 8 nodes two layers solve
8 hops; at 16 or 32 nodes the default budget learns little beyond two hops; 12 nodes is the
default). ``difficulty(x)`` is k. Calibration of the default: CALIBRATION_pointer.md.

Out-of-distribution split (``ood``):

- ``hops`` (default): more hops than trained, k in [hops + 1, ood_hops] (default 2 * hops),
  the natural test for running a looped model for more loops.
- ``cycle``: the same hop counts, but every permutation is a single N-cycle, which has no
  fixed points or short cycles to shortcut on.

Floors (``floor(split)``, ``chance``): the exact accuracy of the best depth-0 prediction, given
k and what sits at the query position. For a uniform random permutation of N nodes, the node
i lies on a cycle of length L with probability 1/N for each L in 1..N, and f^k(i) = i exactly
when L divides k. So predicting the query itself is right with probability
d(k)/N, d(k) = #{L in 1..N : L | k}; every other node is equally likely, with probability
(1 - d(k)/N)/(N - 1) <= d(k)/N, so this shortcut is also the best guess (it is never below
1/N). Causal layout: floor(k) = d(k)/N. Dense layout: position i also holds f(i), which is
right when L divides k - 1, so floor(k) = max(d(k), d(k - 1))/N with d(0) = N (one hop is
free there: floor(1) = 1). Single-cycle permutations (``ood=cycle``): f^k(i) = i iff N | k,
else it is uniform over the other N - 1 nodes (N - 2 in the dense layout, where f(i) is
right iff N | k - 1). A one-layer model can read f(f(i)) and f^-1(i) as well, which raises
its floor a little further (for 16 nodes and 8 hops: 5/16 against 4/16); those floors are not
modelled here.

Held-out instances: the permutation is the instance hashed to the train or evaluation
partition (``holdout``), so no validation or OOD permutation occurs in any training stream,
with any hop count or queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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


@dataclass
class PointerConfig:
    name: str = "pointer"
    nodes: int = 12
    hops: int = 16
    hops_min: int | None = 1  # None: exactly `hops` (a fixed hop count)
    causal: bool = False
    queries: int = 16  # causal layout only
    ood: Literal["cycle", "hops"] = "hops"
    ood_hops: int | None = None  # ood=hops: default 2 * hops
    holdout: float = 0.125  # fraction of permutations reserved for val/OOD (0: no partition)


def divisor_count(k: int, n: int) -> int:
    """#{L in 1..n : L divides k}; every L divides 0."""
    # Divisors of k are at most k: counting to min(n, k) keeps a huge N cheap.
    return n if k == 0 else sum(1 for L in range(1, min(n, k) + 1) if k % L == 0)


class PointerTask(Task):
    name = "pointer"
    Config = PointerConfig
    difficulty_name = "hops"

    def __init__(self, cfg: PointerConfig):
        super().__init__(cfg)
        if cfg.nodes < 2:
            raise ConfigError("task.nodes", f"needs at least 2 nodes, got {cfg.nodes}.")
        self.hops_min, self.ood_hops = check_hops(cfg.hops, cfg.hops_min, cfg.ood_hops,
                                                  ood_extra=cfg.hops, check_ood=cfg.ood == "hops")
        if cfg.causal and cfg.queries < 1:
            raise ConfigError("task.queries", f"must be at least 1, got {cfg.queries}.")
        check_holdout(cfg.holdout)
        self.n = cfg.nodes
        self.causal = cfg.causal
        max_hops = self.ood_hops if cfg.ood == "hops" else cfg.hops
        self.vocab_size = cfg.nodes + max_hops  # node tokens, then one token per hop count
        self.seq_len = cfg.nodes + 1 + (cfg.queries if cfg.causal else 0)
        self.max_seq_len = self.seq_len
        # Every sequence has the same number of targets, so the token-weighted floor is the
        # plain average over the (uniform) hop distribution.
        self.chance = mean_floor(self.floor("train"))

    def hop_range(self, split: str) -> tuple[int, int]:
        if split == "ood" and self.cfg.ood == "hops":
            return self.cfg.hops + 1, self.ood_hops
        return self.hops_min, self.cfg.hops

    # ---------------------------------------------------------------- difficulty
    def difficulty(self, x: torch.Tensor) -> torch.Tensor:
        """The hop count k of each sequence, at every position."""
        hop = x[:, self.n] if self.causal else x[:, 0]
        return (hop - self.n + 1)[:, None].expand_as(x).clone()

    def difficulty_values(self, split: str) -> list[int]:
        lo, hi = self.hop_range(split)
        return list(range(lo, hi + 1))

    def floor(self, split: str) -> dict[int, float]:
        return {k: self.floor_at(k, single_cycle=split == "ood" and self.cfg.ood == "cycle")
                for k in self.difficulty_values(split)}

    def floor_at(self, k: int, single_cycle: bool = False) -> float:
        """Accuracy of the best depth-0 prediction for k hops (see the module docstring)."""
        N = self.n
        if single_cycle:
            if k % N == 0 or (not self.causal and (k - 1) % N == 0):
                return 1.0
            others = N - 1 if self.causal else N - 2
            return 1.0 / others
        hits = divisor_count(k, N)
        if not self.causal:
            hits = max(hits, divisor_count(k - 1, N))
        return max(hits / N, 1.0 / N)

    # ---------------------------------------------------------------- sampling
    def permutations(self, n: int, generator: torch.Generator, split: str) -> torch.Tensor:
        """``n`` permutations f (rows: f(j) = row[j]) from ``split``'s partition."""
        N = self.n
        single = split == "ood" and self.cfg.ood == "cycle"

        def draw(m: int) -> torch.Tensor:
            order = torch.argsort(torch.rand(m, N, generator=generator), dim=1)
            if not single:
                return order  # uniform over permutations
            # A single cycle order[0] -> order[1] -> ... -> order[N-1] -> order[0].
            f = torch.empty_like(order)
            f.scatter_(1, order, order.roll(-1, dims=1))
            return f

        return draw_partitioned(draw, n, split, self.cfg.holdout)

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
