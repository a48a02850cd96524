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

Loop modes. ``plan.loop_mode="serial"`` runs the loops one after another for every token;
``"parallel"`` is the Parallel Loop Transformer (cross-loop shift, shared KV, gated
sliding-window attention; equations in :mod:`lab.model.parallel`), with its own training
walk and decode cache behind the same entry points (``forward``, ``trace``, ``new_cache``,
``decode_step``). :meth:`Stack.adaptive` runs a serial looped stack with a per-token (causal)
or per-sequence (bidirectional) adaptive exit, for evaluation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lab.errors import ConfigError
from lab.model import parallel as par
from lab.model.plan import EMBED, StackPlan

# attend(q, k, v, dropout_p) -> y, all (B, nh, T, hs): replaces a block's self-attention.
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


class Block(nn.Module):
    def __init__(self, width: int, hidden: int, n_heads: int, causal: bool, dropout: float = 0.0,
                 gated: bool = False):
        super().__init__()
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, hidden, bias=False)
        self.out = nn.Linear(hidden, width, bias=False)
        # G-SWA gate of a core block in parallel mode (lab.model.parallel).
        self.gate = par.Gate(n_heads, width // n_heads) if gated else None

    def attention(self, x: torch.Tensor, cache: KVCache | None = None,
                  attend: Attend | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, nh, T, hs)
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
                attend: Attend | None = None) -> torch.Tensor:
        x = x + F.dropout(self.attention(self.ln1(x), cache, attend), self.dropout, self.training)
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
        if plan.looped and plan.loop_mode == "parallel" and not causal:
            raise ConfigError(
                "model.loop_mode",
                "'parallel' needs a causal task: the cross-loop shift feeds loop l+1 at "
                "position t with loop l at t-1, which only makes sense left to right.",
            )
        self.plan, self.causal, self.max_len = plan, causal, max_len
        self.embed = nn.Embedding(vocab_size, plan.embed_width)
        self.pos = nn.Embedding(max_len, plan.embed_width)
        self.blocks = nn.ModuleList(
            Block(w, h, plan.n_heads, causal, dropout, gated=plan.gated and i in plan.core)
            for i, (w, h) in enumerate(zip(plan.widths, plan.hidden, strict=True))
        )
        self.resizers = nn.ModuleDict(
            {_key(a, b): Resize(plan.width_of(a), plan.width_of(b), plan.resize)
             for a, b in plan.resized_transitions()}
        )
        self.norm = nn.LayerNorm(plan.out_width)
        self.head = nn.Linear(plan.out_width, vocab_size, bias=False)
        self.apply(_init)
        for b in self.blocks:
            if b.gate is not None:
                nn.init.normal_(b.gate.weight, std=0.02)

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
        if plan.looped and plan.loop_mode == "parallel":
            return self._trace_parallel(x, r, keep, bptt)
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
                self._record_loop(out, h, prev, keep, i >= free)
        return self._finish(out, h, prev, keep)

    def _record_loop(self, out: StackOutput, h: torch.Tensor, prev: int, keep: bool,
                     grad: bool) -> None:
        if keep:
            out.states.append(h)
            out.readouts.append(self._readout_loop(h, prev))
            out.grad.append(grad)

    def _finish(self, out: StackOutput, h: torch.Tensor, prev: int, keep: bool) -> StackOutput:
        """Logits after the last loop: the last readout, or the coda, norm and head."""
        if keep:
            out.logits = out.readouts[-1]
        else:
            h, _ = self._run(h, prev, self.plan.coda)
            out.logits = self._head(h)
        return out

    def _trace_parallel(self, x: torch.Tensor, r: int, keep: bool,
                        bptt: int | None) -> StackOutput:
        """The training walk of parallel looping (lab.model.parallel)."""
        plan, spec = self.plan, self.plan.parallel
        core0, core1 = plan.core[0], plan.core[-1]
        out = StackOutput(logits=None)  # type: ignore[arg-type]
        h = self._embed(x)
        h, prev = self._run(h, EMBED, plan.prelude)
        e = self._move(h, prev, core0)  # e_t: the input of loop 1
        first: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # loop 1's k, v per block
        free = r - (bptt if bptt is not None else r)  # loops run without gradient
        for i in range(r):
            ctx = torch.no_grad() if i < free and torch.is_grad_enabled() else contextlib.nullcontext()
            with ctx:
                if i == 0:
                    u = e
                    if keep:
                        out.states.append(e)
                else:
                    u = self._move(h, core1, core0)
                    if spec.shift:  # u^{l+1}_t = h^l_{t-1} + e_t, h^l_{-1} = 0
                        u = F.pad(u, (0, 0, 1, 0))[:, :-1]
                    if spec.shift or plan.injection == "add":
                        u = u + e
                h, prev = u, core0
                for b in plan.core:
                    h = self._move(h, prev, b)
                    h = self.blocks[b](h, attend=self._train_attend(b, i, first))
                    prev = b
                self._record_loop(out, h, prev, keep, i >= free)
        return self._finish(out, h, core1, keep)

    def _train_attend(self, b: int, i: int, first: dict) -> Attend:
        block, spec = self.blocks[b], self.plan.parallel
        if i == 0:  # loop 1: plain causal self-attention; remember its keys and values
            def attend(q, k, v, p):
                first[b] = (k, v)
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            def attend(q, k, v, p):
                k1, v1 = first[b]
                return par.later_loop_attention(q, k, v, k1, v1, block.gate, spec.shared_kv,
                                                spec.gswa, spec.window, p)
        return attend

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
        h, prev = self._run(self._embed(x), EMBED, plan.prelude)
        e, e_src = h, prev
        h = self._move(h, prev, core0)
        comparable = self.plan.widths[core0] == self.plan.widths[core1]
        active = torch.ones((B, T) if per_token else (B,), dtype=torch.bool, device=x.device)
        used = torch.full(active.shape, n, dtype=torch.long, device=x.device)
        logp = None
        if criterion == "kl" and comparable:
            logp = F.log_softmax(self._readout_loop(h, core1).float(), -1)
        logits = None
        for i in range(1, n + 1):
            u = h if i == 1 else self._move(h, core1, core0)
            if i > 1 and plan.injection == "add":
                u = u + self._move(e, e_src, core0)
            new, _ = self._run(u, core0, plan.core)
            sel = active[:, :, None] if per_token else active[:, None, None]
            last, h = h, (new if i == 1 else torch.where(sel, new, h))
            readout = self._readout_loop(h, core1)
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
        """One KV cache per executed block: serial looping keeps one per pass. Parallel looping
        keeps one per prelude / coda block and one :class:`lab.model.parallel.LoopKV` per core
        block (the first loop's keys and values plus the later loops' windows)."""
        plan = self.plan
        if plan.looped and plan.loop_mode == "parallel":
            r = plan.loops if loops is None else loops
            spec = plan.parallel
            core = [par.LoopKV.make(r, spec.shared_kv, spec.gswa, spec.window) for _ in plan.core]
            return par.ParallelCache(
                [*(KVCache() for _ in plan.prelude), *core, *(KVCache() for _ in plan.coda)], r
            )
        return [KVCache() for _ in plan.order(loops)]

    @torch.no_grad()
    def decode_step(self, x: torch.Tensor, offset: int, cache: list,
                    loops: int | None = None) -> torch.Tensor:
        """Logits for the new tokens x (B, t) at positions offset.., extending `cache`."""
        plan = self.plan
        r = plan.loops if loops is None else loops
        if plan.looped and plan.loop_mode == "parallel":
            return self._decode_parallel(x, offset, cache, r)
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

    def _decode_parallel(self, x: torch.Tensor, offset: int, cache: list,
                         r: int) -> torch.Tensor:
        """Parallel-mode decoding. A single new token with the cross-loop shift runs all r
        loops as one batch of r rows through the core; a longer chunk (or no shift) runs the
        loops one after another over the chunk. Both give the training forward's outputs."""
        plan, spec = self.plan, self.plan.parallel
        core0, core1 = plan.core[0], plan.core[-1]
        if not isinstance(cache, par.ParallelCache) or cache.loops != r:
            raise ValueError(f"decode_step needs the cache of new_cache({r}) in parallel mode.")
        B, T = x.shape
        queue = list(cache)
        h = self._embed(x, offset)
        h, prev = self._run(h, EMBED, plan.prelude, queue)
        e = self._move(h, prev, core0)
        kv = [queue.pop(0) for _ in plan.core]
        if spec.shift and cache.carry is None:
            cache.carry = [torch.zeros_like(e[:, :1]) for _ in range(r - 1)]
        q_pos = torch.arange(offset, offset + T, device=x.device)
        if spec.shift and T == 1 and r > 1:
            # Loop 1 of this token and loops 2..r fed by the previous token's loops 1..r-1.
            assert cache.carry is not None
            hb = torch.cat([e, *(c + e for c in cache.carry)], 0)  # (r*B, 1, C)
            prev = core0
            for j, b in enumerate(plan.core):
                hb = self._move(hb, prev, b)
                hb = self.blocks[b](hb, attend=self._batched_attend(b, kv[j], r, offset))
                prev = b
            outs = hb.split(B)
            cache.carry = [self._move(o, core1, core0) for o in outs[:-1]]
            h = outs[-1]
        else:
            for i in range(r):
                if i == 0:
                    u = e
                else:
                    u = self._move(h, core1, core0)
                    if spec.shift:
                        assert cache.carry is not None
                        u, cache.carry[i - 1] = (torch.cat([cache.carry[i - 1], u[:, :-1]], 1),
                                                 u[:, -1:])
                    if spec.shift or plan.injection == "add":
                        u = u + e
                h, prev = u, core0
                for j, b in enumerate(plan.core):
                    h = self._move(h, prev, b)
                    h = self.blocks[b](h, attend=self._cached_attend(b, kv[j], i, q_pos))
                    prev = b
        h, prev = self._run(h, core1, plan.coda, queue)
        return self._head(h)

    def _cached_attend(self, b: int, kv: par.LoopKV, i: int, q_pos: torch.Tensor) -> Attend:
        """Attention of loop i over a chunk of new positions q_pos, with the block's cache."""
        block, spec = self.blocks[b], self.plan.parallel
        end = int(q_pos[-1]) + 1

        def attend(q, k, v, p):
            if i == 0:
                k1, v1 = kv.first.extend(k, v)
                return par.cached_attention(q, q_pos, k1, v1, end)
            own = kv.later[i - 1]
            ko = vo = None
            if own is not None:
                ko, vo = own.extend(k, v)
            if spec.shared_kv:  # loop 1 already stored this chunk
                assert kv.first.k is not None and kv.first.v is not None
                y = par.cached_attention(q, q_pos, kv.first.k, kv.first.v, end)
            else:
                y = par.cached_attention(q, q_pos, ko, vo, end)
            if not spec.gswa:
                return y
            yw = par.cached_attention(q, q_pos, ko, vo, end, spec.window)
            return par.mix(block.gate, q, y, yw)

        return attend

    def _batched_attend(self, b: int, kv: par.LoopKV, r: int, offset: int) -> Attend:
        """Attention of one new token's r loops, stacked along the batch (loop-major)."""
        block, spec, W = self.blocks[b], self.plan.parallel, self.plan.parallel.window

        def attend(q, k, v, p):
            q, k, v = (t.unflatten(0, (r, -1)) for t in (q, k, v))  # (r, B, nh, 1, hs)
            k1, v1 = kv.first.extend(k[0], v[0])
            y0 = F.scaled_dot_product_attention(q[0], k1, v1)  # sees every cached position
            qs = q[1:]
            own = [c.extend(k[i], v[i]) if c is not None else None
                   for i, c in enumerate(kv.later, start=1)]
            if spec.shared_kv:
                # All later loops query the first loop's keys: r-1 queries per head, one call.
                qg = qs.squeeze(3).permute(1, 2, 0, 3)  # (B, nh, r-1, hs)
                yg = F.scaled_dot_product_attention(qg, k1, v1).permute(2, 0, 1, 3).unsqueeze(3)
            else:
                yg = torch.stack([F.scaled_dot_product_attention(qs[i], *own[i])  # type: ignore[misc]
                                  for i in range(r - 1)])
            if spec.gswa:
                # Every later loop has seen the same positions: its last W keys, one call.
                kw = torch.cat([o[0][:, :, -W:] for o in own])  # type: ignore[index]
                vw = torch.cat([o[1][:, :, -W:] for o in own])  # type: ignore[index]
                qf = qs.flatten(0, 1)
                yw = F.scaled_dot_product_attention(qf, kw, vw)
                yg = par.mix(block.gate, qf, yg.flatten(0, 1), yw).unflatten(0, (r - 1, -1))
            return torch.cat([y0[None], yg]).flatten(0, 1)

        return attend


def _key(a: int, b: int) -> str:
    return f"{'e' if a == EMBED else a}_{b}"


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear | nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
