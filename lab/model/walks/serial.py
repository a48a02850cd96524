"""The serial walk: every loop runs after the previous one, for every token (and the single
pass of uniform and banded plans). One of the loop modes of :class:`lab.model.stack.Stack`;
each mode provides ``trace``, ``new_cache`` and ``decode``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

from lab.model.blocks import KVCache, StackOutput
from lab.model.plan import EMBED

if TYPE_CHECKING:
    from lab.model.stack import Stack


def trace(m: Stack, x: torch.Tensor, r: int, keep: bool, bptt: int | None) -> StackOutput:
    plan = m.plan
    out = StackOutput(logits=None)  # type: ignore[arg-type]
    h = m.embed_tokens(x)
    if not plan.looped:
        prev, carry = EMBED, m.new_carry()
        if keep:
            out.states.append(h)
        for b in plan.prelude:
            h, prev = m.run_blocks(h, prev, (b,), carry=carry)
            if keep:
                out.states.append(h)
                out.readouts.append(m.readout_layer(h, prev, carry))
                out.grad.append(True)
        out.logits = out.readouts[-1] if keep else m.logits_of(h)
        return out

    e, e_src = m.run_blocks(h, EMBED, plan.prelude)
    free = r - (bptt if bptt is not None else r)  # loops run without gradient
    for i in range(r):
        ctx = torch.no_grad() if i < free and torch.is_grad_enabled() else contextlib.nullcontext()
        with ctx:
            h = m.loop_input(h, i, e, e_src)
            if keep:
                if i == 0:
                    out.states.append(h)
                out.inputs.append(h)
            h, prev = m.run_blocks(h, plan.core[0], plan.core)
            m.record_loop(out, h, prev, keep, i >= free)
    return m.finish(out, h, plan.core[-1], keep)


def new_cache(m: Stack, r: int) -> list:
    """One KV cache per executed block: serial looping keeps one per pass."""
    return [KVCache() for _ in m.plan.order(r)]


def decode(m: Stack, x: torch.Tensor, offset: int, cache: list, r: int) -> torch.Tensor:
    plan = m.plan
    queue = list(cache)
    h = m.embed_tokens(x, offset)
    h, prev = m.run_blocks(h, EMBED, plan.prelude, queue, m.new_carry(), pos=offset)
    e, e_src = h, prev
    for i in range(r if plan.core else 0):
        h = m.loop_input(h, i, e, e_src)
        h, prev = m.run_blocks(h, plan.core[0], plan.core, queue, pos=offset)
    h, prev = m.run_blocks(h, prev, plan.coda, queue, pos=offset)
    return m.logits_of(h)
