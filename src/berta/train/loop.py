"""The one training loop, shared by pretraining and fine-tuning.

A job brings a model (or a function that builds one), an indexable dataset, a collator and (optionally) an
evaluation callback; the loop steps through the data and leaves the rest to one file per job under `train/`:
settings (`settings`), AdamW and the learning-rate schedule (`optim`), DDP / FSDP under `torchrun`
(`distributed`), the order of samples in micro-batches (`batches`), checkpoints, best model and final model
(`checkpointing`), metrics.jsonl / TensorBoard / progress bar (`logs`), whether a directory may be resumed
(`resume`) and Ctrl-C (`interrupt`). Everything the parts share lives in one `RunState` (`state`).

    result = train(model, TrainSettings(max_steps=1000), dataset, collate, "runs/demo", evaluate=evaluate)

Loss normalisation. The loss of a step is the mean over every labelled unit of the global batch (fairseq's
`sample_size`: masked tokens for MLM, examples for classification), not a mean of per-micro-batch means. Each
micro-batch's mean loss is weighted by its share of the global count, so the update is the same however the
global batch is split into micro-batches and processes — which is what makes gradient accumulation and DDP
exactly equivalent to one large batch.

Exact resume. A checkpoint holds everything the next step depends on (model, optimizer, schedule, scaler,
every rank's random states, the data position), so a run stopped at any moment — killed, or interrupted with
Ctrl-C, which saves first — resumes from its last checkpoint and reproduces the losses of an uninterrupted run.
It resumes only when the command's settings and data match the run's (`berta.train.resume`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from berta.device import autocast_dtype
from berta.seeding import random_states, seed_everything, set_random_states
from berta.train.batches import Collate, MicroBatches, epoch_order, labelled_units, micro_batch_iterator, token_count
from berta.train.checkpointing import (
    checkpoints,
    load_model_weights,
    load_training_state,
    read_record,
    recover,
    restore_optimizer,
    save_best,
    save_checkpoint,
    save_final_model,
    write_settings,
)
from berta.train.distributed import Distributed, is_fsdp, setup_distributed, unwrap, wrap
from berta.train.interrupt import InterruptFlag, TrainingInterruptedError
from berta.train.logs import MetricsLog, Window
from berta.train.optim import build_optimizer, build_scheduler, resolve_warmup
from berta.train.resume import RunRecord, check_resume, move_aside
from berta.train.settings import TrainSettings
from berta.train.state import ComputeLoss, Evaluate, Job, Progress, RunState
from berta.viz.plots import plot_curves

log = logging.getLogger(__name__)


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
    model: nn.Module | None = None  # the trained model (the best one with `restore_best`)


def train(
    model: nn.Module | Callable[[], nn.Module],
    settings: TrainSettings,
    train_data: Sequence[Any],
    collate: Collate,
    output_dir: str | Path,
    evaluate: Evaluate | None = None,
    save_extras: Callable[[Path], None] | None = None,
    compute_loss: ComputeLoss | None = None,
    sample_order: Callable[[int], Sequence[int]] | None = None,
    record: RunRecord | None = None,
) -> TrainResult:
    """Train a model on `train_data`; write checkpoints, metrics and the final model under `output_dir`.

    - `model`: the model, or a function that builds it (called on every rank, and again where an unsharded
      copy is needed to save FSDP's weights); its `save(directory)` writes a model directory.
    - `train_data`: anything with `len` and `[index]`; `collate(samples, indices, epoch)` turns a list of samples
      into a dict of tensors that `model(**batch)` accepts (`compute_loss(model, batch)` overrides that call).
    - `evaluate(model)` returns metrics such as {"val_loss": ..., "val_accuracy": ...}; it runs every
      `eval_every` steps and at the end, in eval mode under `torch.no_grad()`, on every rank.
    - `save_extras(directory)` adds files (the tokenizer) to every model directory written.
    - `sample_order(epoch)` gives the sample indices of an epoch (default: a permutation drawn from (seed,
      epoch), see `epoch_order`); it must depend on the epoch only, e.g. `LanguageSampler.indices`.
    - `record`: the job's settings and data fingerprints, compared with the run's on resume (default: `settings`
      and the number of samples).

    Writes `output_dir/metrics.jsonl`, `checkpoints/step-N/` (the last `keep_last`), `best/` (with
    `best_metric`), `model/` at the end, `train_settings.json` and `curves.png`. With a checkpoint in
    `output_dir` (and `resume`), training continues from it exactly, if the settings allow (else ValueError
    saying what changed). SIGINT / SIGTERM save a checkpoint and raise `TrainingInterruptedError`.

    Example:
        >>> result = train(model, TrainSettings(max_steps=100, lr=1e-4), dataset, collate, "runs/x")  # doctest: +SKIP
        >>> result.model_dir  # doctest: +SKIP
        PosixPath('runs/x/model')
    """
    settings.validate()
    output_dir = Path(output_dir)
    if sample_order is None:
        def sample_order(epoch: int) -> list[int]:
            return epoch_order(len(train_data), settings.seed, epoch, settings.shuffle)
    if record is None:
        record = RunRecord.of("train", settings, {"training samples": str(len(train_data))})
    job = Job(model=model, settings=settings, train_data=train_data, collate=collate, output_dir=output_dir,
              evaluate=evaluate, save_extras=save_extras, compute_loss=compute_loss or _default_loss,
              sample_order=sample_order, record=record)
    distributed, device = setup_distributed(settings.device)
    try:
        with InterruptFlag() as interrupt:
            run = _start(job, distributed, device)
            try:
                _run(run, interrupt)
            finally:
                run.metrics.close()
            return _finish(run)
    finally:
        distributed.close()


def _default_loss(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    return model(**batch).loss


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def _plain_copies(module: nn.Module, factory: Callable[[], nn.Module] | None, fsdp: bool) -> Callable[[], nn.Module]:
    """How to get an unsharded model to gather FSDP's full weights into: the factory, or an empty copy of the
    module's structure (kept on the meta device, so it costs no memory until used)."""
    if factory is not None or not fsdp:
        return factory or (lambda: module)
    template = copy.deepcopy(module).to("meta")
    return lambda: copy.deepcopy(template).to_empty(device="cpu")


def _steps(job: Job, distributed: Distributed) -> tuple[int, int, int]:
    """(global batch, total optimizer steps, steps per epoch); an epoch smaller than one global batch is an
    error."""
    settings = job.settings
    global_batch = settings.batch_size * settings.grad_accum * distributed.world_size
    samples_per_epoch = len(job.sample_order(0))
    steps_per_epoch = samples_per_epoch // global_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"an epoch holds {samples_per_epoch} samples, fewer than one global batch of {global_batch} "
            f"(--batch-size {settings.batch_size} x --grad-accum {settings.grad_accum} x {distributed.world_size} "
            "processes); lower --batch-size or --grad-accum, or use more data"
        )
    return global_batch, settings.max_steps or settings.epochs * steps_per_epoch, steps_per_epoch


