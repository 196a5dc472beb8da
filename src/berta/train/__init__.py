"""Training: the one loop (`loop.train`) shared by pretraining (`pretrain`) and fine-tuning (`finetune`), in
parts: settings, optim, distributed, batches, checkpointing, logs, resume, interrupt, state."""

from berta.train.checkpointing import checkpoints
from berta.train.interrupt import TrainingInterruptedError
from berta.train.loop import TrainResult, train
from berta.train.settings import TrainSettings

__all__ = ["TrainResult", "TrainSettings", "TrainingInterruptedError", "checkpoints", "train"]
