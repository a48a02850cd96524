"""The Lightning harness: one LightningModule and one DataModule for every model and task.

Data is a pure function of (seed, step): batch s is drawn from a generator seeded with
(seed, s), so a resumed run sees exactly the batches it would have seen, and the same
config and seed give the same metrics at the same thread count.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lab import cost
from lab.config import LabConfig, flatten, to_dict
from lab.diagnostics import Accuracy, Diagnostics
from lab.errors import LabError
from lab.model import StackPlan, build_model, resolve
from lab.model.adaptive import exit_curve, exit_settings
from lab.provenance import provenance
from lab.tasks import IGNORE, Task, eval_set

EVAL_BATCH = 256
# Thresholds of the adaptive-exit curve recorded for every looped (serial) run; the last
# one is large enough that every token exits after one loop.
EXIT_THRESHOLDS = {
    "update_norm": [0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 1e9],
    "kl": [0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 1e9],
}


class Diverged(RuntimeError):
    """Training loss became NaN or infinite."""


def quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for msg in (
        ".*does not have many workers.*",
        ".*IterableDataset.*__len__.*",
        ".*The number of training batches.*",
        ".*Checkpoint directory .* exists and is not empty.*",
        ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
        ".*is an invalid version and will not be supported.*",
        ".*Found .* module\\(s\\) in eval mode at the start of training.*",
    ):
        warnings.filterwarnings("ignore", message=msg)


# --------------------------------------------------------------------------------------------
# Data


def _mix(*xs: int) -> int:
    """A 62-bit seed from integers (splitmix64 over the sequence)."""
    z = 0x9E3779B97F4A7C15
    for x in xs:
        z = (z ^ (x & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 31
    return z >> 2


class _Stream(IterableDataset):
    def __init__(self, task: Task, batch_size: int, seed: int, start: int):
        self.task, self.batch_size, self.seed, self.start = task, batch_size, seed, start

    def __iter__(self):
        g = torch.Generator()
        step = self.start
        while True:
            g.manual_seed(_mix(self.seed, step))
            yield self.task.sample(self.batch_size, g, "train")
            step += 1


class TaskData(pl.LightningDataModule):
    def __init__(self, task: Task, cfg: LabConfig):
        super().__init__()
        self.task, self.cfg = task, cfg
        self._eval: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def eval_set(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self._eval:
            self._eval[split] = eval_set(self.task, split, self.cfg.train.val_size)
        return self._eval[split]

    def train_dataloader(self):
        # Called after a checkpoint is restored, so a resumed run continues the stream.
        start = self.trainer.global_step if self.trainer is not None else 0
        return DataLoader(_Stream(self.task, self.cfg.train.batch_size, self.cfg.seed, start),
                          batch_size=None)

    def val_dataloader(self):
        return [DataLoader(TensorDataset(*self.eval_set(s)), batch_size=EVAL_BATCH)
                for s in ("val", "ood")]


# --------------------------------------------------------------------------------------------
# Module


def lr_lambda(cfg: LabConfig):
    t = cfg.train

    def f(step: int) -> float:
        if step < t.warmup:
            return (step + 1) / t.warmup
        if t.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - t.warmup) / max(1, t.steps - t.warmup))
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def sample_loops(cfg: LabConfig, step: int) -> int:
    """Loop count for one training step: fixed, or drawn from (seed, step)."""
    m = cfg.model
    if m.loop_sampling == "fixed":
        return m.loops
    lo, hi = m.loops_range if m.loops_range is not None else (1, 2 * m.loops)
    g = torch.Generator().manual_seed(_mix(cfg.seed, step, 0x100F5))
    if m.loop_sampling == "uniform":
        return int(torch.randint(lo, hi + 1, (1,), generator=g))
    r = int(torch.poisson(torch.tensor([float(m.loops)]), generator=g))
    return min(max(r, lo), hi)


class LabModule(pl.LightningModule):
    def __init__(self, cfg: LabConfig, task: Task, plan: StackPlan):
        super().__init__()
        self.cfg, self.task, self.plan = cfg, task, plan
        self.model = build_model(cfg, task, plan)
        self.eval_loops = cfg.model.eval_loops or cfg.model.loops
        self.acc = {s: Accuracy() for s in ("val", "ood")}
        self.loops_used = {s: [0, 0] for s in ("val", "ood")}  # adaptive exit: sum, count
        self.diag = Diagnostics()
        self.final: dict[str, float] = {}
        m = cfg.model
        self._traced = m.supervision == "every" or m.bptt_loops is not None

    def configure_optimizers(self):
        t = self.cfg.train
        decay = [p for p in self.parameters() if p.dim() >= 2]
        other = [p for p in self.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay},
             {"params": other, "weight_decay": 0.0}],
            lr=t.lr, betas=(0.9, 0.95),
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.cfg))
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
            value = float(loss.detach())
            if not math.isfinite(value):
                raise Diverged(f"training loss is {value} at step {step}")
            self.log("train/loss", value, on_step=True, prog_bar=True)
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)
        return loss

    # -------------------------------------------------------------- validation
    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch
        split = ("val", "ood")[dataloader_idx]
        if split == "val" and self.cfg.eval.diagnostics:
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

    def on_validation_epoch_end(self):
        metrics = {}
        for split, acc in self.acc.items():
            if acc.tokens:
                metrics.update({f"{split}/{k}": v for k, v in acc.compute().items()})
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


# --------------------------------------------------------------------------------------------
# Callbacks


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


# --------------------------------------------------------------------------------------------
# Running one training run


@dataclass
class RunResult:
    status: str  # "ok" | "diverged"
    run_dir: str
    metrics: dict[str, float] = field(default_factory=dict)
    costs: dict[str, Any] = field(default_factory=dict)
    extrapolation: dict[str, dict[int, float]] = field(default_factory=dict)
    adaptive: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    reason: str | None = None
    wall_time_s: float = 0.0
    steps: int = 0
    resumed_from_step: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _precision(t) -> str:
    if t.precision != "auto":
        return t.precision
    if torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def default_name(cfg: LabConfig) -> str:
    return cfg.name or f"{cfg.task['name'].split(':')[-1].lower()}-{cfg.model.family}"


def _latest_version(root: Path) -> str | None:
    if not root.is_dir():
        return None
    found = sorted(
        (p for p in root.iterdir() if (p / "checkpoints" / "last.ckpt").is_file()),
        key=lambda p: p.stat().st_mtime,
    )
    return found[-1].name if found else None


def plan_record(plan: StackPlan, cfg: LabConfig) -> dict:
    return {
        "description": plan.describe(),
        "widths": list(plan.widths),
        "hidden": list(plan.hidden),
        "order": list(plan.order()),
        "eval_order": list(plan.order(cfg.model.eval_loops or cfg.model.loops)),
        "d_model": cfg.model.d_model,
        "mlp_ratio": cfg.model.mlp_ratio,
    }


def check_resume_config(run_dir: Path, cfg: LabConfig) -> None:
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    old = flatten(yaml.safe_load(saved.read_text()) or {})
    new = flatten(to_dict(cfg))
    ignore = {"resume", "train.threads", "train.progress"}  # how it runs, not what it computes
    diff = sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))
    if diff:
        k = diff[0]
        raise LabError(
            f"cannot resume {run_dir}: its config differs from this one at '{k}' "
            f"(saved {old.get(k)!r}, now {new.get(k)!r}"
            + (f", and {len(diff) - 1} more keys" if len(diff) > 1 else "")
            + "). Resume with the same config, or drop resume=true to start a new run."
        )


def train(
    cfg: LabConfig,
    *,
    save_dir: str | None = None,
    name: str | None = None,
    version: str | None = None,
    callbacks: list[Callback] | None = None,
    progress: bool | None = None,
    hparams: dict[str, Any] | None = None,
) -> RunResult:
    """Train one run; write config, provenance, results and a TensorBoard run into its dir."""
    quiet_lightning()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(cfg.train.threads)
    cfg, task, plan = resolve(cfg)
    save_dir = save_dir or cfg.out_dir
    name = name if name is not None else default_name(cfg)
    resume_from = None
    if cfg.resume:
        found = version or _latest_version(Path(save_dir) / name)
        if found and (Path(save_dir) / name / found / "checkpoints" / "last.ckpt").is_file():
            version = found
            resume_from = "last"
    logger = TensorBoardLogger(save_dir=save_dir, name=name, version=version,
                               default_hp_metric=False)
    run_dir = Path(logger.log_dir)
    if resume_from:
        check_resume_config(run_dir, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (run_dir / "provenance.json").write_text(json.dumps(
        {**provenance(), "plan": plan_record(plan, cfg)}, indent=2))

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = LabModule(cfg, task, plan)
    if cfg.train.compile:
        module.model.compile()
    data = TaskData(task, cfg)
    t = cfg.train
    throughput = Throughput(t.batch_size * task.seq_len, t.log_every)
    cbs: list[Callback] = [throughput, *(callbacks or [])]
    cbs.append(ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="step{step}", save_last=True, save_top_k=0,
        every_n_train_steps=t.ckpt_every or None, auto_insert_metric_name=False,
    ))
    show = t.progress if progress is None else progress
    if show:
        cbs.append(RichProgressBar(refresh_rate=max(1, t.log_every // 5), leave=True))
    trainer = pl.Trainer(
        max_steps=t.steps,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        precision=_precision(t),
        deterministic=t.deterministic,
        logger=logger,
        callbacks=cbs,
        val_check_interval=t.val_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every,
        gradient_clip_val=t.grad_clip or None,
        enable_progress_bar=show,
        enable_model_summary=False,
        benchmark=False,
    )
    result = RunResult(status="ok", run_dir=str(run_dir), config=to_dict(cfg),
                       plan=plan_record(plan, cfg))
    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_from)
    except Diverged as e:
        result.status, result.reason = "diverged", str(e)
    result.wall_time_s = time.perf_counter() - t0
    result.steps = trainer.global_step
    if resume_from:
        result.resumed_from_step = throughput.start_step
    if result.status == "ok":
        if trainer.global_step % t.val_every or not module.final:
            trainer.validate(module, datamodule=data, verbose=False)
        result.metrics = dict(module.final)
        if not all(math.isfinite(v) for k, v in result.metrics.items() if k.endswith("loss")):
            result.status, result.reason = "diverged", "validation loss is not finite"
    model = module.model.float().cpu().eval()
    result.costs = cost.static_costs(model, plan, task, module.eval_loops)
    result.costs["train_tokens_per_s"] = throughput.tokens_per_s
    if result.status == "ok":
        if cfg.eval.cost:
            result.costs.update(cost.measured_costs(model, task, module.eval_loops, cfg))
        if plan.looped:
            result.extrapolation = extrapolate(model, task, data, cfg)
            _log_extrapolation(logger, result.extrapolation)
            if plan.loop_mode == "serial" and cfg.eval.diagnostics:
                result.adaptive = adaptive_curves(model, data, cfg)
    _log_hparams(logger, cfg, result, hparams)
    logger.finalize("success" if result.status == "ok" else "failed")
    (run_dir / "results.json").write_text(json.dumps(result.to_json(), indent=2, default=str))
    return result


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, loops: int | None = None) -> dict[str, float]:
    acc = Accuracy()
    for i in range(0, len(x), EVAL_BATCH):
        acc.update(model(x[i:i + EVAL_BATCH], loops), y[i:i + EVAL_BATCH])
    return acc.compute()


def extrapolation_loops(cfg: LabConfig) -> list[int]:
    if cfg.eval.extrapolate is not None:
        return sorted({int(r) for r in cfg.eval.extrapolate})
    return list(range(1, 2 * cfg.model.loops + 1))


def extrapolate(model, task: Task, data: TaskData, cfg: LabConfig) -> dict[str, dict[int, float]]:
    """Accuracy when a looped model runs r' loops at test time, for every r' asked for."""
    curves: dict[str, dict[int, float]] = {}
    for split in ("val", "ood"):
        x, y = data.eval_set(split)
        curves[split] = {r: evaluate(model, x, y, r)["acc_token"] for r in extrapolation_loops(cfg)}
    return curves


def adaptive_curves(model, data: TaskData, cfg: LabConfig) -> dict[str, list[dict[str, float]]]:
    """Accuracy vs mean loops used under adaptive exit, for a sweep of thresholds.

    With model.exit set, its criterion over model.exit_thresholds (or the defaults); else both
    criteria over their default thresholds. Up to the evaluation loop count.
    """
    criterion, _, max_loops = exit_settings(cfg)
    x, y = data.eval_set("val")
    if criterion != "none":
        plan = {criterion: cfg.eval.exit_thresholds or EXIT_THRESHOLDS[criterion]}
    else:
        plan = EXIT_THRESHOLDS
    return {c: exit_curve(model, x, y, thr, c, max_loops) for c, thr in plan.items()}


def _log_extrapolation(logger: TensorBoardLogger, curves: dict[str, dict[int, float]]) -> None:
    # The step axis is the loop count, so TensorBoard draws the extrapolation curve.
    for split, curve in curves.items():
        for r, acc in curve.items():
            logger.experiment.add_scalar(f"extrapolate/{split}_acc_token", acc, global_step=r)


def _log_hparams(logger, cfg: LabConfig, result: RunResult, extra: dict | None) -> None:
    hp = {k: (v if isinstance(v, int | float | str | bool) else str(v))
          for k, v in flatten(to_dict(cfg)).items()}
    hp.update(extra or {})
    metrics = {f"hp/{k.replace('/', '_')}": v for k, v in result.metrics.items()
               if not k.startswith("diag/")}
    for k in ("params", "effective_depth", "flops_per_token"):
        if result.costs.get(k) is not None:
            metrics[f"hp/{k}"] = float(result.costs[k])
    metrics["hp/diverged"] = float(result.status != "ok")
    with contextlib.suppress(Exception):
        logger.log_hyperparams(hp, metrics)
