"""Training: the data stream, optimizer and schedule, the LightningModule, and `train()`."""

from lab.train.run import CheckpointError, RunResult, quiet_lightning, train

__all__ = ["CheckpointError", "RunResult", "quiet_lightning", "train"]
