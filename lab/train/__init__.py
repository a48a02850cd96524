"""Training: the data stream, optimizer and schedule, the LightningModule, and `train()`."""

from lab.train.run import CheckpointError, RunResult, joined_process, quiet_lightning, train

__all__ = ["CheckpointError", "RunResult", "joined_process", "quiet_lightning", "train"]
