"""The one training loop, shared by pretraining and fine-tuning.

A job brings a model, an indexable dataset, a collator and (optionally) an evaluation callback; the loop owns
everything else: AdamW with RoBERTa's settings, the learning-rate schedule, gradient accumulation, mixed
precision, `torch.compile`, distributed data parallelism (DDP or FSDP under `torchrun`), evaluation, early
stopping, checkpoints, and logs.

    result = train(model, TrainSettings(max_steps=1000), dataset, collate, "runs/demo", evaluate=evaluate)

Data order. Each epoch's order is a permutation drawn from (seed, epoch). An optimizer step consumes the next
`batch_size * grad_accum * world_size` samples of that order (the global batch); micro-step `a` of rank `r` takes
the slice `(a * world_size + r) * batch_size` of it. The collator is called as `collate(samples, indices, epoch)`
so its randomness (dynamic masking) can be derived from (seed, epoch, index). The data position is therefore just
(epoch, samples consumed in the epoch) — which is what a checkpoint stores.

Loss normalisation. The loss of a step is the mean over every labelled unit of the global batch (fairseq's
`sample_size`: masked tokens for MLM, examples for classification), not a mean of per-micro-batch means. Each
micro-batch's mean loss is weighted by its share of the global count, so the update is the same however the
global batch is split into micro-batches and processes — which is what makes gradient accumulation and DDP
exactly equivalent to one large batch.

Exact resume. A checkpoint holds the model (a Hugging Face layout directory), the optimizer, scheduler and
grad-scaler states, the python/numpy/torch random states of every rank and the data position. It is written to
a temporary directory, fsynced, and renamed into place, so a run killed at any moment resumes from the last
complete checkpoint and reproduces the losses of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)

Collate = Callable[[list[Any], list[int], int], dict[str, Any]]
Evaluate = Callable[[nn.Module], dict[str, float]]
ComputeLoss = Callable[[nn.Module, dict[str, Any]], Tensor]

CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "trainer_state.pt"
METRICS_NAME = "metrics.jsonl"
_CHECKPOINT_PREFIX = "step-"


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

    batch_size: int = field(default=16, metadata={"help": "sequences per process per micro-step"})
    grad_accum: int = field(
        default=1,
        metadata={"help": "micro-steps per optimizer step; global batch = batch-size x grad-accum x processes"},
    )
    max_steps: int = field(default=0, metadata={"help": "optimizer steps (0: epochs x steps per epoch)"})
    epochs: int = field(default=1, metadata={"help": "passes over the data when --max-steps is 0"})
    lr: float = field(default=6e-4, metadata={"help": "peak learning rate (RoBERTa-base: 6e-4)"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1 (RoBERTa: 0.9)"})
    adam_beta2: float = field(
        default=0.98, metadata={"help": "AdamW beta2 (RoBERTa: 0.98, for stability at large batch)"}
    )
    adam_eps: float = field(default=1e-6, metadata={"help": "AdamW epsilon (RoBERTa: 1e-6)"})
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay; never applied to biases and LayerNorm weights"}
    )
    schedule: Literal["linear", "polynomial", "constant"] = field(
        default="linear",
        metadata={"help": "decay after warm-up (RoBERTa: linear, fairseq polynomial_decay with power 1)"},
    )
    power: float = field(default=1.0, metadata={"help": "exponent of the polynomial decay"})
    end_lr: float = field(default=0.0, metadata={"help": "learning rate at the last step (polynomial decay)"})
    warmup_steps: int = field(default=0, metadata={"help": "warm-up steps (0: use --warmup-ratio)"})
    warmup_ratio: float = field(
        default=0.06, metadata={"help": "warm-up as a fraction of the steps (RoBERTa: 24k of 500k; GLUE: 6%%)"}
    )
    layer_decay: float = field(
        default=1.0,
        metadata={"help": "layer-wise learning-rate decay: layer l of L gets lr x decay^(L+1-l) (1: off)"},
    )
    max_grad_norm: float = field(default=0.0, metadata={"help": "gradient clipping norm (RoBERTa: 0 = none)"})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(
        default="auto",
        metadata={"help": "autocast precision; auto: bf16 on GPUs that have it, else fp16 on GPU, fp32 on CPU"},
    )
    compile: bool = field(default=False, metadata={"help": "compile the model with torch.compile"})
    distributed: Literal["ddp", "fsdp"] = field(
        default="ddp", metadata={"help": "under torchrun: DDP, or FSDP for models that do not fit one device"}
    )
    device: str = field(default="auto", metadata={"help": "auto (the rank's GPU, else CPU), cpu, cuda, cuda:1..."})
    num_workers: int = field(default=0, metadata={"help": "data-loading worker processes"})
    shuffle: bool = field(default=True, metadata={"help": "shuffle the data each epoch (order drawn from seed, epoch)"})
    seed: int = field(default=1, metadata={"help": "random seed (fairseq default: 1)"})
    log_every: int = field(default=10, metadata={"help": "steps between metrics.jsonl records"})
    eval_every: int = field(default=0, metadata={"help": "steps between evaluations (0: only at the end)"})
    save_every: int = field(default=1000, metadata={"help": "steps between checkpoints (0: only at the end)"})
    keep_last: int = field(default=2, metadata={"help": "checkpoints kept (the best model is kept apart)"})
    best_metric: str = field(
        default="", metadata={"help": "evaluation metric that selects the best model, e.g. val_loss (empty: none)"}
    )
    best_mode: Literal["min", "max"] = field(default="min", metadata={"help": "whether lower or higher is better"})
    early_stopping: int = field(
        default=0, metadata={"help": "stop after this many evaluations without improvement (0: never)"}
    )
    restore_best: bool = field(
        default=False, metadata={"help": "write the best model (not the last) as OUTPUT/model at the end"}
    )
    resume: bool = field(default=True, metadata={"help": "resume from the output directory's last checkpoint"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    tensorboard: bool = field(default=True, metadata={"help": "write OUTPUT/tensorboard if tensorboard is installed"})
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
        if self.best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be min or max, got {self.best_mode!r}")
        if (self.early_stopping or self.restore_best) and not self.best_metric:
            raise ValueError("early_stopping and restore_best need best_metric (e.g. val_loss)")


@dataclass
class TrainResult:
    """What `train` did: the last step, the model directories written, and every metrics record logged."""

    step: int
    epoch: int
    model_dir: Path
    best_dir: Path | None
    best_metrics: dict[str, float]
    stopped_early: bool
    history: list[dict[str, Any]]


# -- optimizer and schedule -------------------------------------------------------------------------------


def layer_depth(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise lr decay: embeddings 0, layer i -> i + 1, heads num_layers + 1.

    Example:
        >>> layer_depth("encoder.layers.3.attention.qkv.weight", 12)
        4
    """
    parts = name.split(".")
    if "embeddings" in parts:
        return 0
    if "layers" in parts:
        index = parts.index("layers")
        if index + 1 < len(parts) and parts[index + 1].isdigit():
            return int(parts[index + 1]) + 1
    return num_layers + 1


