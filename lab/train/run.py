"""Train one run: config in, a run directory with TensorBoard, config, provenance and results out."""

from __future__ import annotations

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
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lab.config import LabConfig, flatten, run_seed, to_dict
from lab.errors import LabError
from lab.eval import cost
from lab.eval.curves import adaptive_curves, extrapolate
from lab.eval.device import autocast
from lab.model import StackPlan, resolve
from lab.provenance import provenance
from lab.tasks import check_eval_room, task_record
from lab.train.budgets import (
    BranchPoints,
    branch_checkpoint,
    branches,
    budget_config,
    budget_key,
    load_done,
    save_done,
)
from lab.train.data import EVAL_SPLITS, TaskData
from lab.train.machine import check_machine, resolve_precision
from lab.train.module import Diverged, LabModule, Throughput
from lab.train.tensorboard import (
    FigureLogger,
    RunLogger,
    StepProgressBar,
    final_metrics,
    run_hparams,
)


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
        ".*callbacks used to create the checkpoint need to be provided.*",
        # Several devices: LabModule adds up every process's validation counts itself.
        ".*sync_dist=True.*when logging on epoch level in distributed setting.*",
    ):
        warnings.filterwarnings("ignore", message=msg)


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
    # Metrics at every validation step: [{"step": s, "val/acc_token": ..., ...}, ...].
    curve: list[dict[str, float]] = field(default_factory=list)
    # train.budgets: {fraction: {"steps", "branch_point", "metrics"}}, the full budget included
    # (lab.train.budgets); empty without budgets.
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    # How it ran: device, precision actually used, devices, torch.compile, fused AdamW.
    runtime: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


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


def joined_process() -> bool:
    """Whether this is one of the processes Lightning starts for a multi-device run besides
    the first (they carry LOCAL_RANK > 0)."""
    return os.environ.get("LOCAL_RANK", "0").strip() not in ("", "0")


def _newest_version(root: Path) -> str | None:
    found = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime) \
        if root.is_dir() else []
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


class CheckpointError(LabError):
    """A checkpoint to resume from that cannot be read (corrupt, truncated, or not weights)."""


