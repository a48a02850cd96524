"""Training: the data stream, optimizer and schedule, the LightningModule, and `train()`."""

from lab.train.run import RunResult, quiet_lightning, train

__all__ = ["RunResult", "quiet_lightning", "train"]
