"""Parallel looping: the Parallel Loop Transformer (PLT) mechanism, ``model.loop_mode=parallel``.

Sources. Wu et al. 2025, "Parallel Loop Transformer for Efficient Test-Time Computation
Scaling" (arXiv 2510.24824), used by LoopCoder-v2 (arXiv 2606.18023). The paper's method
section was *not* available to us: what we could read are its abstract and third-party
summaries (cross-loop parallelism: "the l-th loop for the current token is processed
alongside the (l+1)-th loop of the previous token"; the first loop's KV cache shared with
all later loops; gated sliding-window attention mixing that shared global attention with
local attention), and vLLM's public inference code for IQuest LoopCoder, a looped model
with ``plt_*`` settings (``vllm/model_executor/models/iquest_loopcoder.py``:
``LoopGateProjection``, ``LoopCoderAttention``, and the ``plt_emb_scale`` /
``plt_hidden_scale`` loop input), from which the gate, the mixing rule and the embedding
term of the loop input below are taken. Where the equations rest on our own choice, they
say so.

Notation. A looped plan is prelude, core x r, coda. Let ``e_t`` be the prelude output at
position t (resized to the core width), ``u^l_t`` the input of loop l (l = 1..r) and
``h^l_t`` its output (resized back to the core's input width where the core changes width).
Inside every core block, loop l computes ``q^l, k^l, v^l`` from its own input with the
block's (shared) projections, per head.

Cross-loop shift (``model.plt_shift``)::

    u^1_t     = e_t
    u^{l+1}_t = h^l_{t-1} + e_t        (l >= 1),   with h^l_{-1} := 0

So loop l+1 of token t needs loop l of token t-1 only: at decode time all r loops of the new
token run through the core as ONE batch of r rows (inputs e_t, h^1_{t-1} + e_t, ...,
h^{r-1}_{t-1} + e_t), and the model keeps the last output of loops 1..r-1 between steps. The
``+ e_t`` is what the vLLM code does (``plt_emb_scale * embedding + plt_hidden_scale *
loop_hidden_states``, scales 1 here) and it is necessary: without it the output at t would
not depend on token t at all (h^l_{t-1} has not seen it). Position 0 has no predecessor; it
gets a zero state, so ``u^{l+1}_0 = e_0`` (our choice; equivalently, a virtual zero state
before the sequence). With the shift off, ``u^{l+1}_t = h^l_t`` (+ e_t when
model.injection=add), as in serial mode. With the shift on, model.injection is implied.

Shared KV (``model.plt_shared_kv``). Loop 1 is ordinary causal attention over its own keys.
A later loop l >= 2 attends *globally* to the first loop's keys and values of the same
block, causally::

    G^l_t = softmax_{s<=t}( q^l_t . k^1_s / sqrt(d) ) v^1_s

Its own ``k^l, v^l`` are then used only by the window below, so the decode cache of a later
loop is at most a window. With sharing off, ``G^l`` attends to the loop's own keys and values
(``k^l_s, v^l_s``, s <= t) and each loop keeps a full cache, as in serial mode.

Gated sliding-window attention (``model.plt_gswa``, window W = ``model.plt_window``). A later
loop also attends to its own keys and values over the last W positions (including its own)::

    S^l_t = softmax_{t-W < s <= t}( q^l_t . k^l_s / sqrt(d) ) v^l_s
    g^l_t = sigmoid( w_h . q^l_{t,h} + b_h )            one scalar per head h
    A^l_t = g^l_t * G^l_t + (1 - g^l_t) * S^l_t          then the output projection

The gate (a per-head weight vector over the head dimension, computed from the query, and a
per-head bias) and the mixing ``g * global + (1 - g) * local`` are those of vLLM's
``LoopGateProjection`` (query-based mode) and ``LoopCoderAttention.forward``. Each core block
owns one gate (``width + n_heads`` parameters), shared by the later loops, as the block's
other weights are. Initialisation (ours): weights N(0, 0.02), bias 0, so g ~ 1/2 at first.
With sharing off the global and the window attention read the same (own) keys, so G-SWA
is then a gated mix of full and windowed self-attention (kept for a complete ablation grid).
With G-SWA off, ``A^l = G^l``.

Loop 1 is untouched by all three parts, so with one loop parallel and serial modes are the
same function (the gate exists but does not act). The dropout of each attention is the
block's attention dropout.

Decode cache (parallel mode), per core block: the first loop's keys and values for every
position; for each later loop, its own keys and values over the last W positions (G-SWA on,
sharing on), or over every position (sharing off), or nothing (sharing on, G-SWA off).
Prelude and coda blocks keep full caches as usual. KV bytes per token therefore do not grow
with r beyond r-1 windows (:func:`lab.eval.cost.kv_cache_bytes`). The carried loop outputs (r-1
vectors per sequence) are decoding state, not KV cache, and are not counted as KV bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


class Gate(nn.Module):
    """Per-head sigmoid gate from the query: g = sigmoid(w_h . q_h + b_h)."""

    def __init__(self, n_heads: int, head_dim: int):
        super().__init__()
        # Drawn by Stack after every other weight (N(0, 0.02)), so that a parallel stack and a
        # serial one built from the same seed share all their other weights.
        self.weight = nn.Parameter(torch.zeros(n_heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(n_heads))

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        # q: (B, nh, T, hs) -> (B, nh, T, 1)
        logits = torch.einsum("bhtd,hd->bht", q, self.weight) + self.bias[None, :, None]
        return torch.sigmoid(logits)[..., None]


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor,
                   window: int | None = None) -> torch.Tensor:
    """Boolean (Tq, Tk) mask, True where query position q may see key position k: causal,
    and within the last `window` positions (its own included) when a window is given."""
    d = q_pos[:, None] - k_pos[None, :]
    ok = d >= 0
    if window is not None:
        ok = ok & (d < window)
    return ok


def mix(gate: Gate, q: torch.Tensor, y_global: torch.Tensor, y_local: torch.Tensor):
    g = gate(q)
    return g * y_global + (1 - g) * y_local


def later_loop_attention(q, k, v, k1, v1, gate: Gate | None, shared_kv: bool, gswa: bool,
                         window: int, dropout_p: float = 0.0) -> torch.Tensor:
    """Training-time attention of a loop after the first, over a whole sequence from 0.

    q, k, v: this loop's (B, nh, T, hs); k1, v1: the first loop's keys and values of the block.
    """
    kg, vg = (k1, v1) if shared_kv else (k, v)
    y = F.scaled_dot_product_attention(q, kg, vg, is_causal=True, dropout_p=dropout_p)
    if not gswa:
        return y
    pos = torch.arange(q.shape[2], device=q.device)
    yw = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(pos, pos, window),
                                        dropout_p=dropout_p)
    assert gate is not None
    return mix(gate, q, y, yw)


# --------------------------------------------------------------------------------------------
# Decode caches


@dataclass
class RollingKV:
    """Keys and values (B, nh, n, hs) of the most recent positions; `limit` None keeps all.

    The stored keys are always those of the positions just before the next one to decode.
    """

    limit: int | None = None
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new positions; return every stored key and value *before* trimming (the
        new queries may need up to limit - 1 older positions each), then trim the store."""
        ks = k if self.k is None else torch.cat([self.k, k], dim=2)
        vs = v if self.v is None else torch.cat([self.v, v], dim=2)
        if self.limit is not None and ks.shape[2] > self.limit:
            self.k, self.v = ks[:, :, -self.limit :].clone(), vs[:, :, -self.limit :].clone()
        else:
            self.k, self.v = ks, vs
        return ks, vs

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v) if t is not None)