def _prepare_directory(job: Job, distributed: Distributed) -> Path | None:
    """Move an old run aside (`--no-resume`), tidy what a killed save left; the checkpoint to resume from."""
    if distributed.main:
        if not job.settings.resume:
            moved = move_aside(job.output_dir)
            if moved is not None:
                log.info("--no-resume: moved the old run %s aside to %s; starting over", job.output_dir, moved)
        job.output_dir.mkdir(parents=True, exist_ok=True)
        recover(job.output_dir)
    distributed.barrier()
    existing = checkpoints(job.output_dir) if job.settings.resume else []
    return existing[-1] if existing else None


def _start(job: Job, distributed: Distributed, device: torch.device) -> RunState:
    """Build the run; resume from the last checkpoint when the settings allow."""
    settings = job.settings
    global_batch, total_steps, steps_per_epoch = _steps(job, distributed)
    resume_from = _prepare_directory(job, distributed)
    factory = None if isinstance(job.model, nn.Module) else job.model
    module: nn.Module = job.model if factory is None else factory()  # type: ignore[assignment]
    saved: dict[str, Any] | None = None
    progress = Progress()
    if resume_from is not None:
        saved = load_training_state(resume_from / "trainer_state.pt")
        progress = Progress(**saved["progress"])
        old_record = read_record(resume_from)
        if old_record is None:
            log.warning("%s has no run.json: resuming without checking its settings", resume_from)
        else:
            changed = check_resume(job.output_dir, old_record, job.record, progress.step)
            if changed and distributed.main:
                log.info("resuming %s at step %d with changed settings: %s (the learning-rate schedule runs to "
                         "step %d)", job.output_dir, progress.step, ", ".join(changed), total_steps)
        load_model_weights(module, resume_from / "model")
        if distributed.main:
            log.info("resuming from %s (step %d, epoch %d)", resume_from, progress.step, progress.epoch)
    else:
        seed_everything(settings.seed + distributed.rank)

    plain_copy = _plain_copies(module, factory, distributed.active and settings.distributed == "fsdp")
    module.to(device)
    module.train()
    wrapped = wrap(module, settings.distributed, distributed, device)
    if settings.compile:
        unwrap(module).compile(dynamic=True)
    optimizer = build_optimizer(wrapped, settings)
    precision = autocast_dtype(settings.precision, device)
    run = RunState(
        job=job, distributed=distributed, device=device, precision=precision, model=module, wrapped=wrapped,
        plain_copy=plain_copy, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, total_steps, resolve_warmup(settings, total_steps), settings),
        scaler=torch.amp.GradScaler(device.type, enabled=precision is torch.float16),
        total_steps=total_steps, global_batch=global_batch, steps_per_epoch=steps_per_epoch,
        metrics=MetricsLog(job.output_dir, settings, distributed.main, progress.step, total_steps),
        window=Window(device), progress=progress, saved_step=progress.step if resume_from is not None else None,
    )
    if saved is not None:
        restore_optimizer(run, saved)
        rng_file = resume_from / f"rng-{distributed.rank}.pt"
        if rng_file.is_file() and saved.get("world_size") == distributed.world_size:
            set_random_states(load_training_state(rng_file))
        else:
            log.warning("%s: no random state for rank %d (different world size?): reseeding", resume_from,
                        distributed.rank)
            seed_everything(settings.seed + distributed.rank + progress.step)
    if distributed.main:
        length = (f"--max-steps {settings.max_steps}" if settings.max_steps else
                  f"{settings.epochs} epoch{'s' * (settings.epochs != 1)} (--epochs; --max-steps sets steps instead)")
        log.info("training %d steps of %d sequences: %s, %d steps per epoch", total_steps, global_batch, length,
                 steps_per_epoch)
        write_settings(job.output_dir, job.record)
    return run


