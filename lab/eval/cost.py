"""Cost accounting: unique parameters, effective depth, FLOPs per token (FlopCounterMode).

FlopCounterMode has no formula for the CPU flash-attention kernels that
``scaled_dot_product_attention`` dispatches to on a CPU, so it would count attention as
free there; we register torch's own SDPA formulas for those kernels. As in torch, attention
FLOPs are those of the full T x T score matrix (causal masking is not discounted).
"""

from __future__ import annotations

import copy
import math
import statistics

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from lab.eval.device import autocast, clock, device_of
from lab.model.plan import StackPlan
from lab.model.stack import Stack
from lab.tasks import IGNORE, Task, eval_set

_aten = torch.ops.aten
# torch's own formulas (unwrapped: FlopCounterMode wraps custom_mapping entries itself).
_CPU_SDPA = {
    _aten._scaled_dot_product_flash_attention_for_cpu: flop_counter.sdpa_flop.__wrapped__,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        flop_counter.sdpa_backward_flop.__wrapped__
    ),
}


def unique_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=_CPU_SDPA) as fc:
        fn()
    return int(fc.get_total_flops())


def flops_per_token(model: Stack, task: Task, loops: int | None = None, train: bool = False) -> float:
    """FLOPs per token of one sequence of the task's training length.

    train=False: the inference forward pass. train=True: forward + backward of the loss.
    """
    device = device_of(model)
    x, y = (t.to(device) for t in eval_set(task, "val", 1))
    was_training = model.training
    model.eval()

    def run():
        if train:
            with torch.enable_grad():
                logits = model(x, loops)
                F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE).backward()
        else:
            with torch.no_grad():
                model(x, loops)

    try:
        flops = count_flops(run)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return flops / x.shape[1]


def static_costs(model: Stack, plan: StackPlan, task: Task, loops: int | None = None) -> dict:
    """Cost figures that need no timing: the columns every table shows."""
    return {
        "params": unique_params(model),
        "effective_depth": plan.effective_depth(loops),
        "flops_per_token": flops_per_token(model, task, loops),
        "train_flops_per_token": flops_per_token(model, task, loops, train=True),
    }


# --------------------------------------------------------------------------------------------
# Measured costs: decode latency and KV cache, peak memory of a training step.


def kv_cache_bytes(plan: StackPlan, loops: int | None = None, tokens: int = 1,
                   element_size: int = 4, batch: int = 1) -> int:
    """Bytes of the decode KV cache after `tokens` positions (keys and values: 2 * width
    numbers per cached position of a block).

    Serial: every executed block caches every position. Parallel (lab.model.parallel):
    prelude, coda and the first loop of every core block cache every position; each later
    loop of a core block caches every position without KV sharing, its last
    min(window, tokens) positions with sharing and G-SWA, and nothing with sharing alone.
    """
    per_pos = 2 * element_size * batch
    if not (plan.looped and plan.loop_mode == "parallel"):
        return per_pos * tokens * sum(plan.widths[b] for b in plan.order(loops))
    r = plan.loops if loops is None else loops
    spec = plan.parallel
    full = sum(plan.widths[b] for b in plan.order(1))  # prelude, loop 1, coda
    core = sum(plan.widths[b] for b in plan.core)
    if not spec.shared_kv:
        later = tokens
    elif spec.gswa:
        later = min(spec.window, tokens)
    else:
        later = 0
    return per_pos * (full * tokens + (r - 1) * core * later)


def kv_bytes_per_token(plan: StackPlan, loops: int | None = None, element_size: int = 4,
                       tokens: int | None = None) -> float:
    """KV-cache bytes per cached token.

    Serial execution caches keys and values for every executed block: 2 * width each, per
    token. In parallel mode the later loops' windows are a fixed cost, amortised over the
    context: pass `tokens` for the figure after that many positions
    (kv_cache_bytes / tokens); without it, the limit of a long context (windows excluded).
    """
    if tokens is not None:
        return kv_cache_bytes(plan, loops, tokens, element_size) / tokens
    if plan.looped and plan.loop_mode == "parallel":
        r = plan.loops if loops is None else loops
        later = 0 if plan.parallel.shared_kv else (r - 1) * sum(plan.widths[b] for b in plan.core)
        return 2 * element_size * (sum(plan.widths[b] for b in plan.order(1)) + later)
    return 2 * element_size * sum(plan.widths[b] for b in plan.order(loops))