@dataclass
class LoopKV:
    """Decode cache of one core block in parallel mode: the first loop's full keys and values,
    and per later loop a window of its own (G-SWA with sharing), all of its own (no sharing),
    or nothing (sharing without G-SWA)."""

    first: RollingKV = field(default_factory=RollingKV)
    later: list[RollingKV | None] = field(default_factory=list)

    @classmethod
    def make(cls, loops: int, shared_kv: bool, gswa: bool, window: int) -> LoopKV:
        if not shared_kv:
            later: list[RollingKV | None] = [RollingKV() for _ in range(loops - 1)]
        elif gswa:
            later = [RollingKV(limit=window) for _ in range(loops - 1)]
        else:
            later = [None] * (loops - 1)
        return cls(RollingKV(), later)

    def nbytes(self) -> int:
        return self.first.nbytes() + sum(c.nbytes() for c in self.later if c is not None)


class ParallelCache(list):
    """The decode cache of a parallel-mode stack: one entry per prelude block, core block
    (a :class:`LoopKV`) and coda block, in that order; iterating it gives the KV caches.

    ``carry[l]`` is the last output of loop l + 1 (l = 0..r-2), resized to the core's input
    width, which loop l + 2 of the next token takes as input (cross-loop shift).
    """

    def __init__(self, entries, loops: int):
        super().__init__(entries)
        self.loops = loops
        self.carry: list[torch.Tensor] | None = None

    def carry_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.carry or [])


def cached_attention(q: torch.Tensor, q_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     end: int, window: int | None = None) -> torch.Tensor:
    """Attention of queries at q_pos to cached keys of the positions end - n .. end - 1."""
    n = k.shape[2]
    if q.shape[2] == 1 and (window is None or n <= window):
        return F.scaled_dot_product_attention(q, k, v)  # one new token sees every stored key
    k_pos = torch.arange(end - n, end, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(q_pos, k_pos, window))
