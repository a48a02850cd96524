"""Rotary position embedding (RoPE; Su et al. 2021, "RoFormer", arXiv 2104.09864).

Queries and keys of every attention call are rotated by their absolute position, so the
score of query t against key s depends on t - s only: no positional table, no limit on the
sequence length, no parameters. The rotate-half form (as GPT-NeoX, Llama and litgpt write
it): dimension i of a head is paired with dimension i + hs/2, and the pair is rotated by the
angle ``pos * base ** (-2i / hs)``; in complex numbers, ``(x_i + j x_{i+hs/2}) * exp(j pos
theta_i)`` (tests check it against that form).

Looped models rotate by the token's position at every loop, the same at each: a loop does
not move a token. A KV cache stores keys already rotated, so decoding rotates only the new
tokens, at their absolute positions (the cache's offset).
"""

from __future__ import annotations

import torch
from torch import nn


class Rotary(nn.Module):
    """cos / sin tables of one head size, grown on demand; no parameters."""

    def __init__(self, head_dim: int, base: float = 10000.0, length: int = 256):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got {head_dim}")
        self.head_dim, self.base = head_dim, float(base)
        inv = 1.0 / self.base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.register_buffer("inv_freq", inv.float(), persistent=False)
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self._build(length)

    def _build(self, length: int) -> None:
        # In float64 so that long positions keep their angle to the last bit of a float32.
        pos = torch.arange(length, dtype=torch.float64, device=self.inv_freq.device)
        ang = pos[:, None] * self.inv_freq.double()[None, :]  # (L, hs/2)
        ang = torch.cat([ang, ang], dim=-1)  # (L, hs): the same angle for i and i + hs/2
        self.cos, self.sin = ang.cos().float(), ang.sin().float()

    def forward(self, q: torch.Tensor, k: torch.Tensor, offset: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q and k (B, nh, T, hs) at positions offset .. offset + T - 1."""
        T = q.shape[-2]
        if offset + T > self.cos.shape[0]:
            self._build(max(2 * self.cos.shape[0], offset + T))
        cos = self.cos[offset:offset + T].to(q.dtype)  # (T, hs)
        sin = self.sin[offset:offset + T].to(q.dtype)
        return rotate(q, cos, sin), rotate(k, cos, sin)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, with rotate_half([a, b]) = [-b, a]."""
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-b, a], dim=-1) * sin
