"""The state of one training run: what the loop, checkpointing and evaluation share, in one object."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from berta.train.batches import Collate
from berta.train.distributed import Distributed
from berta.train.logs import MetricsLog, Window
from berta.train.resume import RunRecord
from berta.train.settings import TrainSettings

Evaluate = Callable[[nn.Module], dict[str, float]]
ComputeLoss = Callable[[nn.Module, dict[str, Any]], torch.Tensor]


@dataclass
class Progress:
    """Where a run is: what a checkpoint stores besides the tensors (plain values only)."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # samples of the epoch's order consumed (global, all ranks)
    best_value: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    bad_evaluations: int = 0
    stopped_early: bool = False


@dataclass
class Job:
    """What the caller of `berta.train.loop.train` brings: the model (or its factory), data, callbacks, settings."""

    model: nn.Module | Callable[[], nn.Module]
    settings: TrainSettings
    train_data: Sequence[Any]
    collate: Collate
    output_dir: Path
    evaluate: Evaluate | None
    save_extras: Callable[[Path], None] | None
    compute_loss: ComputeLoss
    sample_order: Callable[[int], Sequence[int]]
    record: RunRecord  # compared with the run's on resume, see berta.train.resume


@dataclass
class RunState:
    """One run: the job, its place among the processes, the model (bare and wrapped), the optimizer, schedule
    and loss scaler, its logs, and where it is. Built once by `berta.train.loop.train`; every part of the loop
    reads and updates it."""

    job: Job
    distributed: Distributed
    device: torch.device
    precision: torch.dtype | None  # autocast dtype; None: fp32
    model: nn.Module  # the bare model, whose `save` writes a model directory
    wrapped: nn.Module  # the model as trained: DDP / FSDP / compiled
    plain_copy: Callable[[], nn.Module]  # an unsharded model to gather FSDP's weights into
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    total_steps: int
    global_batch: int
    metrics: MetricsLog
    window: Window
    progress: Progress = field(default_factory=Progress)
    # The step and directory of the last model directory written, so that another directory of the same
    # step (best/, a checkpoint, model/) links to its files instead of writing the same bytes again.
    last_model: tuple[int, Path] | None = None
    saved_step: int | None = None  # the step of the last checkpoint written
    steps_per_epoch: int = 1  # optimizer steps in one pass over the data (`--eval-every 0` evaluates after each)

    @property
    def settings(self) -> TrainSettings:
        return self.job.settings

    @property
    def output_dir(self) -> Path:
        return self.job.output_dir
