"""What a run reports: the one logging set-up of the jobs, `metrics.jsonl` (+ TensorBoard when installed, + a
tqdm bar) on the main rank, and the window of losses and token counts that each metrics record summarises."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from berta.io import append_text, atomic_write_text, read_jsonl
from berta.train.distributed import Distributed
from berta.train.settings import TrainSettings

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"


def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr as `12:00:00 berta.train.loop: message`, unless the application configured logging already.

    Example:
        >>> configure_logging()
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


class MetricsLog:
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
            self.history = [record for _, record in read_jsonl(self.path) if record.get("step", 0) <= start_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.history))
        if settings.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.debug("tensorboard is not installed: metrics go to %s only", self.path)  # said in --help
            else:
                self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_step + 1)
        self.total_steps = total_steps
        self.plain = settings.progress and not sys.stderr.isatty()  # redirected output: plain lines, not a bar
        if settings.progress and not self.plain:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def step(self, record: dict[str, Any] | None) -> None:
        """One optimizer step done; `record` (when not None) is appended to the log."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
        if record is None:
            return
        self.history.append(record)
        append_text(self.path, json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self.writer.add_scalar(key, value, record["step"])
        if self.plain:
            extra = f", val_loss {record['val_loss']:.4f}" if "val_loss" in record else ""
            log.info("step %d/%d: loss %.4f, %d tokens/s%s", record["step"], self.total_steps, record["loss"],
                     round(record["tokens_per_s"]), extra)
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


class Window:
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

    def record(self, step: int, epoch: int, distributed: Distributed) -> dict[str, Any]:
        """The metrics record of the steps since the last one (summed over ranks), then start a new window."""
        totals = torch.stack([self.loss_sum, self.units, self.tokens])
        if distributed.active:
            dist.all_reduce(totals)
        loss_sum, units, tokens = totals.tolist()
        elapsed = max(time.perf_counter() - self.started - self.excluded, 1e-9)
        record = {
            "step": step,
            "epoch": epoch,
            "loss": loss_sum / max(units, 1.0),
            "lr": self.lr,  # the learning rate of the record's last step
            "tokens_per_s": tokens / elapsed,
            "steps_per_s": self.steps / elapsed,
        }
        if self.grad_norm is not None:
            record["grad_norm"] = float(self.grad_norm)
        self.reset()
        return record
