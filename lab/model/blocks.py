"""The pieces a Stack is built from: the transformer block, the width resize, the KV cache of
one executed block, and the output of a traced forward pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lab.model.parallel import Gate
from lab.model.rotary import Rotary

# attend(q, k, v, dropout_p) -> y, all (B, nh, T, hs): replaces a block's self-attention.
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]



class Block(nn.Module):
    def __init__(self, width: int, hidden: int, n_heads: int, causal: bool, dropout: float = 0.0,
                 gated: bool = False, rope_base: float | None = None):
        super().__init__()
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, hidden, bias=False)
        self.out = nn.Linear(hidden, width, bias=False)
        # G-SWA gate of a core block in parallel mode (lab.model.parallel).
        self.gate = Gate(n_heads, width // n_heads) if gated else None
        # Rotary positions (model.positions=rope): queries and keys rotated by position.
        self.rotary = Rotary(width // n_heads, rope_base) if rope_base is not None else None

    def attention(self, x: torch.Tensor, cache: KVCache | None = None,
                  attend: Attend | None = None, pos: int = 0) -> torch.Tensor:
        """Self-attention of x, whose first position is `pos` (decoding: the cache's length)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, nh, T, hs)
        if self.rotary is not None:
            # Rotated before anything sees them: a cache stores rotated keys, and the attend
            # hooks of parallel looping (and their gate, as in the reference inference code)
            # get rotated queries.
            q, k = self.rotary(q, k, pos)
        p = self.dropout if self.training else 0.0
        if attend is not None:
            y = attend(q, k, v, p)
        else:
            mask, causal = None, self.causal
            if cache is not None:
                k, v = cache.append(k, v)
                # Decoding: the new positions see every cached position and each other
                # causally. is_causal aligns the mask top-left, which is only right when
                # nothing was cached before this chunk; otherwise align it bottom-right.
                past = k.shape[2] - T
                causal = self.causal and T > 1 and past == 0
                if self.causal and T > 1 and past > 0:
                    mask = torch.ones(T, k.shape[2], dtype=torch.bool, device=x.device).tril(past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                               dropout_p=p)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # y: (B, nh, T, hs)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None,
                attend: Attend | None = None, pos: int = 0) -> torch.Tensor:
        x = x + F.dropout(self.attention(self.ln1(x), cache, attend, pos), self.dropout,
                          self.training)
        h = self.out(F.gelu(self.fc(self.ln2(x))))
        return x + F.dropout(h, self.dropout, self.training)


class Resize(nn.Module):
    """Change the residual width: learned linear map, or truncate / zero-pad.

    Mode ``restore`` is truncate / zero-pad here too; a single-pass walk that carries a
    :class:`Carry` restores the truncated dimensions instead of zeros (see :meth:`Carry.take`).
    """

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


class Carry:
    """Parameter-free width restore (``model.resize=restore``), as variable-width transformers do.

    Holds the latest value of every residual dimension seen so far in one pass. When the
    stream narrows, the dropped dimensions stay here untouched; when it widens again they come
    back from the last layer that had them (dimensions no earlier layer had start at zero).
    """

    def __init__(self, full: torch.Tensor | None = None):
        self.full = full

    def take(self, h: torch.Tensor, d_out: int) -> torch.Tensor:
        """Record h (the stream at its current width) and return the stream at width d_out."""
        d = h.shape[-1]
        if self.full is None or self.full.shape[-1] <= d:
            self.full = h
        else:
            self.full = torch.cat([h, self.full[..., d:]], dim=-1)
        out = self.full[..., :d_out]
        return F.pad(out, (0, d_out - out.shape[-1])) if out.shape[-1] < d_out else out

    def fork(self) -> Carry:
        return Carry(self.full)


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
    # Looped plans: the input of every loop (inputs[i] enters loop i + 1, at the core's input
    # width): the previous loop's output plus whatever the walk adds to it (injection, shift).
    # states[i + 1] - inputs[i] is the core's own contribution in loop i + 1.
    inputs: list[torch.Tensor] = field(default_factory=list)
    # Logits read out after every loop / layer; readouts[-1] is logits.
    readouts: list[torch.Tensor] = field(default_factory=list)
    # Whether each readout carries gradient (truncated BPTT runs early loops without it).
    grad: list[bool] = field(default_factory=list)