def parameter_groups(model: nn.Module, settings: TrainSettings) -> list[dict[str, Any]]:
    """AdamW parameter groups: no weight decay on biases and LayerNorm weights (as BERT and RoBERTa), and with
    `layer_decay` < 1 one group per depth with lr x decay^(num_layers + 1 - depth) (ELECTRA, BEiT).

    Example:
        >>> groups = parameter_groups(model, TrainSettings())  # doctest: +SKIP
        >>> torch.optim.AdamW(groups)  # doctest: +SKIP
    """
    no_decay = set()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm | nn.GroupNorm):
            no_decay.update(id(parameter) for parameter in module.parameters(recurse=False))
    config = getattr(_unwrap(model), "config", None)
    num_layers = int(getattr(config, "num_layers", 0))
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        clean = _clean_name(name)
        decay = not (id(parameter) in no_decay or clean.endswith("bias") or clean.split(".")[-1] == "bias")
        depth = layer_depth(clean, num_layers) if settings.layer_decay < 1.0 else 0
        scale = settings.layer_decay ** (num_layers + 1 - depth) if settings.layer_decay < 1.0 else 1.0
        weight_decay = settings.weight_decay if decay else 0.0
        group = groups.setdefault(
            (depth, decay), {"params": [], "names": [], "lr": settings.lr * scale, "weight_decay": weight_decay}
        )
        group["params"].append(parameter)
        group["names"].append(clean)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW over `parameter_groups`, with RoBERTa's betas and epsilon from `settings`."""
    groups = parameter_groups(model, settings)
    for group in groups:
        group.pop("names")
    betas = (settings.adam_beta1, settings.adam_beta2)
    parameters = [p for group in groups for p in group["params"]]
    # The fused kernel updates each tensor in one pass instead of ~8 elementwise passes: on CPU, where the
    # optimizer step over the embedding matrix is a large share of a small model's step, it is much faster.
    fused = bool(parameters) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters)
    return torch.optim.AdamW(groups, lr=settings.lr, betas=betas, eps=settings.adam_eps, fused=fused or None)


