"""The training loop's settings: one dataclass that every training job extends, so `pretrain` and `finetune`
share the names of their options (`--lr`, `--batch-size`, `--grad-accum`, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Settings that may differ when a run is resumed: how long it runs, how often it logs, evaluates and saves, and
# where and how fast it runs. Any other change refuses to resume (see `berta.train.resume`).
MAY_CHANGE_ON_RESUME = frozenset({
    "max_steps", "epochs", "log_every", "eval_every", "save_every", "keep_last", "early_stopping", "restore_best",
    "num_workers", "device", "compile", "progress", "tensorboard", "plot", "resume",
})


@dataclass(kw_only=True)
class TrainSettings:
    """Settings of the training loop. Defaults are RoBERTa's pretraining recipe (Liu et al. 2019, table 9, and
    fairseq's `examples/roberta` config); fine-tuning jobs override the learning rate and schedule.

    Jobs extend this dataclass with their own fields, so the CLI and config files of every training job share
    these names (`--lr`, `--batch-size`, `--grad-accum`, ...).

    Example:
        >>> TrainSettings(lr=1e-5, warmup_ratio=0.06, max_steps=100).grad_accum
        1
    """

    batch_size: int = field(default=16, metadata={"min": 1, "help": "sequences per process per micro-step"})
    grad_accum: int = field(
        default=1,
        metadata={"min": 1,
                  "help": "micro-steps per optimizer step; global batch = batch-size x grad-accum x processes"},
    )
    max_steps: int = field(default=0, metadata={"min": 0, "help": "optimizer steps (0: epochs x steps per epoch)"})
    epochs: int = field(default=1, metadata={"min": 1, "help": "passes over the data when --max-steps is 0"})
    lr: float = field(default=6e-4, metadata={"above": 0, "help": "peak learning rate (RoBERTa-base: 6e-4)"})
    adam_beta1: float = field(default=0.9, metadata={"min": 0, "max": 1, "help": "AdamW beta1 (RoBERTa: 0.9)"})
    adam_beta2: float = field(
        default=0.98, metadata={"min": 0, "max": 1, "help": "AdamW beta2 (RoBERTa: 0.98, for stability at large batch)"}
    )
    adam_eps: float = field(default=1e-6, metadata={"above": 0, "help": "AdamW epsilon (RoBERTa: 1e-6)"})
    weight_decay: float = field(
        default=0.01, metadata={"min": 0, "help": "AdamW weight decay; never applied to biases and LayerNorm weights"}
    )
    schedule: Literal["linear", "polynomial", "constant"] = field(
        default="linear",
        metadata={"help": "decay after warm-up (RoBERTa: linear, fairseq polynomial_decay with power 1)"},
    )
    power: float = field(default=1.0, metadata={"above": 0, "help": "exponent of the polynomial decay"})
    end_lr: float = field(default=0.0, metadata={"min": 0, "help": "learning rate at the last step (polynomial decay)"})
    warmup_steps: int = field(default=0, metadata={"min": 0, "help": "warm-up steps (0: use --warmup-ratio)"})
    warmup_ratio: float = field(
        default=0.06, metadata={"min": 0, "max": 1,
                                "help": "warm-up as a fraction of the steps (RoBERTa: 24k of 500k; GLUE: 6%%)"}
    )
    layer_decay: float = field(
        default=1.0,
        metadata={"above": 0, "max": 1,
                  "help": "layer-wise learning-rate decay: layer l of L gets lr x decay^(L+1-l) (1: off)"},
    )
    max_grad_norm: float = field(default=0.0, metadata={"min": 0, "help": "gradient clipping norm (RoBERTa: 0 = none)"})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(
        default="auto",
        metadata={"help": "autocast precision; auto: bf16 on GPUs that have it, else fp16 on GPU, fp32 on CPU"},
    )
    compile: bool = field(default=False, metadata={"help": "compile the model with torch.compile"})
    distributed: Literal["ddp", "fsdp"] = field(
        default="ddp", metadata={"help": "under torchrun: DDP, or FSDP for models that do not fit one device"}
    )
    device: str = field(default="auto", metadata={"help": "auto (the rank's GPU, else CPU), cpu, cuda, cuda:1..."})
    num_workers: int = field(default=0, metadata={"min": 0, "help": "data-loading worker processes"})
    shuffle: bool = field(default=True, metadata={"help": "shuffle the data each epoch (order drawn from seed, epoch)"})
    seed: int = field(default=1, metadata={"min": 0, "help": "random seed (fairseq default: 1)"})
    log_every: int = field(default=10, metadata={"min": 1, "help": "steps between metrics.jsonl records"})
    eval_every: int = field(default=0, metadata={"min": 0,
                                                 "help": "steps between evaluations (0: at the end of every epoch)"})
    save_every: int = field(default=1000, metadata={"min": 0, "help": "steps between checkpoints (0: only at the end)"})
    keep_last: int = field(
        default=2,
        metadata={"min": 0,
                  "help": "checkpoints kept in OUTPUT/checkpoints: the newest N step-* directories, each enough to "
                          "resume; best/ and model/ are kept besides them (sharing the files of a checkpoint of "
                          "the same step by hard links, not copies)"},
    )
    best_metric: str = field(
        default="", metadata={"help": "evaluation metric that selects the best model, e.g. val_loss (empty: none)"}
    )
    best_mode: Literal["auto", "min", "max"] = field(
        default="auto", metadata={"help": "whether lower or higher is better (auto: min for losses, else max)"})
    early_stopping: int = field(
        default=0, metadata={"min": 0, "help": "stop after this many evaluations without improvement (0: never)"}
    )
    restore_best: bool = field(
        default=False, metadata={"help": "write the best model (not the last) as OUTPUT/model at the end"}
    )
    resume: bool = field(
        default=True,
        metadata={"help": "resume from OUTPUT's last checkpoint when the settings match; --no-resume moves an "
                          "existing run aside (OUTPUT.old) and starts over"},
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    tensorboard: bool = field(default=True, metadata={
        "help": "write OUTPUT/tensorboard; needs the tensorboard package (without it: metrics.jsonl only, and no "
                "warning)"})
    plot: bool = field(default=True, metadata={"help": "draw OUTPUT/curves.png (loss, lr) at the end"})

    def validate(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        for name in ("batch_size", "grad_accum", "epochs", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "warmup_steps", "eval_every", "save_every", "num_workers", "early_stopping"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {self.keep_last}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in ("linear", "polynomial", "constant"):
            raise ValueError(f"schedule must be linear, polynomial or constant, got {self.schedule!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.distributed not in ("ddp", "fsdp"):
            raise ValueError(f"distributed must be ddp or fsdp, got {self.distributed!r}")
        if self.best_mode not in ("auto", "min", "max"):
            raise ValueError(f"--best-mode {self.best_mode!r}: expected auto, min or max")
        if (self.early_stopping or self.restore_best) and not self.best_metric:
            raise ValueError("--early-stopping and --restore-best need --best-metric (e.g. val_loss)")
