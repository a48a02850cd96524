"""Stack: one module that executes any StackPlan.

Pre-norm transformer blocks (attention through ``scaled_dot_product_attention``), rotary
positions applied to queries and keys in every attention call (``positions="rope"``; or a
learned absolute table added to the embedding, or none), and an output head tied to the token
embedding or not. The executor walks ``plan.order(r)``; whenever
the residual width changes between two consecutive blocks it applies the resize for that
transition (a learned linear map, truncate / zero-pad, or truncate / restore: single-pass plans
with ``resize="restore"`` carry the dropped dimensions in a :class:`~lab.model.blocks.Carry`
and put them back when the stream widens again)::

    x ─ embed ─ prelude ─┬─ core ─ core ─ ... ─ core ─┬─ coda ─ norm ─ head ─ logits
                         e    (r loops; before loops 2..r: h += resize(e) when
                              injection="add")

Readouts. For a looped plan, the readout after loop i is what the model would output had it
stopped there: the coda, final norm and head applied to the state after loop i. For a
single-pass plan, the readout after layer l is the final norm and head applied to the state
after layer l (resized to the output width through the remaining transitions): a logit lens.
Either way the last readout *is* the model's output.

Loop modes. ``plan.loop_mode="serial"`` runs the loops one after another for every token;
``"parallel"`` is the Parallel Loop Transformer (cross-loop shift, shared KV, gated
sliding-window attention; equations in :mod:`lab.model.parallel`), with its own training
walk and decode cache behind the same entry points (``forward``, ``trace``, ``new_cache``,
``decode_step``). :meth:`Stack.adaptive` runs a serial looped stack with a per-token (causal)
or per-sequence (bidirectional) adaptive exit, for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lab.model.blocks import Block, Carry, Resize, StackOutput
from lab.model.plan import EMBED, StackPlan, check_loop_mode
from lab.model.walks import parallel as parallel_walk
from lab.model.walks import serial

# The loop modes: each walk module provides trace(), new_cache() and decode() for a Stack.
LOOP_MODES = {"serial": serial, "parallel": parallel_walk}


def dense_block(block: Block, h: torch.Tensor) -> torch.Tensor:
    """One block over a whole sequence, without cache or attention hook: what
    :meth:`Stack.compile_blocks` compiles. Blocks of one width share its graphs, whatever
    the loop count, so a looped model compiles once for every r."""
    return block(h)


class Stack(nn.Module):
    def __init__(self, plan: StackPlan, vocab_size: int, max_len: int, causal: bool,
                 dropout: float = 0.0):
        super().__init__()
        if plan.looped:
            check_loop_mode(plan.loop_mode, causal)
        self.plan, self.causal, self.max_len = plan, causal, max_len
        self.embed = nn.Embedding(vocab_size, plan.embed_width)
        # The learned positional table (positions="learned"), the only use of max_len.
        self.pos = nn.Embedding(max_len, plan.embed_width) if plan.positions == "learned" else None
        rope = plan.rope_base if plan.positions == "rope" else None
        self.blocks = nn.ModuleList(
            Block(w, h, plan.n_heads, causal, dropout, gated=plan.gated and i in plan.core,
                  rope_base=rope)
            for i, (w, h) in enumerate(zip(plan.widths, plan.hidden, strict=True))
        )
        self.resizers = nn.ModuleDict(
            {_key(a, b): Resize(plan.width_of(a), plan.width_of(b), plan.resize)
             for a, b in plan.resized_transitions()}
        )
        self.norm = nn.LayerNorm(plan.out_width)
        self.head = nn.Linear(plan.out_width, vocab_size, bias=False)
        self.apply(_init)
        if plan.resize == "restore":
            # Per-layer initialisation scaled to each width (fan-in: std ~ 1/sqrt(width)),
            # relative to the embedding width; blocks at that width keep the default draw.
            for w, b in zip(plan.widths, self.blocks, strict=True):
                if w != plan.embed_width:
                    std = 0.02 * (plan.embed_width / w) ** 0.5
                    for mod in b.modules():
                        if isinstance(mod, nn.Linear):
                            nn.init.normal_(mod.weight, std=std)
        for b in self.blocks:
            if b.gate is not None:
                nn.init.normal_(b.gate.weight, std=0.02)
        if plan.tied:
            # After every draw, so that a tied and an untied model share their other weights.
            self.head.weight = self.embed.weight
        self.dense: Callable | None = None  # compiled dense_block (train.compile), or eager

    def compile_blocks(self, enabled: bool = True, **options) -> None:
        """torch.compile each block (train.compile), not the whole walk: the walk's loop count
        is a Python int that would recompile per value (and hit the recompile limit with
        sampled loop counts), while a block's graph does not depend on it. Every walk that
        runs blocks over whole sequences uses it (the forward, the traced walk of
        supervision=every and truncated backpropagation, validation); decoding with a cache
        and the attention hooks of parallel looping's core blocks run eager. `options` go to
        torch.compile (e.g. backend); enabled=False returns to eager."""
        if enabled:
            torch._dynamo.reset()  # each run starts with the whole recompile budget
        self.dense = torch.compile(dense_block, **options) if enabled else None

    @property
    def walk(self):
        """The module that walks this plan: its loop mode's (single-pass plans walk serially)."""
        return LOOP_MODES[self.plan.loop_mode] if self.plan.looped else serial

    # ------------------------------------------------------------------ pieces of the walk
    def new_carry(self) -> Carry | None:
        """The restore carry of one single-pass walk (None unless model.resize=restore)."""
        return Carry() if self.plan.resize == "restore" and not self.plan.looped else None

    def move(self, h: torch.Tensor, a: int, b: int, carry: Carry | None = None) -> torch.Tensor:
        key = _key(a, b)
        if key not in self.resizers:
            return h
        if carry is not None:
            return carry.take(h, self.plan.width_of(b))
        return self.resizers[key](h)

    def embed_tokens(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        if self.pos is None:
            return self.embed(x)  # (B, T, C0); rotary positions act inside attention
        T = x.shape[1]
        if offset + T > self.max_len:
            raise ValueError(f"sequence of {offset + T} tokens exceeds max_len={self.max_len}")
        pos = torch.arange(offset, offset + T, device=x.device)
        return self.embed(x) + self.pos(pos)  # (B, T, C0)

    def run_blocks(self, h: torch.Tensor, prev: int, blocks: tuple[int, ...], caches=None,
                   carry: Carry | None = None, pos: int = 0):
        """Run `blocks` on h (entered from block `prev`); h's first position is `pos`."""
        for b in blocks:
            h = self.move(h, prev, b, carry)
            if self.dense is not None and caches is None and pos == 0:
                h = self.dense(self.blocks[b], h)
            else:
                h = self.blocks[b](h, None if caches is None else caches.pop(0), pos=pos)
            prev = b
        return h, prev

    def logits_of(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(h))

    def readout_loop(self, h: torch.Tensor, prev: int) -> torch.Tensor:
        h, _ = self.run_blocks(h, prev, self.plan.coda)
        return self.logits_of(h)

    def readout_layer(self, h: torch.Tensor, prev: int, carry: Carry | None = None
                      ) -> torch.Tensor:
        # Logit lens: carry the state through the remaining width changes, skip the blocks.
        order = self.plan.order()
        i = order.index(prev) if prev != EMBED else -1
        carry = carry.fork() if carry is not None else None
        for b in order[i + 1 :]:
            h = self.move(h, prev, b, carry)
            prev = b
        return self.logits_of(h)

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
        r = self.plan.loops if loops is None else loops
        return self.walk.trace(self, x, r, keep, bptt)

    def loop_input(self, h: torch.Tensor, i: int, e: torch.Tensor, e_src: int,
                   shift: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The input of loop i (0-based) of the core, at the core's input width.

        Loop 0 takes the prelude output e (from block e_src). A later loop takes the previous
        loop's output h, shifted one position to the right when `shift` is given (parallel
        looping), plus e when it is injected (model.injection=add; always with the shift).
        """
        core0 = self.plan.core[0]
        if i == 0:
            return self.move(e, e_src, core0)
        u = self.move(h, self.plan.core[-1], core0)
        if shift is not None:
            u = shift(u)
        if shift is not None or self.plan.injection == "add":
            u = u + self.move(e, e_src, core0)
        return u

    def record_loop(self, out: StackOutput, h: torch.Tensor, prev: int, keep: bool,
                     grad: bool) -> None:
        if keep:
            out.states.append(h)
            out.readouts.append(self.readout_loop(h, prev))
            out.grad.append(grad)

    def finish(self, out: StackOutput, h: torch.Tensor, prev: int, keep: bool) -> StackOutput:
        """Logits after the last loop: the last readout, or the coda, norm and head."""
        if keep:
            out.logits = out.readouts[-1]
        else:
            h, _ = self.run_blocks(h, prev, self.plan.coda)
            out.logits = self.logits_of(h)
        return out

    # ------------------------------------------------------------------ adaptive exit
    @torch.no_grad()
    def adaptive(self, x: torch.Tensor, threshold: float, max_loops: int | None = None,
                 criterion: str = "update_norm") -> tuple[torch.Tensor, torch.Tensor]:
        """Loop until each token (causal) or sequence (bidirectional) converges.

        After loop i (i = 1..max_loops) the criterion compares loop i with loop i-1, where
        "loop 0" is the state entering the first loop and its readout:

        - ``update_norm``: ||h_i - h_{i-1}|| / ||h_{i-1}|| over the channels of a token (causal)
          or over all of a sequence's positions and channels (bidirectional);
        - ``kl``: KL(p_i || p_{i-1}) between successive readouts, per token (causal) or its
          mean over the sequence's positions (bidirectional).

        A token / sequence exits after loop i when its criterion is below `threshold` (strict,
        so threshold 0 never exits early and runs max_loops loops), or at max_loops. From then
        on its state is frozen (copied to later loops, where the other tokens still attend to
        it, as halted positions in the Universal Transformer's ACT) and its logits are its
        readout after loop i. Where the first and last core blocks differ in width, loop 1 has
        no comparable loop 0 and nothing exits before loop 2. Every loop here computes all
        positions; loops_used is what an implementation that skips exited positions would run.

        Returns (logits (B, T, V), loops_used (B, T) for causal tasks or (B,) otherwise).
        Serial mode only: in parallel mode the loops of a token are not successive steps of
        one state (loop l+1 at t continues loop l at t-1) and at decode time they all run in
        one batched pass, so there is nothing to stop early.
        """
        plan = self.plan
        if not plan.looped:
            raise ValueError("adaptive exit needs a looped plan (model.family=looped).")
        if plan.loop_mode != "serial":
            raise ValueError(
                "adaptive exit needs model.loop_mode=serial: in parallel mode loop l+1 of a "
                "token continues loop l of the previous token, and all loops of a token run "
                "in one batched pass, so no token can stop early."
            )
        if criterion not in ("update_norm", "kl"):
            raise ValueError(f"unknown exit criterion '{criterion}'; valid: update_norm, kl.")
        n = plan.loops if max_loops is None else max_loops
        if n < 1:
            raise ValueError(f"max_loops must be at least 1, got {n}.")
        core0, core1 = plan.core[0], plan.core[-1]
        B, T = x.shape
        per_token = self.causal
        h, prev = self.run_blocks(self.embed_tokens(x), EMBED, plan.prelude)
        e, e_src = h, prev
        h = self.move(h, prev, core0)
        comparable = self.plan.widths[core0] == self.plan.widths[core1]
        active = torch.ones((B, T) if per_token else (B,), dtype=torch.bool, device=x.device)
        used = torch.full(active.shape, n, dtype=torch.long, device=x.device)
        logp = None
        if criterion == "kl" and comparable:
            logp = F.log_softmax(self.readout_loop(h, core1).float(), -1)
        logits = None
        for i in range(1, n + 1):
            u = h if i == 1 else self.loop_input(h, i - 1, e, e_src)
            new, _ = self.run_blocks(u, core0, plan.core)
            sel = active[:, :, None] if per_token else active[:, None, None]
            last, h = h, (new if i == 1 else torch.where(sel, new, h))
            readout = self.readout_loop(h, core1)
            logits = readout if logits is None else torch.where(sel, readout, logits)
            if i == n:
                break
            if criterion == "update_norm":
                if i == 1 and not comparable:
                    c = torch.full(active.shape, float("inf"), device=x.device)
                else:
                    d, a = (h - last).float(), last.float()
                    if per_token:
                        c = d.norm(dim=-1) / a.norm(dim=-1).clamp_min(1e-12)
                    else:
                        c = d.flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1).clamp_min(1e-12)
            else:
                new_logp = F.log_softmax(readout.float(), -1)
                if logp is None:
                    c = torch.full(active.shape, float("inf"), device=x.device)
                else:
                    kl = (new_logp.exp() * (new_logp - logp)).sum(-1)  # (B, T)
                    c = kl if per_token else kl.mean(1)
                logp = new_logp
            stop = active & (c < threshold)
            used[stop] = i
            active = active & ~stop
            if not active.any():
                break
        assert logits is not None
        return logits, used

    # ------------------------------------------------------------------ decoding
    def new_cache(self, loops: int | None = None) -> list:
        """The decode cache of this plan at `loops` loops (see the loop mode's walk)."""
        return self.walk.new_cache(self, self.plan.loops if loops is None else loops)

    @torch.no_grad()
    def decode_step(self, x: torch.Tensor, offset: int, cache: list,
                    loops: int | None = None) -> torch.Tensor:
        """Logits for the new tokens x (B, t) at positions offset.., extending `cache`."""
        return self.walk.decode(self, x, offset, cache, self.plan.loops if loops is None else loops)


def _key(a: int, b: int) -> str:
    return f"{'e' if a == EMBED else a}_{b}"


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear | nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