def lr_factor(step: int, total_steps: int, warmup_steps: int, settings: TrainSettings) -> float:
    """The learning rate at `step` (optimizer steps done so far) as a fraction of the peak.

    Linear warm-up from 0, then linear, polynomial (fairseq `polynomial_decay`, `transformers`
    `get_polynomial_decay_schedule_with_warmup`) or constant.

    Example:
        >>> lr_factor(5, 100, 10, TrainSettings())
        0.5
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if settings.schedule == "constant":
        return 1.0
    end = settings.end_lr / settings.lr if settings.schedule == "polynomial" else 0.0
    power = settings.power if settings.schedule == "polynomial" else 1.0
    if step >= total_steps:
        return end
    remaining = 1.0 - (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return (1.0 - end) * remaining**power + end


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, settings: TrainSettings
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying `lr_factor` to every parameter group's own peak learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, settings)
    )


def resolve_warmup(settings: TrainSettings, total_steps: int) -> int:
    """Warm-up steps: `warmup_steps` when set, else `warmup_ratio` of the total."""
    return settings.warmup_steps if settings.warmup_steps > 0 else int(round(settings.warmup_ratio * total_steps))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None means fp32 (no autocast).

    Example:
        >>> autocast_dtype("auto", torch.device("cpu")) is None
        True
    """
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None  # CPU autocast exists but is slower than fp32 on most CPUs
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError(f"precision fp16 needs a CUDA device (loss scaling), got {device}; use bf16 or fp32")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use fp16")
    return torch.bfloat16


# -- batches ---------------------------------------------------------------------------------------------


def labelled_units(batch: dict[str, Any]) -> int | Tensor:
    """How many labelled units a batch holds — the denominator of its mean loss.

    Masked tokens (MLM, with or without `masked_positions`), labelled tokens (NER: labels != -100), examples
    (classification, QA), or label entries (multi-label, regression: float labels).

    Example:
        >>> labelled_units({"labels": torch.tensor([[-100, 5, -100, 7]])})
        tensor(2)
    """
    labels = batch.get("labels")
    if isinstance(labels, Tensor):
        if labels.is_floating_point():
            return labels.numel()
        positions = batch.get("masked_positions")
        selected = labels[positions] if isinstance(positions, Tensor) else labels
        return selected.ne(-100).sum()
    for value in batch.values():
        if isinstance(value, Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError(f"cannot count the examples of a batch with keys {sorted(batch)}: it holds no tensor")


def _token_count(batch: dict[str, Any]) -> int | Tensor:
    mask = batch.get("attention_mask")
    if isinstance(mask, Tensor):
        return mask.sum()
    ids = batch.get("input_ids")
    return ids.numel() if isinstance(ids, Tensor) else 0


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The order of an epoch's samples: a permutation drawn from (seed, epoch), the same on every rank.

    Example:
        >>> sorted(epoch_order(5, seed=1, epoch=0, shuffle=True))
        [0, 1, 2, 3, 4]
    """
    if not shuffle:
        return list(range(num_samples))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator).tolist()


class _MicroBatches(torch.utils.data.Dataset):
    """The micro-batches of one rank for the rest of one epoch, item k = micro-step k (see the module docstring)."""

    def __init__(self, data: Sequence[Any], collate: Collate, order: list[int], start: int, epoch: int,
                 settings: TrainSettings, rank: int, world_size: int):
        self.data, self.collate, self.order, self.start, self.epoch = data, collate, order, start, epoch
        self.batch_size, self.grad_accum = settings.batch_size, settings.grad_accum
        self.rank, self.world_size = rank, world_size
        self.global_batch = self.batch_size * self.grad_accum * world_size
        self.steps = (len(order) - start) // self.global_batch

    def __len__(self) -> int:
        return self.steps * self.grad_accum

    def __getitem__(self, k: int) -> dict[str, Any]:
        step, micro = divmod(k, self.grad_accum)
        first = self.start + step * self.global_batch + (micro * self.world_size + self.rank) * self.batch_size
        indices = self.order[first : first + self.batch_size]
        return self.collate([self.data[i] for i in indices], indices, self.epoch)


def _identity(item: Any) -> Any:
    return item


# -- distributed -----------------------------------------------------------------------------------------


@dataclass
class _Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def _setup_distributed(device_setting: str) -> tuple[_Distributed, torch.device]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and device_setting != "cpu" else "gloo"
        dist.init_process_group(backend)
        created = True
    state = _Distributed(
        rank=dist.get_rank() if dist.is_initialized() else 0,
        world_size=dist.get_world_size() if dist.is_initialized() else 1,
        local_rank=local_rank,
        created_group=created,
    )
    if device_setting == "auto":
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(device_setting)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return state, device


# -- random states ---------------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _random_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_random_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# -- checkpoint files ------------------------------------------------------------------------------------


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in [*sorted(p for p in directory.rglob("*") if p.is_dir()), directory]:
        _fsync_directory(path)


def _fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _torch_save(value: Any, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        torch.save(value, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run directory, oldest first (temporary directories are never listed).

    Example:
        >>> checkpoints("runs/demo")[-1].name  # doctest: +SKIP
        'step-0001000'
    """
    directory = Path(output_dir) / CHECKPOINTS_DIR
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(_CHECKPOINT_PREFIX)]
    complete = [p for p in found if (p / STATE_NAME).is_file()]
    return sorted(complete, key=lambda p: int(p.name[len(_CHECKPOINT_PREFIX) :]))


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)  # DDP and FSDP keep the wrapped model as `.module`
    return getattr(inner, "_orig_mod", inner)


