"""Adaptive exit at evaluation: accuracy against the mean number of loops used.

:meth:`lab.model.stack.Stack.adaptive` stops looping per token (causal tasks) or per sequence
(bidirectional) once the relative update norm or the KL divergence between successive
readouts falls below a threshold. :func:`exit_curve` sweeps thresholds and returns, for each,
the accuracy and the mean loops used; :func:`fixed_curve` gives the same rows for fixed loop
counts, so a report can draw both curves on one axis (accuracy vs loops).

Mean loops are taken over the positions that carry a target (causal tasks: the per-token
loop counts where accuracy is measured) or over sequences (bidirectional tasks).
"""

from __future__ import annotations

import torch

from lab.config import LabConfig
from lab.eval.device import device_of
from lab.eval.metrics import EVAL_BATCH, Accuracy, evaluate
from lab.model.stack import Stack
from lab.tasks import IGNORE


def exit_settings(cfg: LabConfig) -> tuple[str, float, int]:
    """(criterion, threshold, max_loops) of a config's adaptive exit, defaults resolved:
    max_loops is model.exit_max_loops, else the evaluation loop count."""
    m = cfg.model
    return m.exit, m.exit_threshold, m.exit_max_loops or m.eval_loops or m.loops


def _mean_loops(used: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    if used.dim() == 2:  # per token: count labelled positions
        mask = y != IGNORE
        return int(used[mask].sum()), int(mask.sum())
    return int(used.sum()), used.numel()


@torch.no_grad()
def exit_curve(model: Stack, x: torch.Tensor, y: torch.Tensor, thresholds: list[float],
               criterion: str = "update_norm", max_loops: int | None = None,
               batch_size: int = EVAL_BATCH) -> list[dict[str, float]]:
    """One row per threshold: threshold, mean_loops, acc_token, acc_seq, loss."""
    was_training = model.training
    model.eval()
    device = device_of(model)
    rows = []
    try:
        for thr in thresholds:
            acc, total, count = Accuracy(), 0, 0
            for i in range(0, x.shape[0], batch_size):
                xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
                logits, used = model.adaptive(xb, float(thr), max_loops, criterion)
                acc.update(logits, yb)
                s, n = _mean_loops(used, yb)
                total, count = total + s, count + n
            rows.append({"threshold": float(thr), "mean_loops": total / max(count, 1),
                         **acc.compute()})
    finally:
        model.train(was_training)
    return rows


@torch.no_grad()
def fixed_curve(model: Stack, x: torch.Tensor, y: torch.Tensor, loops: list[int],
                batch_size: int = EVAL_BATCH) -> list[dict[str, float]]:
    """The fixed-r reference: one row per loop count, with mean_loops = r."""
    was_training = model.training
    model.eval()
    rows = []
    try:
        for r in loops:
            rows.append({"loops": r, "mean_loops": float(r), **evaluate(model, x, y, r, batch_size)})
    finally:
        model.train(was_training)
    return rows