def _run(run: RunState, interrupt: InterruptFlag) -> None:
    """Step until the last step, early stopping, or a signal (which saves a checkpoint first)."""
    progress = run.progress
    finished = progress.step >= run.total_steps or progress.stopped_early
    while not finished:
        order = [int(i) for i in run.job.sample_order(progress.epoch)]
        source = MicroBatches(run.job.train_data, run.job.collate, order, start=progress.position,
                              epoch=progress.epoch, settings=run.settings, rank=run.distributed.rank,
                              world_size=run.distributed.world_size)
        batches = micro_batch_iterator(source, run.settings)
        for _ in range(source.steps):
            _step(run, [_to_device(next(batches), run.device) for _ in range(run.settings.grad_accum)])
            progress.step += 1
            progress.position += run.global_batch
            finished = _after_step(run)
            if finished:
                break
            if run.distributed.any(interrupt.signal_number is not None, run.device):
                if run.saved_step != progress.step:
                    save_checkpoint(run)
                raise TrainingInterruptedError(progress.step, interrupt.signal_number or signal.SIGTERM)
        else:
            progress.epoch += 1
            progress.position = 0


def _step(run: RunState, micro_batches: list[dict[str, Any]]) -> None:
    """One optimizer step over the micro-batches of this rank (see "Loss normalisation")."""
    device, distributed, window = run.device, run.distributed, run.window
    units = [torch.as_tensor(labelled_units(b), dtype=torch.float64, device=device) for b in micro_batches]
    tokens = [torch.as_tensor(token_count(b), dtype=torch.float64, device=device) for b in micro_batches]
    total_units = torch.stack(units).sum()
    if distributed.active:
        dist.all_reduce(total_units)
    # DDP averages gradients over processes; multiplying by world_size turns that average back into the sum,
    # so the update is the gradient of (sum of losses over the global batch) / (labelled units in it).
    denominator = total_units.clamp(min=1.0) / distributed.world_size
    model = run.wrapped
    for index, batch in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not distributed.active else model.no_sync()
        with sync:
            with _autocast(run):
                loss = run.job.compute_loss(model, batch)
            # An empty micro-batch (no masked token) has a NaN mean; it contributes nothing.
            loss = torch.where(units[index] > 0, loss.float(), torch.zeros_like(loss, dtype=torch.float32))
            run.scaler.scale(loss * (units[index] / denominator).float()).backward()
        window.loss_sum += loss.detach().double() * units[index]
        window.units += units[index]
        window.tokens += tokens[index]
    if run.settings.max_grad_norm > 0:
        run.scaler.unscale_(run.optimizer)
        if hasattr(model, "clip_grad_norm_"):  # FSDP: the norm of the sharded gradients
            window.grad_norm = model.clip_grad_norm_(run.settings.max_grad_norm)
        else:
            window.grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), run.settings.max_grad_norm)
    window.lr = run.optimizer.param_groups[-1]["lr"]
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    window.steps += 1