def _clean_name(name: str) -> str:
    for marker in ("_fsdp_wrapped_module.", "_orig_mod.", "_checkpoint_wrapped_module."):
        name = name.replace(marker, "")
    return name.removeprefix("module.")


# -- logging ---------------------------------------------------------------------------------------------


class _Logger:
    """metrics.jsonl (+ TensorBoard when installed, + tqdm) on the main rank; nothing elsewhere."""

    def __init__(self, output_dir: Path, settings: TrainSettings, enabled: bool, start_step: int, total_steps: int):
        self.enabled = enabled
        self.path = output_dir / METRICS_NAME
        self.history: list[dict[str, Any]] = []
        self.writer = None
        self.bar = None
        if not enabled:
            return
        if self.path.exists():
            # A run killed after its last checkpoint logged steps that the resumed run will redo: drop them.
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    record = json.loads(line)
                    if record.get("step", 0) <= start_step:
                        kept.append(record)
            self.history = kept
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        if settings.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed: metrics go to %s only", self.path)
            else:
                self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_step + 1)
        if settings.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def step(self, record: dict[str, Any] | None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
        if record is None:
            return
        self.history.append(record)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self.writer.add_scalar(key, value, record["step"])
        if self.bar is not None:
            postfix = {"loss": f"{record['loss']:.4f}", "tok/s": f"{record['tokens_per_s']:.0f}"}
            if "val_loss" in record:
                postfix["val_loss"] = f"{record['val_loss']:.4f}"
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Draw the training (and validation) loss and the learning rate against steps into a PNG.

    Returns None (and logs why) when matplotlib is not installed or nothing was logged.

    Example:
        >>> plot_curves([{"step": 1, "loss": 2.0, "lr": 1e-4}], "curves.png")  # doctest: +SKIP
    """
    if not history:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on servers
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no curves drawn (pip install 'berta[plot]')")
        return None
    figure, (loss_axis, lr_axis) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    steps = [r["step"] for r in history if "loss" in r]
    loss_axis.plot(steps, [r["loss"] for r in history if "loss" in r], label="train loss")
    validated = [r for r in history if "val_loss" in r]
    if validated:
        loss_axis.plot([r["step"] for r in validated], [r["val_loss"] for r in validated], "o-", label="val loss")
    loss_axis.set_ylabel("loss")
    loss_axis.legend()
    loss_axis.grid(alpha=0.3)
    lr_axis.plot([r["step"] for r in history if "lr" in r], [r["lr"] for r in history if "lr" in r])
    lr_axis.set_ylabel("learning rate")
    lr_axis.set_xlabel("step")
    lr_axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# -- the loop --------------------------------------------------------------------------------------------


def _default_loss(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    return model(**batch).loss


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


@dataclass
class _Progress:
    step: int = 0
    epoch: int = 0
    position: int = 0  # samples of the epoch's order consumed (global, all ranks)
    best_value: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    bad_evaluations: int = 0
    stopped_early: bool = False


def train(
    model: nn.Module,
    settings: TrainSettings,
    train_data: Sequence[Any],
    collate: Collate,
    output_dir: str | Path,
    evaluate: Evaluate | None = None,
    save_extras: Callable[[Path], None] | None = None,
    compute_loss: ComputeLoss | None = None,
    sample_order: Callable[[int], Sequence[int]] | None = None,
) -> TrainResult:
    """Train `model` on `train_data`; write checkpoints, metrics and the final model under `output_dir`.

    - `train_data`: anything with `len` and `[index]`; `collate(samples, indices, epoch)` turns a list of samples
      into a dict of tensors that `model(**batch)` accepts (`compute_loss(model, batch)` overrides that call).
    - `evaluate(model)` returns metrics such as {"val_loss": ..., "val_accuracy": ...}; it runs every
      `eval_every` steps and at the end, in eval mode under `torch.no_grad()`, on every rank.
    - `save_extras(directory)` adds files (the tokenizer) to every model directory written.
    - `sample_order(epoch)` gives the sample indices of an epoch (default: a permutation drawn from (seed,
      epoch), see `epoch_order`); it must depend on the epoch only, e.g. `LanguageSampler.indices`.

    Writes `output_dir/metrics.jsonl`, `checkpoints/step-N/` (the last `keep_last`), `best/` (with
    `best_metric`), `model/` at the end, and `curves.png`. With an existing checkpoint in `output_dir` (and
    `resume`), training continues from it exactly.

    Example:
        >>> result = train(model, TrainSettings(max_steps=100, lr=1e-4), dataset, collate, "runs/x")  # doctest: +SKIP
        >>> result.model_dir
        PosixPath('runs/x/model')
    """
    settings.validate()
    output_dir = Path(output_dir)
    distributed, device = _setup_distributed(settings.device)
    try:
        if sample_order is None:
            def sample_order(epoch: int) -> list[int]:
                return epoch_order(len(train_data), settings.seed, epoch, settings.shuffle)

        return _train(model, settings, train_data, collate, output_dir, evaluate, save_extras,
                      compute_loss or _default_loss, sample_order, distributed, device)
    finally:
        if distributed.created_group:
            dist.destroy_process_group()


def _train(model, settings, train_data, collate, output_dir, evaluate, save_extras, compute_loss, sample_order,
           distributed: _Distributed, device: torch.device) -> TrainResult:
    rank, world_size = distributed.rank, distributed.world_size
    global_batch = settings.batch_size * settings.grad_accum * world_size
    samples_per_epoch = len(sample_order(0))
    steps_per_epoch = samples_per_epoch // global_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"an epoch holds {samples_per_epoch} samples, fewer than one global batch of {global_batch} "
            f"(batch_size {settings.batch_size} x grad_accum {settings.grad_accum} x {world_size} processes)"
        )
    total_steps = settings.max_steps or settings.epochs * steps_per_epoch
    warmup_steps = resolve_warmup(settings, total_steps)
    precision = autocast_dtype(settings.precision, device)

    checkpoint_root = output_dir / CHECKPOINTS_DIR
    if distributed.main:
        checkpoint_root.mkdir(parents=True, exist_ok=True)
        for stale in checkpoint_root.glob(".*.tmp"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        _recover_best(output_dir)
    distributed.barrier()

    existing = checkpoints(output_dir) if settings.resume else []
    resume_from = existing[-1] if existing else None
    progress = _Progress()
    saved_state: dict[str, Any] | None = None
    if resume_from is not None:
        from berta.checkpoints.hf import load_state, read_weights

        saved_state = torch.load(resume_from / STATE_NAME, map_location="cpu", weights_only=False)
        load_state(_unwrap(model), read_weights(resume_from / "model"), str(resume_from / "model"))
        progress = _Progress(**saved_state["progress"])
        if distributed.main:
            log.info("resuming from %s (step %d, epoch %d)", resume_from, progress.step, progress.epoch)
    else:
        _seed_everything(settings.seed + rank)

    model.to(device)
    model.train()
    wrapped = _wrap(model, settings, distributed, device)
    if settings.compile:
        _unwrap(model).compile(dynamic=True)
    optimizer = build_optimizer(wrapped, settings)
    scheduler = build_scheduler(optimizer, total_steps, warmup_steps, settings)
    scaler = torch.amp.GradScaler(device.type, enabled=precision is torch.float16)
    if saved_state is not None:
        _load_optimizer(wrapped, optimizer, saved_state["optimizer"])
        scheduler.load_state_dict(saved_state["scheduler"])
        scaler.load_state_dict(saved_state["scaler"])
        rng_file = resume_from / f"rng-{rank}.pt"
        if rng_file.is_file():
            _set_random_states(torch.load(rng_file, map_location="cpu", weights_only=False))
        else:
            log.warning("%s: no random state for rank %d (different world size?): reseeding", resume_from, rank)
            _seed_everything(settings.seed + rank + progress.step)

    logger = _Logger(output_dir, settings, distributed.main, progress.step, total_steps)
    if distributed.main:
        (output_dir / "train_settings.json").write_text(json.dumps(asdict(settings), indent=2, default=str) + "\n")

    window = _Window(device)
    finished = progress.step >= total_steps or progress.stopped_early
    try:
        while not finished:
            order = [int(i) for i in sample_order(progress.epoch)]
            source = _MicroBatches(train_data, collate, order, progress.position, progress.epoch, settings,
                                   rank, world_size)
            batches = _micro_batch_iterator(source, settings)
            for _ in range(source.steps):
                micro_batches = [_to_device(next(batches), device) for _ in range(settings.grad_accum)]
                _step(wrapped, micro_batches, optimizer, scheduler, scaler, settings, precision, device,
                      distributed, compute_loss, window)
                progress.step += 1
                progress.position += global_batch
                finished = progress.step >= total_steps
                record = None
                evaluated = evaluate is not None and (
                    finished or (settings.eval_every and progress.step % settings.eval_every == 0)
                )
                if evaluated or finished or progress.step % settings.log_every == 0:
                    record = window.record(progress, distributed)
                paused = time.perf_counter()  # evaluation and saving do not count in training throughput
                if evaluated:
                    metrics = _evaluate(wrapped, evaluate, precision, device, distributed)
                    record.update(metrics)
                    _track_best(model, metrics, progress, settings, output_dir, save_extras, distributed, wrapped)
                    finished = finished or progress.stopped_early
                logger.step(record)
                if finished or (settings.save_every and progress.step % settings.save_every == 0):
                    _save_checkpoint(wrapped, model, optimizer, scheduler, scaler, progress, settings, output_dir,
                                     save_extras, distributed)
                window.excluded += time.perf_counter() - paused
                if finished:
                    break
            else:
                progress.epoch += 1
                progress.position = 0
    finally:
        logger.close()

    model_dir = output_dir / "model"
    best_dir = output_dir / "best" if (output_dir / "best").is_dir() else None
    if settings.restore_best and best_dir is not None and isinstance(wrapped, _fsdp_class()):
        if distributed.main:  # FSDP's parameters are sharded views: copy the best directory instead
            shutil.copytree(best_dir, model_dir, dirs_exist_ok=True)
            (model_dir / "best_metrics.json").unlink(missing_ok=True)
        distributed.barrier()
    else:
        if settings.restore_best and best_dir is not None:
            from berta.checkpoints.hf import load_state, read_weights

            load_state(_unwrap(model), read_weights(best_dir), str(best_dir))
        _save_model(wrapped, model, model_dir, save_extras, distributed)
    if distributed.main and settings.plot:
        plot_curves(logger.history, output_dir / "curves.png")
    distributed.barrier()
    return TrainResult(
        step=progress.step,
        epoch=progress.epoch,
        model_dir=model_dir,
        best_dir=best_dir,
        best_metrics=dict(progress.best_metrics),
        stopped_early=progress.stopped_early,
        history=list(logger.history),
    )


def _micro_batch_iterator(source: _MicroBatches, settings: TrainSettings) -> Iterator[dict[str, Any]]:
    if settings.num_workers == 0:
        return (source[k] for k in range(len(source)))
    # A private generator: the DataLoader draws its worker seed from it, not from the global torch RNG that
    # dropout uses — otherwise creating the iterator mid-epoch (on resume) would shift every later dropout mask.
    loader = torch.utils.data.DataLoader(
        source, batch_size=None, shuffle=False, num_workers=settings.num_workers, collate_fn=_identity,
        generator=torch.Generator().manual_seed(settings.seed), persistent_workers=False,
    )
    return iter(loader)


def _wrap(model: nn.Module, settings: TrainSettings, distributed: _Distributed, device: torch.device) -> nn.Module:
    if not distributed.active:
        return model
    if settings.distributed == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(model, device_id=device,
                                        use_orig_params=True, sync_module_states=device.type == "cuda")
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class _Window:
    """Loss and token counts since the last record, kept on the device so steps need no host sync."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.units = torch.zeros((), dtype=torch.float64, device=self.device)
        self.tokens = torch.zeros((), dtype=torch.float64, device=self.device)
        self.steps = 0
        self.grad_norm: Tensor | None = None
        self.lr = 0.0
        self.started = time.perf_counter()
        self.excluded = 0.0  # seconds of evaluation and checkpointing inside the window

    def record(self, progress: _Progress, distributed: _Distributed) -> dict:
        totals = torch.stack([self.loss_sum, self.units, self.tokens])
        if distributed.active:
            dist.all_reduce(totals)
        loss_sum, units, tokens = totals.tolist()
        elapsed = max(time.perf_counter() - self.started - self.excluded, 1e-9)
        record = {
            "step": progress.step,
            "epoch": progress.epoch,
            "loss": loss_sum / max(units, 1.0),
            "lr": self.lr,  # the learning rate of the record's last step
            "tokens_per_s": tokens / elapsed,
            "steps_per_s": self.steps / elapsed,
        }
        if self.grad_norm is not None:
            record["grad_norm"] = float(self.grad_norm)
        self.reset()
        return record


def _step(model, micro_batches, optimizer, scheduler, scaler, settings, precision, device, distributed,
          compute_loss, window: _Window) -> None:
    units = [torch.as_tensor(labelled_units(b), dtype=torch.float64, device=device) for b in micro_batches]
    tokens = [torch.as_tensor(_token_count(b), dtype=torch.float64, device=device) for b in micro_batches]
    total_units = torch.stack(units).sum()
    if distributed.active:
        dist.all_reduce(total_units)
    # DDP averages gradients over processes; multiplying by world_size turns that average back into the sum,
    # so the update is the gradient of (sum of losses over the global batch) / (labelled units in it).
    denominator = total_units.clamp(min=1.0) / distributed.world_size
    for index, batch in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not distributed.active else model.no_sync()
        autocast = (
            torch.autocast(device.type, dtype=precision) if precision is not None else contextlib.nullcontext()
        )
        with sync:
            with autocast:
                loss = compute_loss(model, batch)
            # An empty micro-batch (no masked token) has a NaN mean; it contributes nothing.
            loss = torch.where(units[index] > 0, loss.float(), torch.zeros_like(loss, dtype=torch.float32))
            scaler.scale(loss * (units[index] / denominator).float()).backward()
        window.loss_sum += loss.detach().double() * units[index]
        window.units += units[index]
        window.tokens += tokens[index]
    if settings.max_grad_norm > 0:
        scaler.unscale_(optimizer)
        if hasattr(model, "clip_grad_norm_"):  # FSDP: the norm of the sharded gradients
            window.grad_norm = model.clip_grad_norm_(settings.max_grad_norm)
        else:
            window.grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
    window.lr = optimizer.param_groups[-1]["lr"]
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    window.steps += 1


def _evaluate(model, evaluate: Evaluate, precision, device, distributed: _Distributed) -> dict[str, float]:
    # Evaluation must not move the training's random streams, so that evaluating more or less often (or
    # resuming right after an evaluation) leaves the training losses unchanged.
    states = _random_states()
    target = model if isinstance(model, _fsdp_class()) else _unwrap(model)
    target.eval()
    autocast = torch.autocast(device.type, dtype=precision) if precision is not None else contextlib.nullcontext()
    try:
        with torch.no_grad(), autocast:
            metrics = {key: float(value) for key, value in evaluate(target).items()}
    finally:
        target.train()
        _set_random_states(states)
    if distributed.active:
        shared = [metrics]
        dist.broadcast_object_list(shared, src=0)
        metrics = shared[0]
    return metrics


def _fsdp_class() -> type:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel


def _track_best(model, metrics, progress: _Progress, settings: TrainSettings, output_dir: Path, save_extras,
                distributed: _Distributed, wrapped) -> None:
    if not settings.best_metric:
        return
    if settings.best_metric not in metrics:
        raise ValueError(f"best_metric {settings.best_metric!r} is not among the evaluation metrics {sorted(metrics)}")
    value = metrics[settings.best_metric]
    better = progress.best_value is None or (
        value < progress.best_value if settings.best_mode == "min" else value > progress.best_value
    )
    if better:
        progress.best_value, progress.best_step = value, progress.step
        progress.best_metrics = dict(metrics, step=progress.step)
        progress.bad_evaluations = 0
        _save_best(wrapped, model, output_dir, progress, save_extras, distributed)
    else:
        progress.bad_evaluations += 1
        if settings.early_stopping and progress.bad_evaluations >= settings.early_stopping:
            progress.stopped_early = True
            if distributed.main:
                log.info("early stopping at step %d: %s has not improved for %d evaluations (best %s at step %s)",
                         progress.step, settings.best_metric, progress.bad_evaluations, progress.best_value,
                         progress.best_step)


def _save_model(wrapped, model, directory: Path, save_extras, distributed: _Distributed) -> None:
    """Every rank calls this (FSDP gathers the full weights); rank 0 writes."""
    inner = _unwrap(model)
    if isinstance(wrapped, _fsdp_class()):
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType

        # Offloading is for GPUs; on CPU it hands back freed memory (torch 2.13 segfaults cloning it).
        on_gpu = any(p.device.type == "cuda" for p in wrapped.parameters())
        config = FullStateDictConfig(offload_to_cpu=on_gpu, rank0_only=True)
        with _fsdp_class().state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, config):
            state = wrapped.state_dict()
        if distributed.main:
            # The wrapped module's parameters are views of FSDP's flat shards; a plain copy on the CPU saves.
            inner = type(inner)(inner.config)
            inner.load_state_dict({_clean_name(name): tensor for name, tensor in state.items()})
    if distributed.main:
        inner.save(directory)
        if save_extras is not None:
            save_extras(directory)
    distributed.barrier()


