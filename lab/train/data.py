"""Training data: a pure function of (seed, step), and the fixed evaluation sets.

Batch s is drawn from a generator seeded with (seed, s), so a resumed run sees exactly the
batches it would have seen, and the same config and seed give the same batches.
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
    """Training batches: batch s is drawn from a generator seeded with (seed, s)."""

    def __init__(self, task: Task, batch_size: int, seed: int, start: int):
        self.task, self.batch_size, self.seed, self.start = task, batch_size, seed, start

    def __iter__(self):
        g = torch.Generator()
        step = self.start
        while True:
            g.manual_seed(mix(self.seed, step))
            yield self.task.sample(self.batch_size, g, "train")
            step += 1


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

    def train_dataloader(self):
        # Called after a checkpoint is restored, so a resumed run continues the stream.
        start = self.trainer.global_step if self.trainer is not None else 0
        return DataLoader(TrainStream(self.task, self.cfg.train.batch_size, run_seed(self.cfg), start),
                          batch_size=None)

    def val_dataloader(self):
        return [DataLoader(TensorDataset(*self.eval_set(s)), batch_size=EVAL_BATCH)
                for s in self.splits]