def _autocast(run: RunState) -> contextlib.AbstractContextManager:
    if run.precision is None:
        return contextlib.nullcontext()
    return torch.autocast(run.device.type, dtype=run.precision)


def _after_step(run: RunState) -> bool:
    """Evaluate, log and save as the settings say after a step; whether training is finished."""
    settings, progress = run.settings, run.progress
    finished = progress.step >= run.total_steps
    evaluated = run.job.evaluate is not None and (
        finished or progress.step % (settings.eval_every or run.steps_per_epoch) == 0  # 0: at every epoch's end
    )
    record = None
    if evaluated or finished or progress.step % settings.log_every == 0:
        record = run.window.record(progress.step, progress.epoch, run.distributed)
    paused = time.perf_counter()  # evaluation and saving do not count in training throughput
    if evaluated:
        metrics = _evaluate(run)
        record.update(metrics)
        _track_best(run, metrics)
        finished = finished or progress.stopped_early
    run.metrics.step(record)
    if finished or (settings.save_every and progress.step % settings.save_every == 0):
        save_checkpoint(run)
    run.window.excluded += time.perf_counter() - paused
    return finished


def _evaluate(run: RunState) -> dict[str, float]:
    # Evaluation must not move the training's random streams, so that evaluating more or less often (or
    # resuming right after an evaluation) leaves the training losses unchanged.
    states = random_states()
    target = run.wrapped if is_fsdp(run.wrapped) else unwrap(run.wrapped)
    target.eval()
    try:
        with torch.no_grad(), _autocast(run):
            metrics = {key: float(value) for key, value in run.job.evaluate(target).items()}  # type: ignore[misc]
    finally:
        target.train()
        set_random_states(states)
    return run.distributed.broadcast(metrics)


def best_mode(settings: TrainSettings) -> str:
    """"min" or "max": `--best-mode`, where "auto" means min for a loss and max for any other metric.

    Example:
        >>> best_mode(TrainSettings(best_metric="val_f1"))
        'max'
    """
    if settings.best_mode != "auto":
        return settings.best_mode
    return "min" if settings.best_metric.endswith("loss") else "max"


def _track_best(run: RunState, metrics: dict[str, float]) -> None:
    settings, progress = run.settings, run.progress
    if not settings.best_metric:
        return
    if settings.best_metric not in metrics:
        raise ValueError(f"best_metric {settings.best_metric!r} is not among the evaluation metrics {sorted(metrics)}")
    value = metrics[settings.best_metric]
    better = progress.best_value is None or (
        value < progress.best_value if best_mode(settings) == "min" else value > progress.best_value
    )
    if better:
        progress.best_value, progress.best_step = value, progress.step
        progress.best_metrics = dict(metrics, step=progress.step)
        progress.bad_evaluations = 0
        save_best(run)
    else:
        progress.bad_evaluations += 1
        if settings.early_stopping and progress.bad_evaluations >= settings.early_stopping:
            progress.stopped_early = True
            if run.distributed.main:
                log.info("early stopping at step %d: %s has not improved for %d evaluations (best %s at step %s)",
                         progress.step, settings.best_metric, progress.bad_evaluations, progress.best_value,
                         progress.best_step)


def _finish(run: RunState) -> TrainResult:
    """Write model/ (links to the best model or the last checkpoint) and the curves."""
    settings, progress, output_dir = run.settings, run.progress, run.output_dir
    best_dir = output_dir / "best" if (output_dir / "best").is_dir() else None
    source = None
    if settings.restore_best and best_dir is not None:
        if not is_fsdp(run.wrapped):  # FSDP's parameters are sharded views: model/ links to best/ only
            load_model_weights(run.model, best_dir)
        source = best_dir
    elif run.distributed.main:
        last = checkpoints(output_dir)[-1:]
        if last and int(last[0].name.removeprefix("step-")) == progress.step:
            source = last[0] / "model"
    source = run.distributed.broadcast(source)
    model_dir = save_final_model(run, source)
    if run.distributed.main and settings.plot:
        plot_curves(run.metrics.history, output_dir / "curves.png")
    run.distributed.barrier()
    return TrainResult(
        step=progress.step,
        epoch=progress.epoch,
        model_dir=model_dir,
        best_dir=best_dir,
        best_metrics=dict(progress.best_metrics),
        stopped_early=progress.stopped_early,
        history=list(run.metrics.history),
        model=run.model,
    )