def _save_best(wrapped, model, output_dir: Path, progress: _Progress, save_extras, distributed) -> None:
    best, temporary, old = output_dir / "best", output_dir / ".best.tmp", output_dir / ".best.old"
    if distributed.main:
        shutil.rmtree(temporary, ignore_errors=True)
    distributed.barrier()
    _save_model(wrapped, model, temporary, save_extras, distributed)
    if distributed.main:
        (temporary / "best_metrics.json").write_text(json.dumps(progress.best_metrics, indent=2) + "\n")
        _fsync_tree(temporary)
        # Directories cannot be renamed over one another: move the old one aside first. `_recover_best`
        # puts it back if the process dies between the two renames.
        if best.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(best, old)
        os.replace(temporary, best)
        _fsync_directory(output_dir)
        shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()


def _recover_best(output_dir: Path) -> None:
    best, old = output_dir / "best", output_dir / ".best.old"
    if old.is_dir() and not best.exists():
        os.replace(old, best)
    shutil.rmtree(output_dir / ".best.tmp", ignore_errors=True)


def _optimizer_state(wrapped, optimizer) -> dict[str, Any]:
    if isinstance(wrapped, _fsdp_class()):
        return _fsdp_class().optim_state_dict(wrapped, optimizer)  # full state, gathered on rank 0
    return optimizer.state_dict()


