"""The optimizer and the learning-rate schedule: used by the harness and the bench alike."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from lab.config import LabConfig, decay_start


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: LabConfig):
    """AdamW with weight decay on matrices only, and the step-wise LambdaLR schedule.

    On a GPU the update is one fused kernel (``fused=True``) instead of a chain of foreach
    kernels; on a CPU it stays the default implementation (the results of CPU runs do not
    change).
    """
    t = cfg.train
    params = list(params)
    decay = [p for p in params if p.dim() >= 2]
    other = [p for p in params if p.dim() < 2]
    fused = bool(params) and all(p.device.type == "cuda" for p in params)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay},
         {"params": other, "weight_decay": 0.0}],
        lr=t.lr, betas=(0.9, 0.95), fused=fused or None,
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))


def lr_lambda(cfg: LabConfig):
    t = cfg.train

    def f(step: int) -> float:
        if step < t.warmup:
            return (step + 1) / t.warmup
        if t.schedule == "constant":
            return 1.0
        if t.schedule == "wsd":
            start = decay_start(t.steps, t.decay_fraction)
            if step < start:
                return 1.0
            progress = min(1.0, (step - start + 1) / max(1, t.steps - start))
            return 1.0 - (1 - t.min_lr_ratio) * progress
        progress = min(1.0, (step - t.warmup) / max(1, t.steps - t.warmup))
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f
