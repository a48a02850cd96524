"""Independent references shared by several test modules."""

import torch


def complex_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary positions in RoFormer's complex form, over the last dimension of x (.., T, hs):
    the pair (x_i, x_{i+hs/2}) is the complex number x_i + j x_{i+hs/2}, multiplied by
    exp(j * pos * base^(-2i/hs))."""
    hs = x.shape[-1]
    theta = base ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)  # (hs/2,)
    z = torch.complex(x[..., : hs // 2].double(), x[..., hs // 2 :].double())
    z = z * torch.polar(torch.ones_like(theta), positions.double()[:, None] * theta[None, :])
    return torch.cat([z.real, z.imag], -1).to(x.dtype)