def check_checkpoint(path: Path) -> None:
    """Read the checkpoint as weights only (tensors and plain containers: loading it cannot
    run code) before Lightning does, so a corrupt or tampered one fails with its reason."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"cannot resume from {path}: the checkpoint cannot be read as weights ({detail}). "
            "Delete it to start the run afresh."
        ) from None


def check_resume_config(run_dir: Path, cfg: LabConfig) -> None:
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    old = flatten(yaml.safe_load(saved.read_text()) or {})
    new = flatten(to_dict(cfg))
    # How it runs, not what it computes.
    ignore = {"resume", "train.threads", "train.progress", "train.trials_per_gpu"}
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
    eval_splits: tuple[str, ...] = EVAL_SPLITS,
    hparam_domain: dict[str, list] | None = None,
) -> RunResult:
    """Train one run; write config, provenance, results and a TensorBoard run into its dir.

    `hparams` are what identifies the run in TensorBoard's HParams tab (a study passes its
    swept keys, setting, seed and task; by default a few model keys, the seed and the task),
    `hparam_domain` every value each of them takes across the study.
    """
    quiet_lightning()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(cfg.train.threads)
    cfg, task, plan = resolve(cfg)
    check_eval_room(task, cfg.train.val_size, ("train", *eval_splits))
    check_machine(cfg, task, plan)  # before anything is allocated
    save_dir = save_dir or cfg.out_dir
    name = name if name is not None else default_name(cfg)
    # The other processes of a multi-device run (Lightning starts them with LOCAL_RANK > 0)
    # join the run directory process 0 made, and write nothing of their own into it.
    joined = joined_process()
    if joined and version is None:
        version = _newest_version(Path(save_dir) / name)
    resume_from = None
    if cfg.resume:
        found = version or _latest_version(Path(save_dir) / name)
        if found and (Path(save_dir) / name / found / "checkpoints" / "last.ckpt").is_file():
            version = found
            resume_from = "last"
    logger = RunLogger(save_dir=save_dir, name=name, version=version, default_hp_metric=False)
    run_dir = Path(logger.log_dir)
    if resume_from:
        check_resume_config(run_dir, cfg)
        check_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not joined:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        (run_dir / "provenance.json").write_text(json.dumps(
            {**provenance(), "plan": plan_record(plan, cfg), "task": task_record(task)}, indent=2))

    logger.log_config(cfg)
    try:
        return _fit(cfg, task, plan, logger, run_dir, callbacks, progress, resume_from,
                    hparams if hparams is not None else run_hparams(cfg), hparam_domain,
                    eval_splits)
    finally:
        logger.close_run("success")


def _fit(cfg, task, plan, logger: RunLogger, run_dir: Path, callbacks, progress, resume_from,
         hparams: dict[str, Any], hparam_domain: dict[str, list] | None,
         eval_splits: tuple[str, ...]) -> RunResult:
    pl.seed_everything(run_seed(cfg), workers=True, verbose=False)
    module = LabModule(cfg, task, plan, eval_splits)
    if cfg.train.compile:
        module.model.compile_blocks()
    data = TaskData(task, cfg, eval_splits)
    t = cfg.train
    throughput = Throughput(t.batch_size * task.seq_len, t.log_every)
    cbs: list[Callback] = [throughput, FigureLogger(), *(callbacks or [])]
    cbs.append(ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="step{step}", save_last=True, save_top_k=0,
        every_n_train_steps=t.ckpt_every or None, auto_insert_metric_name=False,
    ))
    if branches(cfg):
        cbs.append(BranchPoints(cfg, run_dir))
    show = t.progress if progress is None else progress
    if show:
        cbs.append(StepProgressBar(refresh_rate=max(1, t.log_every // 5), leave=True))
    precision = resolve_precision(t)
    trainer = make_trainer(cfg, logger, cbs, show)
    result = RunResult(status="ok", run_dir=str(run_dir), config=to_dict(cfg),
                       plan=plan_record(plan, cfg))
    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=True)
    except Diverged as e:
        result.status, result.reason = "diverged", str(e)
    result.wall_time_s = time.perf_counter() - t0
    result.steps = trainer.global_step
    result.curve = module.history  # filled below too, if a last validation runs
    if resume_from:
        result.resumed_from_step = throughput.start_step
    if result.status == "ok":
        if trainer.global_step % t.val_every or not module.final:
            trainer.validate(module, datamodule=data, verbose=False)
        result.metrics = dict(module.final)
        if not all(math.isfinite(v) for k, v in result.metrics.items() if k.endswith("loss")):
            result.status, result.reason = "diverged", "validation loss is not finite"
    if result.status == "ok" and cfg.train.budgets:
        result.budgets = train_budgets(cfg, task, plan, run_dir, eval_splits, result)
        for b in result.budgets.values():
            for k, v in b["metrics"].items():  # TensorBoard: each budget's metrics at its step
                if isinstance(v, int | float) and not k.startswith("diag/"):
                    logger.experiment.add_scalar(f"budget/{k}", v, global_step=b["steps"])
    device = trainer.strategy.root_device
    opt = trainer.optimizers[0] if trainer.optimizers else None
    result.runtime = {"device": device.type, "devices": trainer.num_devices,
                      "precision": precision, "compile": bool(t.compile),
                      "fused_adamw": bool(opt is not None and opt.defaults.get("fused"))}
    if not trainer.is_global_zero:
        return result  # one process of a multi-device run measures and records
    # Measured where it trained, in the number format it trained in (Lightning's teardown
    # moved the model to the CPU), on the eager blocks (FLOPs are counted op by op).
    module.model.compile_blocks(False)
    model = module.model.float().to(device).eval()
    result.costs = cost.static_costs(model, plan, task, module.eval_loops)
    result.costs["train_tokens_per_s"] = throughput.tokens_per_s
    if result.status == "ok":
        if cfg.eval.cost:
            result.costs.update(cost.measured_costs(model, task, module.eval_loops, cfg, precision))
        with autocast(device, precision):
            if plan.looped and "val" in eval_splits:
                result.extrapolation = extrapolate(model, task, data, cfg)
                _log_extrapolation(logger, result.extrapolation)
                if plan.loop_mode == "serial" and cfg.eval.diagnostics:
                    result.adaptive = adaptive_curves(model, data, cfg)
    logger.log_results(hparams, final_metrics(result.metrics, result.costs, result.status != "ok"),
                       step=trainer.global_step, domain=hparam_domain, status=result.status)
    (run_dir / "results.json").write_text(json.dumps(result.to_json(), indent=2, default=str))
    return result


def make_trainer(cfg: LabConfig, logger, callbacks: list[Callback], show: bool) -> pl.Trainer:
    t = cfg.train
    return pl.Trainer(
        max_steps=t.steps,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        precision=resolve_precision(t),
        use_distributed_sampler=False,  # TaskData shards every split itself, without padding
        deterministic=t.deterministic,
        logger=logger,
        callbacks=callbacks,
        val_check_interval=t.val_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every,
        gradient_clip_val=t.grad_clip or None,
        enable_progress_bar=show,
        enable_model_summary=False,
        benchmark=False,
    )


def train_budgets(cfg: LabConfig, task, plan: StackPlan, run_dir: Path,
                  eval_splits: tuple[str, ...], result: RunResult) -> dict[str, dict[str, Any]]:
    """Train and evaluate the branch of every budget below the full one (lab.train.budgets),
    each resumed from its branch point; a branch already done (a retried trial) is kept."""
    done = load_done(run_dir)
    for fraction, steps, point in branches(cfg):
        key = budget_key(fraction)
        if key in done:
            continue
        bcfg = budget_config(cfg, steps)
        pl.seed_everything(run_seed(bcfg), workers=True, verbose=False)
        module = LabModule(bcfg, task, plan, eval_splits)
        if bcfg.train.compile:
            module.model.compile_blocks()
        data = TaskData(task, bcfg, eval_splits)
        trainer = make_trainer(bcfg, False, [], False)
        trainer.fit(module, datamodule=data, ckpt_path=branch_checkpoint(run_dir, steps),
                    weights_only=True)
        if trainer.global_step % bcfg.train.val_every or not module.final:
            trainer.validate(module, datamodule=data, verbose=False)
        done[key] = {"steps": steps, "branch_point": point,
                     "metrics": {k: v for k, v in module.final.items() if not k.startswith("diag/")}}
        save_done(run_dir, done)
    done[budget_key(1.0)] = {"steps": cfg.train.steps, "branch_point": None,
                             "metrics": {k: v for k, v in result.metrics.items()
                                         if not k.startswith("diag/")}}
    return dict(sorted(done.items(), key=lambda kv: kv[1]["steps"]))


def _log_extrapolation(logger: RunLogger, curves: dict[str, dict[int, float]]) -> None:
    # The step axis is the loop count, so TensorBoard draws the extrapolation curve.
    for split, curve in curves.items():
        for r, acc in curve.items():
            logger.experiment.add_scalar(f"extrapolate/{split}_acc_token", acc, global_step=r)