def _load_optimizer(wrapped, optimizer, state: dict[str, Any]) -> None:
    if isinstance(wrapped, _fsdp_class()):
        state = _fsdp_class().optim_state_dict_to_load(wrapped, optimizer, state)
    optimizer.load_state_dict(state)


def _save_checkpoint(wrapped, model, optimizer, scheduler, scaler, progress: _Progress, settings: TrainSettings,
                     output_dir: Path, save_extras, distributed: _Distributed) -> None:
    root = output_dir / CHECKPOINTS_DIR
    name = f"{_CHECKPOINT_PREFIX}{progress.step:07d}"
    temporary, final = root / f".{name}.tmp", root / name
    if distributed.main:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    distributed.barrier()
    _torch_save(_random_states(), temporary / f"rng-{distributed.rank}.pt")
    _save_model(wrapped, model, temporary / "model", save_extras, distributed)
    optimizer_state = _optimizer_state(wrapped, optimizer)
    if distributed.main:
        state = {
            "progress": asdict(progress),
            "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "world_size": distributed.world_size,
            "settings": asdict(settings),
        }
        _torch_save(state, temporary / STATE_NAME)
    distributed.barrier()
    if distributed.main:
        _fsync_tree(temporary)
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        _fsync_directory(root)
        for old in checkpoints(output_dir)[: -settings.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()

