"""Cost against context length: KV-cache bytes and decode latency at C cached tokens.

The costs a trial records (lab.eval.cost) are taken at the task's own, short sequence length.
What separates serial looping from parallel looping (lab.model.parallel) shows at long
context: serial looping caches keys and values for every loop, shared KV for the first loop
only (plus r - 1 windows with G-SWA), so its KV bytes tend to 1/r of serial's (prelude and
coda aside) as the context grows. Here each setting's architecture is rebuilt (random
weights from a fixed seed: neither cost depends on the weights; a model with learned
positions gets a table long enough for the longest context, rotary positions need none), its
cache filled with C random tokens (prefill by :meth:`Stack.decode_step` on chunks), and then

- the KV bytes per sequence are read off the cache (carried loop outputs excluded, as in
  :func:`lab.eval.cost.kv_cache_bytes`, which they must equal), and
- single-token decode steps at that context are timed: one untimed step, then `steps` timed
  ones, of which the fastest counts for the round.

Settings are interleaved: in every round, at each context length, every setting is timed in a
shuffled order, so that a drift of the machine hits all of them alike. The figure of a point
is the median over rounds.
"""

from __future__ import annotations

import random
import statistics

import torch

from lab.eval.cost import cache_bytes, kv_bytes_per_token, kv_cache_bytes
from lab.eval.device import autocast, clock, device_of
from lab.model.plan import StackPlan
from lab.model.stack import Stack

CHUNK = 256  # prefill chunk (tokens per decode_step call)


def context_model(plan: StackPlan, vocab_size: int, max_len: int, seed: int = 0) -> Stack:
    """The plan's architecture in eval mode; with learned positions, a table of `max_len`."""
    torch.manual_seed(seed)
    return Stack(plan, vocab_size, max_len, causal=True).eval()


def needed_positions(lengths: list[int], steps: int) -> int:
    """Positions a measurement over `lengths` decodes at most: the longest context, the
    warm-up step and the timed steps."""
    return max(lengths) + 1 + steps


def setting_info(plan: StackPlan, loops: int, lengths: list[int], element_size: int = 4) -> dict:
    """What the report needs besides the measurements: the loop mode and parts, the formula's
    bytes per sequence at each length and its long-context bytes per token (windows
    excluded)."""
    parallel = plan.looped and plan.loop_mode == "parallel"
    spec = plan.parallel
    return {
        "loops": loops if plan.looped else 1,
        "loop_mode": plan.loop_mode if plan.looped else "serial",
        "shift": parallel and spec.shift, "shared_kv": parallel and spec.shared_kv,
        "gswa": parallel and spec.gswa, "window": spec.window if parallel else None,
        "kv_formula": [kv_cache_bytes(plan, loops, C, element_size) for C in lengths],
        "kv_limit_per_token": kv_bytes_per_token(plan, loops, element_size),
    }


class _Run:
    """One setting at one batch size: its model, tokens, cache and position."""

    def __init__(self, model: Stack, loops: int, batch: int, length: int, seed: int):
        self.model, self.loops, self.device = model, loops, device_of(model)
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(model.embed.num_embeddings, (batch, length),
                                    generator=g).to(self.device)
        self.cache, self.pos = model.new_cache(loops), 0

    def step(self, t: int, end: int) -> None:
        self.model.decode_step(self.tokens[:, t:end], t, self.cache, self.loops)

    def fill(self, C: int) -> None:
        if self.pos > C:  # past C already (lengths closer than the timed steps): start again
            self.cache, self.pos = self.model.new_cache(self.loops), 0
        for a in range(self.pos, C, CHUNK):
            self.step(a, min(C, a + CHUNK))
        self.pos = C

    def time_steps(self, steps: int) -> float:
        """Seconds of the fastest of `steps` single-token steps, after one untimed step."""
        self.step(self.pos, self.pos + 1)
        best = float("inf")
        for t in range(self.pos + 1, self.pos + 1 + steps):
            t0 = clock(self.device)
            self.step(t, t + 1)
            best = min(best, clock(self.device) - t0)
        self.pos += 1 + steps
        return best


@torch.no_grad()
def measure_contexts(models: dict[str, tuple[Stack, int]], lengths: list[int],
                     batches: list[int], rounds: int = 3, steps: int = 4,
                     seed: int = 0, precision: str | None = None) -> dict:
    """KV bytes per sequence and decode seconds per token, per setting, batch and length.

    `models`: {label: (model, loops)}, each model with at least needed_positions(lengths,
    steps) positions. Returns {"lengths", "batches", "rounds", "steps", "settings": {label:
    {"kv_bytes": [[bytes per sequence, per length] per batch], "seconds": [[[fastest step,
    per round] per length] per batch], "latency_s": [[median over rounds, per length] per
    batch]}}}. The models run on their device (one for all), under the autocast of
    `precision`.
    """
    lengths, batches = sorted(lengths), sorted(batches)
    need = needed_positions(lengths, steps)
    for label, (model, _) in models.items():
        if model.pos is not None and model.max_len < need:
            raise ValueError(f"setting '{label}': max_len {model.max_len} < {need} positions")
    out = {k: {"kv_bytes": [[0] * len(lengths) for _ in batches],
               "seconds": [[[] for _ in lengths] for _ in batches]} for k in models}
    order = list(models)
    rng = random.Random(seed)
    device = device_of(next(iter(models.values()))[0]) if models else torch.device("cpu")
    with autocast(device, precision):
        for _ in range(rounds):
            for bi, B in enumerate(batches):
                runs = {k: _Run(m, r, B, need, seed) for k, (m, r) in models.items()}
                for ci, C in enumerate(lengths):
                    rng.shuffle(order)
                    for k in order:
                        run = runs[k]
                        run.fill(C)
                        out[k]["kv_bytes"][bi][ci] = cache_bytes(run.cache) // B
                        out[k]["seconds"][bi][ci].append(run.time_steps(steps))
                del runs
    for v in out.values():
        v["latency_s"] = [[statistics.median(s) for s in row] for row in v["seconds"]]
    return {"lengths": lengths, "batches": batches, "rounds": rounds, "steps": steps,
            "settings": out}
