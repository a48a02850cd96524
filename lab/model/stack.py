"""Stack: one module that executes any StackPlan.

Pre-norm transformer blocks (attention through ``scaled_dot_product_attention``), learned
absolute positions, an untied output head. The executor walks ``plan.order(r)``; whenever
the residual width changes between two consecutive blocks it applies the resize for that
transition (a learned linear map, or truncate / zero-pad)::

    x ─ embed ─ prelude ─┬─ core ─ core ─ ... ─ core ─┬─ coda ─ norm ─ head ─ logits
                         e    (r loops; before loops 2..r: h += resize(e) when
                              injection="add")

Readouts. For a looped plan, the readout after loop i is what the model would output had it
stopped there: the coda, final norm and head applied to the state after loop i. For a
single-pass plan, the readout after layer l is the final norm and head applied to the state
after layer l (resized to the output width through the remaining transitions): a logit lens.
Either way the last readout *is* the model's output.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lab.model.plan import EMBED, StackPlan


class Block(nn.Module):
    def __init__(self, width: int, hidden: int, n_heads: int, causal: bool, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, hidden, bias=False)
        self.out = nn.Linear(hidden, width, bias=False)

    def attention(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, nh, T, hs)
        if cache is not None:
            k, v = cache.append(k, v)
            # Decoding: the new positions see every cached position and each other causally.
            causal = self.causal and T > 1
        else:
            causal = self.causal
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=p)  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + F.dropout(self.attention(self.ln1(x), cache), self.dropout, self.training)
        h = self.out(F.gelu(self.fc(self.ln2(x))))
        return x + F.dropout(h, self.dropout, self.training)


class Resize(nn.Module):
    """Change the residual width: learned linear map, or truncate / zero-pad."""

    def __init__(self, d_in: int, d_out: int, mode: str):
        super().__init__()
        self.d_in, self.d_out, self.mode = d_in, d_out, mode
        self.map = nn.Linear(d_in, d_out, bias=False) if mode == "linear" else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.map is not None:
            return self.map(h)
        if self.d_out < self.d_in:
            return h[..., : self.d_out]
        return F.pad(h, (0, self.d_out - self.d_in))


@dataclass
class KVCache:
    """Keys and values of one executed block, (B, nh, T, hs) each."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v) if t is not None)


@dataclass
class StackOutput:
    logits: torch.Tensor  # (B, T, V)
    # Hidden states at each boundary: before the first loop / after the embedding, then after
    # every loop (looped) or every layer (single-pass). Widths may differ between entries.
    states: list[torch.Tensor] = field(default_factory=list)
    # Logits read out after every loop / layer; readouts[-1] is logits.
    readouts: list[torch.Tensor] = field(default_factory=list)
    # Whether each readout carries gradient (truncated BPTT runs early loops without it).
    grad: list[bool] = field(default_factory=list)


