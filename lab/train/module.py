"""The LightningModule every model and task runs in, and its callbacks."""

from __future__ import annotations

import math
import time

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from lab.config import LabConfig, run_seed
from lab.eval.adaptive import exit_settings
from lab.eval.metrics import Accuracy, Diagnostics
from lab.model import StackPlan, build_model
from lab.tasks import IGNORE, Task, accuracy_by_difficulty, has_difficulty, largest_solved, merge_counts
from lab.train.data import EVAL_SPLITS, mix
from lab.train.optim import build_optimizer


def difficulty_metrics(split: str, counts: dict[int, tuple[int, int]],
                       threshold: float) -> dict[str, float]:
    """Accuracy per difficulty value, the largest value solved (0 when none is) and the
    normalized area under accuracy-vs-difficulty (the mean accuracy over the values)."""
    acc = {k: c / n for k, (c, n) in counts.items() if n}
    out = {f"{split}/acc_by_difficulty/{k}": a for k, a in acc.items()}
    out[f"{split}/solved_difficulty"] = float(largest_solved(counts, threshold) or 0)
    out[f"{split}/auc_difficulty"] = sum(acc.values()) / len(acc)
    return out


class Diverged(RuntimeError):
    """Training loss became NaN or infinite."""


def sample_loops(cfg: LabConfig, step: int) -> int:
    """Loop count for one training step: fixed, or drawn from (seed, step)."""
    m = cfg.model
    if m.loop_sampling == "fixed":
        return m.loops
    lo, hi = m.loops_range if m.loops_range is not None else (1, 2 * m.loops)
    g = torch.Generator().manual_seed(mix(run_seed(cfg), step, 0x100F5))
    if m.loop_sampling == "uniform":
        return int(torch.randint(lo, hi + 1, (1,), generator=g))
    r = int(torch.poisson(torch.tensor([float(m.loops)]), generator=g))
    return min(max(r, lo), hi)


