"""Training data: a pure function of (seed, step), and the fixed evaluation sets.

Batch s is drawn from a generator seeded with (seed, s), so a resumed run sees exactly the
batches it would have seen, and the same config and seed give the same batches.

On several devices (``train.devices``) every process draws the same batch and trains on its
own share of its rows (``train.batch_size`` is the batch of the whole run), and validates
on its own share of every evaluation set; :class:`lab.train.module.LabModule` adds up the
counts of all of them.

Off the critical path on a GPU: a task that can keep its data on the device
(``to_device(device)``, the text task's corpus arrays) samples there; any other task samples
in a loader process with pinned memory, so the next batches are ready (and copied without
blocking) while the GPU trains on this one. On a CPU, batches are drawn in the training
process, as they always were.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lab.config import LabConfig, run_seed
from lab.eval.metrics import EVAL_BATCH
from lab.tasks import Task, eval_set


def mix(*xs: int) -> int:
    """A 62-bit seed from integers (splitmix64 over the sequence)."""
    z = 0x9E3779B97F4A7C15
    for x in xs:
        z = (z ^ (x & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 31
    return z >> 2


class TrainStream(IterableDataset):
    """Training batches: batch s is drawn from a generator seeded with (seed, s); process
    `rank` of `world` takes rows rank, rank + world, ... of it."""

    def __init__(self, task: Task, batch_size: int, seed: int, start: int, rank: int = 0,
                 world: int = 1):
        self.task, self.batch_size, self.seed, self.start = task, batch_size, seed, start
        self.rank, self.world = rank, world

    def __iter__(self):
        g = torch.Generator()
        step = self.start
        while True:
            g.manual_seed(mix(self.seed, step))
            x, y = self.task.sample(self.batch_size, g, "train")
            yield (x, y) if self.world == 1 else (x[self.rank::self.world], y[self.rank::self.world])
            step += 1


def loader_options(device: torch.device, task_on_device: bool) -> dict:
    """DataLoader options of the training stream: on a GPU, unless the task samples on the
    device itself, one loader process ahead of training with pinned batches."""
    if device.type != "cuda" or task_on_device:
        return {}
    return {"num_workers": 1, "pin_memory": True, "prefetch_factor": 4}


EVAL_SPLITS = ("val", "ood")  # what a run validates on; tuning trials use ("tune",)


class TaskData(pl.LightningDataModule):
    def __init__(self, task: Task, cfg: LabConfig, splits: tuple[str, ...] = EVAL_SPLITS):
        super().__init__()
        self.task, self.cfg, self.splits = task, cfg, tuple(splits)
        self._eval: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def eval_set(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self._eval:
            self._eval[split] = eval_set(self.task, split, self.cfg.train.val_size)
        return self._eval[split]

    def place(self) -> tuple[torch.device, bool, int, int]:
        """(device, whether the task samples on it, rank, world size) of this process; moves
        the task's data to a GPU when it can keep it there."""
        tr = self.trainer
        device = tr.strategy.root_device if tr is not None else torch.device("cpu")
        on_device = device.type == "cuda" and callable(getattr(self.task, "to_device", None))
        if on_device:
            self.task.to_device(device)
        return device, on_device, (tr.global_rank if tr else 0), (tr.world_size if tr else 1)

    def train_dataloader(self):
        # Called after a checkpoint is restored, so a resumed run continues the stream.
        start = self.trainer.global_step if self.trainer is not None else 0
        device, on_device, rank, world = self.place()
        # Every process draws the whole batch and keeps its share of the rows.
        stream = TrainStream(self.task, self.cfg.train.batch_size, run_seed(self.cfg), start,
                             rank, world)
        return DataLoader(stream, batch_size=None, **loader_options(device, on_device))

    def val_dataloader(self):
        device, _, rank, world = self.place()
        out = []
        for s in self.splits:
            x, y = self.eval_set(s)
            pin = device.type == "cuda" and x.device.type == "cpu"
            out.append(DataLoader(TensorDataset(x[rank::world], y[rank::world]),
                                  batch_size=EVAL_BATCH, pin_memory=pin))
        return out