@torch.no_grad()
def latency_costs(model: Stack, task: Task, loops: int | None, n_tokens: int,
                  repeats: int = 5, precision: str | None = None) -> dict:
    """Inference seconds per token (batch 1) and KV bytes per token.

    Causal tasks: autoregressive decoding with a KV cache over the last `n_tokens` positions
    of a validation sequence. Bidirectional tasks have no decoding; there the latency is one
    full-sequence pass divided by its length, and the KV figure is the keys and values every
    executed block holds per token during that pass. Each timing is the fastest of `repeats`
    passes (after a warm-up pass), so that a spike from another process on the machine does not
    count; for decoding, the figure is the median over positions of those fastest times.
    Runs on the model's device, under the autocast of `precision` (the run's number format).
    """
    model.eval()
    device = device_of(model)
    x = eval_set(task, "val", 1)[0].to(device)
    T = x.shape[1]
    n = min(n_tokens, T - 1) if task.causal else 1
    best = [math.inf] * n
    with autocast(device, precision):
        for rep in range(repeats + 1):  # the first pass warms up
            cache = model.new_cache(loops)
            if task.causal:
                model.decode_step(x[:, : T - n], 0, cache, loops)
                for i, t in enumerate(range(T - n, T)):
                    t0 = clock(device)
                    model.decode_step(x[:, t : t + 1], t, cache, loops)
                    if rep:
                        best[i] = min(best[i], clock(device) - t0)
            else:
                t0 = clock(device)
                model.decode_step(x, 0, cache, loops)
                if rep:
                    best[0] = min(best[0], (clock(device) - t0) / T)
    return {
        "latency_s_per_token": statistics.median(best),
        "latency_mode": "kv-cache decode" if task.causal else "full-sequence pass",
        "kv_bytes_per_token": cache_bytes(cache) / T,
    }


def cache_bytes(cache) -> int:
    """KV bytes held by a decode cache (serial: a KVCache per executed block; parallel: the
    ParallelCache's entries), carried loop outputs excluded."""
    return sum(c.nbytes() for c in cache)


class PeakMemory(TorchDispatchMode):
    """Peak bytes of live tensor storage on the CPU during a region, tracked per aten op.

    Storages alive at entry (parameters, gradients, optimizer state, inputs) are passed in
    as the baseline; every op output is tracked until its storage is freed.
    """

    def __init__(self, baseline: list[torch.Tensor]):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        for t in baseline:
            self._track(t)
        self.peak = self.current

    def _track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        ref = StorageWeakRef(st)
        if ref.cdata in self.live or st.nbytes() == 0:
            return
        self.live[ref.cdata] = (ref, st.nbytes())
        self.current += st.nbytes()

    def _sweep(self) -> None:
        dead = [k for k, (ref, _) in self.live.items() if ref.expired()]
        for k in dead:
            self.current -= self.live.pop(k)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._sweep()
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._track(t)
        self.peak = max(self.peak, self.current)
        return out


def train_step_peak_bytes(model: Stack, task: Task, loops: int | None, batch_size: int,
                          precision: str | None = None) -> int:
    """Peak memory of one steady-state training step (forward, backward, AdamW update), on
    the model's device and under the autocast of `precision`."""
    model = copy.deepcopy(model).train()
    g = torch.Generator().manual_seed(0)
    x, y = task.sample(batch_size, g, "train")
    device = device_of(model)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with autocast(device, precision):
            logits = model(x, loops)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # allocate optimizer state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated(device))
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    with PeakMemory([*model.parameters(), *state, x, y]) as mem:
        step()
    return mem.peak


def measured_costs(model: Stack, task: Task, loops: int | None, cfg,
                   precision: str | None = None) -> dict:
    """Decode latency, KV bytes and the training step's peak memory, on the model's device in
    the run's number format (`precision`: the one it trained in)."""
    out = latency_costs(model, task, loops, cfg.eval.decode_tokens, precision=precision)
    out["train_step_peak_bytes"] = train_step_peak_bytes(model, task, loops, cfg.train.batch_size,
                                                         precision)
    return out