class LabModule(pl.LightningModule):
    def __init__(self, cfg: LabConfig, task: Task, plan: StackPlan,
                 splits: tuple[str, ...] = EVAL_SPLITS):
        super().__init__()
        self.cfg, self.task, self.plan = cfg, task, plan
        self.model = build_model(cfg, task, plan)
        self.eval_loops = cfg.model.eval_loops or cfg.model.loops
        self.splits = tuple(splits)  # one validation dataloader per split, in this order
        # Byte-level tasks: bits per byte, and the loss by position in the window.
        self.bytes = bool(getattr(task, "tokens_are_bytes", False))
        self.acc = {s: Accuracy(by_position=self.bytes) for s in self.splits}
        # Tasks with difficulty labels: {difficulty: (correct, count)} per split.
        self.graded = has_difficulty(task)
        self.by_difficulty: dict[str, dict[int, tuple[int, int]]] = {s: {} for s in self.splits}
        self.loops_used = {s: [0, 0] for s in self.splits}  # adaptive exit: sum, count
        self.diag = Diagnostics()
        self.final: dict[str, float] = {}
        self.last_loss: float | None = None  # the latest logged training loss, for the bar
        # Metrics at every validation step (diagnostics excluded): the learning curve.
        self.history: list[dict[str, float]] = []
        m = cfg.model
        self._traced = m.supervision == "every" or m.bptt_loops is not None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lab_history"] = list(self.history)  # a resumed run keeps its curve

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("lab_history", []))

    def on_train_start(self) -> None:
        # Set each group's learning rate from this run's schedule at the step it starts from.
        # A no-op for a new run or an ordinary resume; a budget branch (lab.train.budgets)
        # resumes a longer run's checkpoint, whose optimizer holds that run's rate.
        sched = self.lr_schedulers()
        if sched is None:
            return
        for group, base, f in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas,
                                  strict=True):
            group["lr"] = base * f(sched.last_epoch)

    def configure_optimizers(self):
        opt, sched = build_optimizer(self.parameters(), self.cfg)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def loss(self, x: torch.Tensor, y: torch.Tensor, loops: int) -> torch.Tensor:
        if not self._traced:
            logits = self.model(x, loops)
            return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
        m = self.cfg.model
        bptt = None if m.bptt_loops is None else min(m.bptt_loops, loops)
        out = self.model.trace(x, loops, keep=m.supervision == "every", bptt=bptt)
        if m.supervision == "final":
            return F.cross_entropy(out.logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
        losses = [F.cross_entropy(lg.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
                  for lg, g in zip(out.readouts, out.grad, strict=True) if g]
        return torch.stack(losses).mean()

    def training_step(self, batch, batch_idx):
        x, y = batch
        step = self.global_step
        loss = self.loss(x, y, sample_loops(self.cfg, step))
        if (step + 1) % self.cfg.train.log_every == 0 or step == 0:
            value = float(loss.detach())  # a host-device sync, every log_every steps only
            if not math.isfinite(value):
                raise Diverged(f"training loss is {value} at step {step}")
            # Not a progress-bar metric: Lightning would read it back (.item()) at every step;
            # the bar shows last_loss instead.
            self.last_loss = value
            self.log("train/loss", value, on_step=True)
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)
        return loss

    # -------------------------------------------------------------- validation
    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch
        split = self.splits[dataloader_idx]
        if split == self.splits[0] and self.cfg.eval.diagnostics:
            out = self.model.trace(x, self.eval_loops, keep=True)
            self.diag.update(out, y)
            logits = out.logits
        else:
            logits = self.model(x, self.eval_loops)
        if self.cfg.model.exit != "none":
            criterion, threshold, max_loops = exit_settings(self.cfg)
            logits, used = self.model.adaptive(x, threshold, max_loops, criterion)
            mask = y != IGNORE if used.dim() == 2 else torch.ones_like(used, dtype=torch.bool)
            self.loops_used[split][0] += int(used[mask].sum())
            self.loops_used[split][1] += int(mask.sum())
        self.acc[split].update(logits, y)
        if self.graded:
            self.by_difficulty[split] = merge_counts(
                self.by_difficulty[split], accuracy_by_difficulty(logits, y, self.task.difficulty(x)))

    def gather_counts(self) -> None:
        """On several devices, add up every process's counts (each validated its own share
        of every split), so every process computes the metrics of the whole sets."""
        import torch.distributed as dist

        for a in self.acc.values():  # pickled below: keep it on the host
            a.pos_loss = None if a.pos_loss is None else a.pos_loss.cpu()
            a.pos_count = None if a.pos_count is None else a.pos_count.cpu()
        mine = (self.acc, self.by_difficulty, self.loops_used, self.diag)
        parts: list = [None] * self.trainer.world_size
        dist.all_gather_object(parts, mine)
        self.acc = {s: Accuracy(by_position=self.bytes) for s in self.splits}
        self.by_difficulty = {s: {} for s in self.splits}
        self.loops_used = {s: [0, 0] for s in self.splits}
        self.diag = Diagnostics()
        for acc, by_difficulty, loops_used, diag in parts:
            for s in self.splits:
                self.acc[s].merge(acc[s])
                self.by_difficulty[s] = merge_counts(self.by_difficulty[s], by_difficulty[s])
                self.loops_used[s] = [a + b for a, b in zip(self.loops_used[s], loops_used[s],
                                                            strict=True)]
            self.diag.merge(diag)

    def on_validation_epoch_end(self):
        if self.trainer.world_size > 1:
            self.gather_counts()
        metrics = {}
        for split, acc in self.acc.items():
            if acc.tokens:
                metrics.update({f"{split}/{k}": v for k, v in acc.compute().items()})
                if self.bytes:
                    metrics[f"{split}/bpb"] = metrics[f"{split}/loss"] / math.log(2)
            if self.by_difficulty[split]:
                metrics.update(difficulty_metrics(split, self.by_difficulty[split],
                                                  self.cfg.eval.solve_threshold))
                self.by_difficulty[split] = {}
            acc.reset()
            total, count = self.loops_used[split]
            if count:
                metrics[f"{split}/mean_loops"] = total / count
            self.loops_used[split] = [0, 0]
        if self.cfg.eval.diagnostics:
            metrics.update({f"diag/{k}": v for k, v in self.diag.compute().items()})
            self.diag.reset()
        if self.trainer.sanity_checking:
            return
        for k, v in metrics.items():
            self.log(k, v, add_dataloader_idx=False, prog_bar=k == "val/acc_token")
        self.final = metrics
        self.history.append({"step": self.global_step,
                             **{k: v for k, v in metrics.items() if not k.startswith("diag/")}})


class Throughput(Callback):
    """Training tokens per second over each logging interval (validation time excluded)."""

    def __init__(self, tokens_per_step: int, every: int):
        self.tokens, self.every = tokens_per_step, every
        self.t0: float | None = None
        self.steps = 0
        self.total_time = 0.0
        self.total_steps = 0
        self.start_step = 0

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step  # > 0 when resumed from a checkpoint

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps += 1
        if self.steps >= self.every and self.t0 is not None:
            dt = time.perf_counter() - self.t0
            self.total_time += dt
            self.total_steps += self.steps
            pl_module.log("train/tokens_per_s", self.steps * self.tokens / dt, on_step=True)
            self.steps, self.t0 = 0, None

    def on_validation_start(self, trainer, pl_module):
        if self.t0 is not None:  # pause the clock during validation
            self.total_time += time.perf_counter() - self.t0
            self.total_steps += self.steps
            self.steps, self.t0 = 0, None

    @property
    def tokens_per_s(self) -> float | None:
        if not self.total_time:
            return None
        return self.total_steps * self.tokens / self.total_time
