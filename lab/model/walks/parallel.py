"""The parallel walk (``model.loop_mode=parallel``): the Parallel Loop Transformer's training
forward and decoding, with the mechanism of :mod:`lab.model.parallel`. One of the loop modes of
:class:`lab.model.stack.Stack`; each mode provides ``trace``, ``new_cache`` and ``decode``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lab.model.blocks import Attend, KVCache, StackOutput
from lab.model.parallel import (
    LoopKV,
    ParallelCache,
    cached_attention,
    later_loop_attention,
    mix,
)
from lab.model.plan import EMBED

if TYPE_CHECKING:
    from lab.model.stack import Stack


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
    plan, spec = m.plan, m.plan.parallel
    core = [LoopKV.make(r, spec.shared_kv, spec.gswa, spec.window) for _ in plan.core]
    return ParallelCache([*(KVCache() for _ in plan.prelude), *core, *(KVCache() for _ in plan.coda)], r)


def trace(m: Stack, x: torch.Tensor, r: int, keep: bool, bptt: int | None) -> StackOutput:
    """The training walk of parallel looping (lab.model.parallel)."""
    plan, spec = m.plan, m.plan.parallel
    core0, core1 = plan.core[0], plan.core[-1]
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
            if keep:
                if i == 0:
                    out.states.append(u)
                out.inputs.append(u)
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
    h, prev = m.run_blocks(h, EMBED, plan.prelude, queue, pos=offset)
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
            hb = m.blocks[b](hb, attend=batched_attend(m, b, kv[j], r, offset), pos=offset)
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
                h = m.blocks[b](h, attend=cached_attend(m, b, kv[j], i, q_pos, offset + T),
                                pos=offset)
                prev = b
    h, prev = m.run_blocks(h, core1, plan.coda, queue, pos=offset)
    return m.logits_of(h)


def cached_attend(m: Stack, b: int, kv: LoopKV, i: int, q_pos: torch.Tensor,
                  end: int) -> Attend:
    """Attention of loop i over a chunk of new positions q_pos, with the block's cache; `end`
    is one past the last new position (known on the host: reading it off q_pos would wait
    for the device)."""
    block, spec = m.blocks[b], m.plan.parallel

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
