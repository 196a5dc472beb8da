"""Training: the one loop (`loop.train`) shared by pretraining (`pretrain`) and fine-tuning."""

from berta.train.loop import TrainResult, TrainSettings, train

__all__ = ["TrainResult", "TrainSettings", "train"]
