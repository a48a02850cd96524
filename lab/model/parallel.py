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

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lab.model.plan import EMBED

if TYPE_CHECKING:
    from lab.model.stack import Attend, Stack, StackOutput


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


# --------------------------------------------------------------------------------------------
# The parallel walk: one of the loop modes of lab.model.stack.Stack (trace, new_cache, decode)


def shift_right(u: torch.Tensor) -> torch.Tensor:
    """Position t takes position t-1's value; position 0 takes zeros: (B, T, C)."""
    return F.pad(u, (0, 0, 1, 0))[:, :-1]


def carry_shift(cache: ParallelCache, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The shift over a decoded chunk: the carried last output of the previous chunk comes
    first, and this chunk's last output is carried to the next chunk."""

    def shift(u: torch.Tensor) -> torch.Tensor:
        assert cache.carry is not None
        out, cache.carry[i - 1] = torch.cat([cache.carry[i - 1], u[:, :-1]], 1), u[:, -1:]
        return out

    return shift


def new_cache(m: Stack, r: int) -> ParallelCache:
    """One KV cache per prelude / coda block and one LoopKV per core block (the first
    loop's keys and values plus the later loops' windows)."""
    from lab.model.stack import KVCache

    plan, spec = m.plan, m.plan.parallel
    core = [LoopKV.make(r, spec.shared_kv, spec.gswa, spec.window) for _ in plan.core]
    return ParallelCache([*(KVCache() for _ in plan.prelude), *core, *(KVCache() for _ in plan.coda)], r)


def trace(m: Stack, x: torch.Tensor, r: int, keep: bool, bptt: int | None) -> StackOutput:
    """The training walk of parallel looping (lab.model.parallel)."""
    plan, spec = m.plan, m.plan.parallel
    core0, core1 = plan.core[0], plan.core[-1]
    from lab.model.stack import StackOutput

    out = StackOutput(logits=None)  # type: ignore[arg-type]
    h = m.embed_tokens(x)
    h, prev = m.run_blocks(h, EMBED, plan.prelude)
    e = m.move(h, prev, core0)  # e_t: the input of loop 1
    first: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # loop 1's k, v per block
    free = r - (bptt if bptt is not None else r)  # loops run without gradient
    for i in range(r):
        ctx = torch.no_grad() if i < free and torch.is_grad_enabled() else contextlib.nullcontext()
        with ctx:
            # u^{l+1}_t = h^l_{t-1} + e_t, h^l_{-1} = 0
            u = m.loop_input(h, i, e, core0, shift=shift_right if spec.shift else None)
            if i == 0 and keep:
                out.states.append(u)
            h, prev = u, core0
            for b in plan.core:
                h = m.move(h, prev, b)
                h = m.blocks[b](h, attend=train_attend(m, b, i, first))
                prev = b
            m.record_loop(out, h, prev, keep, i >= free)
    return m.finish(out, h, core1, keep)


def train_attend(m: Stack, b: int, i: int, first: dict) -> Attend:
    block, spec = m.blocks[b], m.plan.parallel
    if i == 0:  # loop 1: plain causal self-attention; remember its keys and values
        def attend(q, k, v, p):
            first[b] = (k, v)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
    else:
        def attend(q, k, v, p):
            k1, v1 = first[b]
            return later_loop_attention(q, k, v, k1, v1, block.gate, spec.shared_kv,
                                            spec.gswa, spec.window, p)
    return attend


def decode(m: Stack, x: torch.Tensor, offset: int, cache: list, r: int) -> torch.Tensor:
    """Parallel-mode decoding. A single new token with the cross-loop shift runs all r
    loops as one batch of r rows through the core; a longer chunk (or no shift) runs the
    loops one after another over the chunk. Both give the training forward's outputs."""
    plan, spec = m.plan, m.plan.parallel
    core0, core1 = plan.core[0], plan.core[-1]
    if not isinstance(cache, ParallelCache) or cache.loops != r:
        raise ValueError(f"decode_step needs the cache of new_cache({r}) in parallel mode.")
    B, T = x.shape
    queue = list(cache)
    h = m.embed_tokens(x, offset)
    h, prev = m.run_blocks(h, EMBED, plan.prelude, queue)
    e = m.move(h, prev, core0)
    kv = [queue.pop(0) for _ in plan.core]
    if spec.shift and cache.carry is None:
        cache.carry = [torch.zeros_like(e[:, :1]) for _ in range(r - 1)]
    q_pos = torch.arange(offset, offset + T, device=x.device)
    if spec.shift and T == 1 and r > 1:
        # Loop 1 of this token and loops 2..r fed by the previous token's loops 1..r-1.
        assert cache.carry is not None
        hb = torch.cat([e, *(c + e for c in cache.carry)], 0)  # (r*B, 1, C)
        prev = core0
        for j, b in enumerate(plan.core):
            hb = m.move(hb, prev, b)
            hb = m.blocks[b](hb, attend=batched_attend(m, b, kv[j], r, offset))
            prev = b
        outs = hb.split(B)
        cache.carry = [m.move(o, core1, core0) for o in outs[:-1]]
        h = outs[-1]
    else:
        for i in range(r):
            u = m.loop_input(h, i, e, core0, shift=carry_shift(cache, i) if spec.shift else None)
            h, prev = u, core0
            for j, b in enumerate(plan.core):
                h = m.move(h, prev, b)
                h = m.blocks[b](h, attend=cached_attend(m, b, kv[j], i, q_pos))
                prev = b
    h, prev = m.run_blocks(h, core1, plan.coda, queue)
    return m.logits_of(h)


def cached_attend(m: Stack, b: int, kv: LoopKV, i: int, q_pos: torch.Tensor) -> Attend:
    """Attention of loop i over a chunk of new positions q_pos, with the block's cache."""
    block, spec = m.blocks[b], m.plan.parallel
    end = int(q_pos[-1]) + 1

    def attend(q, k, v, p):
        if i == 0:
            k1, v1 = kv.first.extend(k, v)
            return cached_attention(q, q_pos, k1, v1, end)
        own = kv.later[i - 1]
        ko = vo = None
        if own is not None:
            ko, vo = own.extend(k, v)
        if spec.shared_kv:  # loop 1 already stored this chunk
            assert kv.first.k is not None and kv.first.v is not None
            y = cached_attention(q, q_pos, kv.first.k, kv.first.v, end)
        else:
            y = cached_attention(q, q_pos, ko, vo, end)
        if not spec.gswa:
            return y
        yw = cached_attention(q, q_pos, ko, vo, end, spec.window)
        return mix(block.gate, q, y, yw)

    return attend


def batched_attend(m: Stack, b: int, kv: LoopKV, r: int, offset: int) -> Attend:
    """Attention of one new token's r loops, stacked along the batch (loop-major)."""
    block, spec, W = m.blocks[b], m.plan.parallel, m.plan.parallel.window

    def attend(q, k, v, p):
        q, k, v = (t.unflatten(0, (r, -1)) for t in (q, k, v))  # (r, B, nh, 1, hs)
        k1, v1 = kv.first.extend(k[0], v[0])
        y0 = F.scaled_dot_product_attention(q[0], k1, v1)  # sees every cached position
        qs = q[1:]
        own = [c.extend(k[i], v[i]) if c is not None else None
               for i, c in enumerate(kv.later, start=1)]
        if spec.shared_kv:
            # All later loops query the first loop's keys: r-1 queries per head, one call.
            qg = qs.squeeze(3).permute(1, 2, 0, 3)  # (B, nh, r-1, hs)
            yg = F.scaled_dot_product_attention(qg, k1, v1).permute(2, 0, 1, 3).unsqueeze(3)
        else:
            yg = torch.stack([F.scaled_dot_product_attention(qs[i], *own[i])  # type: ignore[misc]
                              for i in range(r - 1)])
        if spec.gswa:
            # Every later loop has seen the same positions: its last W keys, one call.
            kw = torch.cat([o[0][:, :, -W:] for o in own])  # type: ignore[index]
            vw = torch.cat([o[1][:, :, -W:] for o in own])  # type: ignore[index]
            qf = qs.flatten(0, 1)
            yw = F.scaled_dot_product_attention(qf, kw, vw)
            yg = mix(block.gate, qf, yg.flatten(0, 1), yw).unflatten(0, (r - 1, -1))
        return torch.cat([y0[None], yg]).flatten(0, 1)

    return attend
