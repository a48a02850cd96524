"""Evaluation metrics and per-loop diagnostics, computed on evaluation batches only.

For a batch and a traced forward pass (:meth:`lab.model.stack.Stack.trace`):

- readout accuracy / loss after every loop (looped) or layer (single-pass), index i = 1..n;
- relative update norm  ||h_i - h_{i-1}|| / ||h_{i-1}||  per token, i = 1..n, where h_0 is
  the state entering the first loop (looped) or the embedding (single-pass); skipped where
  the width changes between boundaries;
- cosine between successive updates (h_i - h_{i-1}) and (h_{i-1} - h_{i-2}), i = 2..n;
  negative means the state oscillates;
- looped plans, the update split into its two parts: the loop's input u_i is the previous
  loop's output plus whatever the walk adds before the loop (the injected prelude output with
  model.injection=add, and the shift in parallel mode), so
  h_i - h_{i-1} = (h_i - u_i) + (u_i - h_{i-1}). The block's own part, ``block_norm/i`` =
  ||h_i - u_i|| / ||u_i|| (i = 1..n), and ``block_cos/i``, the cosine between the block's
  successive contributions (i = 2..n), measure the looped block alone; ``inject_norm/i`` =
  ||u_i - h_{i-1}|| / ||h_{i-1}|| (i = 2..n) is what entered from outside it. With injection
  the total update of loop i contains the prelude output, so ``update_norm`` and
  ``update_cos`` describe the injection as much as the block;
- readout drift KL(p_i || p_{i-1}) between successive readouts, i = 2..n, over labelled
  positions.

All are means over tokens (update norms and cosines over every position, the rest over
positions with a target), accumulated exactly over batches.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F

from lab.eval.device import device_of
from lab.model.stack import StackOutput
from lab.tasks import IGNORE

EVAL_BATCH = 256  # evaluation batch size: memory only, results do not depend on it


class Accuracy:
    """Token and sequence accuracy and mean loss over labelled positions.

    by_position: also accumulate the loss at each position of the sequence, reported in four
    equal bands of the window (``loss_pos/1`` = first quarter ... ``loss_pos/4``), for tasks
    where the question is whether depth helps more late in the context.
    """

    def __init__(self, by_position: bool = False):
        self.by_position = by_position
        self.reset()

    def reset(self):
        self.correct = self.tokens = self.seq_correct = self.seqs = 0
        self.loss = 0.0
        self.pos_loss: torch.Tensor | None = None
        self.pos_count: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        mask = y != IGNORE
        pred = logits.argmax(-1)
        hit = (pred == y) & mask
        self.correct += int(hit.sum())
        self.tokens += int(mask.sum())
        has = mask.any(1)
        self.seq_correct += int(((hit | ~mask).all(1) & has).sum())
        self.seqs += int(has.sum())
        if not self.by_position:
            self.loss += float(
                F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE,
                                reduction="sum")
            )
            return
        per = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE,
                              reduction="none").view(y.shape)  # (B, T), 0 where ignored
        self.loss += float(per.sum())
        sums, counts = per.sum(0).double(), mask.sum(0)
        self.pos_loss = sums if self.pos_loss is None else self.pos_loss + sums
        self.pos_count = counts if self.pos_count is None else self.pos_count + counts

    def merge(self, other: Accuracy) -> None:
        """Add another accumulator's counts (another process's share of the same set)."""
        self.correct += other.correct
        self.tokens += other.tokens
        self.seq_correct += other.seq_correct
        self.seqs += other.seqs
        self.loss += other.loss
        if other.pos_loss is not None and other.pos_count is not None:
            pl, pc = other.pos_loss.to("cpu"), other.pos_count.to("cpu")
            self.pos_loss = pl if self.pos_loss is None else self.pos_loss.to("cpu") + pl
            self.pos_count = pc if self.pos_count is None else self.pos_count.to("cpu") + pc

    def compute(self) -> dict[str, float]:
        out = {
            "acc_token": self.correct / max(self.tokens, 1),
            "acc_seq": self.seq_correct / max(self.seqs, 1),
            "loss": self.loss / max(self.tokens, 1),
        }
        if self.pos_loss is not None and self.pos_count is not None:
            for i, (s, c) in enumerate(zip(self.pos_loss.tensor_split(4),
                                           self.pos_count.tensor_split(4), strict=True), 1):
                if int(c.sum()):
                    out[f"loss_pos/{i}"] = float(s.sum()) / int(c.sum())
        return out


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, loops: int | None = None,
             batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """Accuracy and loss of `model` at `loops` loops over (x, y), in batches on the model's
    device."""
    device = device_of(model)
    acc = Accuracy()
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        acc.update(model(xb, loops), yb)
    return acc.compute()


class Diagnostics:
    def __init__(self):
        self.reset()

    def reset(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def merge(self, other: Diagnostics) -> None:
        """Add another accumulator's sums (another process's share of the same set)."""
        for k, v in other.sums.items():
            self.sums[k] += v
            self.counts[k] += other.counts[k]

    def _add(self, key: str, total: torch.Tensor, n: int) -> None:
        self.sums[key] += float(total)
        self.counts[key] += n

    @torch.no_grad()
    def update(self, out: StackOutput, y: torch.Tensor) -> None:
        mask = y != IGNORE
        n_lab = int(mask.sum())
        prev_logp = None
        for i, logits in enumerate(out.readouts, start=1):
            logits = logits.float()
            self._add(f"readout_acc/{i}", ((logits.argmax(-1) == y) & mask).sum(), n_lab)
            self._add(
                f"readout_loss/{i}",
                F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE,
                                reduction="sum"),
                n_lab,
            )
            logp = F.log_softmax(logits, -1)
            if prev_logp is not None:
                kl = (logp.exp() * (logp - prev_logp)).sum(-1)  # KL(p_i || p_{i-1}), (B, T)
                self._add(f"readout_kl/{i}", kl[mask].sum(), n_lab)
            prev_logp = logp
        updates: dict[str, torch.Tensor | None] = {"update": None, "block": None}
        for i in range(1, len(out.states)):
            a, b = out.states[i - 1].float(), out.states[i].float()
            self._update(i, "update", a, b, updates)
            if len(out.inputs) >= i:  # looped: the block's own part and the injected part
                u = out.inputs[i - 1].float()
                self._update(i, "block", u, b, updates)
                if i > 1 and u.shape == a.shape:
                    self._relative(f"inject_norm/{i}", u - a, a)

    def _relative(self, key: str, d: torch.Tensor, ref: torch.Tensor) -> None:
        """Mean over tokens of ||d|| / ||ref|| (both (B, T, C))."""
        rel = d.norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-12)
        self._add(key, rel.sum(), d.shape[0] * d.shape[1])

    def _update(self, i: int, name: str, a: torch.Tensor, b: torch.Tensor,
                updates: dict[str, torch.Tensor | None]) -> None:
        """`<name>_norm/i` of the update b - a relative to a, and `<name>_cos/i`, its cosine
        with the previous update of the same name; skipped where the width changes."""
        if a.shape != b.shape:
            updates[name] = None
            return
        d = b - a  # (B, T, C)
        self._relative(f"{name}_norm/{i}", d, a)
        prev = updates[name]
        if prev is not None and prev.shape == d.shape:
            c = F.cosine_similarity(d, prev, dim=-1, eps=1e-12)
            self._add(f"{name}_cos/{i}", c.sum(), d.shape[0] * d.shape[1])
        updates[name] = d

    def compute(self) -> dict[str, float]:
        return {k: self.sums[k] / max(self.counts[k], 1) for k in sorted(self.sums, key=_order)}


def _order(key: str) -> tuple[str, int]:
    name, _, i = key.partition("/")
    return name, int(i)