class Stack(nn.Module):
    def __init__(self, plan: StackPlan, vocab_size: int, max_len: int, causal: bool,
                 dropout: float = 0.0):
        super().__init__()
        self.plan, self.causal, self.max_len = plan, causal, max_len
        self.embed = nn.Embedding(vocab_size, plan.embed_width)
        self.pos = nn.Embedding(max_len, plan.embed_width)
        self.blocks = nn.ModuleList(
            Block(w, h, plan.n_heads, causal, dropout)
            for w, h in zip(plan.widths, plan.hidden, strict=True)
        )
        self.resizers = nn.ModuleDict(
            {_key(a, b): Resize(plan.width_of(a), plan.width_of(b), plan.resize)
             for a, b in plan.resized_transitions()}
        )
        self.norm = nn.LayerNorm(plan.out_width)
        self.head = nn.Linear(plan.out_width, vocab_size, bias=False)
        self.apply(_init)

    # ------------------------------------------------------------------ pieces of the walk
    def _move(self, h: torch.Tensor, a: int, b: int) -> torch.Tensor:
        key = _key(a, b)
        return self.resizers[key](h) if key in self.resizers else h

    def _embed(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        T = x.shape[1]
        if offset + T > self.max_len:
            raise ValueError(f"sequence of {offset + T} tokens exceeds max_len={self.max_len}")
        pos = torch.arange(offset, offset + T, device=x.device)
        return self.embed(x) + self.pos(pos)  # (B, T, C0)

    def _run(self, h: torch.Tensor, prev: int, blocks: tuple[int, ...], caches=None):
        for b in blocks:
            h = self._move(h, prev, b)
            h = self.blocks[b](h, None if caches is None else caches.pop(0))
            prev = b
        return h, prev

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(h))

    def _readout_loop(self, h: torch.Tensor, prev: int) -> torch.Tensor:
        h, _ = self._run(h, prev, self.plan.coda)
        return self._head(h)

    def _readout_layer(self, h: torch.Tensor, prev: int) -> torch.Tensor:
        # Logit lens: carry the state through the remaining width changes, skip the blocks.
        order = self.plan.order()
        i = order.index(prev) if prev != EMBED else -1
        for b in order[i + 1 :]:
            h = self._move(h, prev, b)
            prev = b
        return self._head(h)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, loops: int | None = None) -> torch.Tensor:
        """Logits (B, T, V) at `loops` loops (default: the plan's)."""
        return self.trace(x, loops, keep=False).logits

    def trace(self, x: torch.Tensor, loops: int | None = None, keep: bool = True,
              bptt: int | None = None) -> StackOutput:
        """Run the plan; with keep=True also return states and readouts at every boundary.

        bptt: backpropagate through only the last `bptt` loops (the earlier ones run without
        gradient). Readouts of single-pass plans are per layer.
        """
        plan = self.plan
        r = plan.loops if loops is None else loops
        out = StackOutput(logits=None)  # type: ignore[arg-type]
        h = self._embed(x)
        if not plan.looped:
            prev = EMBED
            if keep:
                out.states.append(h)
            for b in plan.prelude:
                h, prev = self._run(h, prev, (b,))
                if keep:
                    out.states.append(h)
                    out.readouts.append(self._readout_layer(h, prev))
                    out.grad.append(True)
            out.logits = out.readouts[-1] if keep else self._head(h)
            return out

        h, prev = self._run(h, EMBED, plan.prelude)
        e, e_src = h, prev
        free = r - (bptt if bptt is not None else r)  # loops run without gradient
        for i in range(r):
            ctx = torch.no_grad() if i < free and torch.is_grad_enabled() else contextlib.nullcontext()
            with ctx:
                if i == 0:
                    h = self._move(h, prev, plan.core[0])
                    if keep:
                        out.states.append(h)
                else:
                    h = self._move(h, prev, plan.core[0])
                    if plan.injection == "add":
                        h = h + self._move(e, e_src, plan.core[0])
                prev = plan.core[0]
                h, prev = self._run(h, prev, plan.core)
                if keep:
                    out.states.append(h)
                    out.readouts.append(self._readout_loop(h, prev))
                    out.grad.append(i >= free)
        if keep:
            out.logits = out.readouts[-1]
        else:
            h, prev = self._run(h, prev, plan.coda)
            out.logits = self._head(h)
        return out

    # ------------------------------------------------------------------ decoding
    def new_cache(self, loops: int | None = None) -> list[KVCache]:
        """One KV cache per executed block: serial looping keeps one per pass."""
        return [KVCache() for _ in self.plan.order(loops)]

    @torch.no_grad()
    def decode_step(self, x: torch.Tensor, offset: int, cache: list[KVCache],
                    loops: int | None = None) -> torch.Tensor:
        """Logits for the new tokens x (B, t) at positions offset.., extending `cache`."""
        plan = self.plan
        r = plan.loops if loops is None else loops
        queue = list(cache)
        h = self._embed(x, offset)
        h, prev = self._run(h, EMBED, plan.prelude, queue)
        e, e_src = h, prev
        for i in range(r if plan.core else 0):
            h = self._move(h, prev, plan.core[0])
            if i > 0 and plan.injection == "add":
                h = h + self._move(e, e_src, plan.core[0])
            h, prev = self._run(h, plan.core[0], plan.core, queue)
        h, prev = self._run(h, prev, plan.coda, queue)
        return self._head(h)


def _key(a: int, b: int) -> str:
    return f"{'e' if a == EMBED else a}_{b}"


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear | nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
