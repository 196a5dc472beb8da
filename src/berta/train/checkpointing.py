"""Checkpoints, the best model and the final model of a run directory, all written atomically.

    OUTPUT/checkpoints/step-0001000/   model/ (Hugging Face layout + tokenizer), trainer_state.pt, rng-R.pt, run.json
    OUTPUT/best/                       the best model by `best_metric`, with best_metrics.json
    OUTPUT/model/                      the final model (the best one with `restore_best`)

A checkpoint holds the model, the optimizer, scheduler and grad-scaler states, the random states of every rank,
the data position and the run's record (settings and data fingerprints). Each directory is filled under a
temporary name, fsynced and renamed into place (`berta.io.atomic_directory`), so a run killed at any moment
resumes from the last complete checkpoint. The main rank writes everything; the others send it what it needs.

Training state is read with `torch.load(weights_only=True)`: tensors and plain values only, so a checkpoint
file can never run code (a crafted one that asks for any other global is refused).

Disk: a model directory written at the same step as another (best/ and the checkpoint of that step, model/ and
the last checkpoint or best/) is made of hard links to the other's files, not a second copy of the bytes. Only
`keep_last` checkpoints are kept; best/ and model/ stay valid when the checkpoint they share files with goes.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from berta.io import atomic_directory, atomic_write_json, read_json
from berta.seeding import random_states
from berta.train.distributed import clean_name, fsdp_class, is_fsdp
from berta.train.state import Progress, RunState

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "trainer_state.pt"
BEST_METRICS_NAME = "best_metrics.json"
_CHECKPOINT_PREFIX = "step-"


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run directory, oldest first (temporary directories are never listed).

    Example:
        >>> checkpoints("runs/no-such-run")
        []
    """
    directory = Path(output_dir) / CHECKPOINTS_DIR
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(_CHECKPOINT_PREFIX)]
    complete = [p for p in found if (p / STATE_NAME).is_file()]
    return sorted(complete, key=lambda p: int(p.name[len(_CHECKPOINT_PREFIX) :]))


def load_training_state(path: Path) -> dict[str, Any]:
    """A `torch.save`d training state, unpickling tensors and plain values only.

    Example:
        >>> load_training_state(Path("runs/x/checkpoints/step-0000010/trainer_state.pt"))  # doctest: +SKIP
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        asked = re.search(r"GLOBAL (\S+)", str(error))
        raise ValueError(
            f"{path}: refused to load: it asks to unpickle {asked.group(1) if asked else 'a Python object'}, but a "
            "training state holds only tensors and plain values (the file was written by an earlier berta, by "
            "another program, or altered); delete the checkpoint, or run with --no-resume to move the run aside "
            "and start over"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path}: cannot read the training state ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict, got {type(state).__name__}")
    return state


def recover(output_dir: Path) -> None:
    """Put back what a run killed while saving left behind: a best/ moved aside, temporary directories."""
    for parent in (output_dir, output_dir / CHECKPOINTS_DIR):
        if not parent.is_dir():
            continue
        for aside in parent.glob(".*.old"):  # atomic_directory's "old version" of a directory being replaced
            target = parent / aside.name[1 : -len(".old")]
            if target.exists():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(aside, target)
        for stale in parent.glob(".*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)


def read_record(checkpoint: Path) -> dict[str, Any] | None:
    """The run record a checkpoint was saved with, or None for a checkpoint without one."""
    path = checkpoint / "run.json"
    return read_json(path) if path.is_file() else None


def save_checkpoint(run: RunState) -> Path:
    """Write `checkpoints/step-N` for the run's current step; every rank calls this; old ones beyond `keep_last`
    are deleted."""
    root = run.output_dir / CHECKPOINTS_DIR
    final = root / f"{_CHECKPOINT_PREFIX}{run.progress.step:07d}"
    rng = run.distributed.gather(random_states())
    state = _model_state(run)
    optimizer_state = _optimizer_state(run)
    if run.distributed.main:
        with atomic_directory(final) as directory:
            for rank, states in enumerate(rng):
                torch.save(states, directory / f"rng-{rank}.pt")
            _write_model(run, state, directory / "model")
            torch.save({
                "progress": asdict(run.progress),
                "optimizer": optimizer_state,
                "scheduler": run.scheduler.state_dict(),
                "scaler": run.scaler.state_dict(),
                "world_size": run.distributed.world_size,
            }, directory / STATE_NAME)
            atomic_write_json(directory / "run.json", run.job.record.to_json())
        run.last_model = (run.progress.step, final / "model")
        for old in checkpoints(run.output_dir)[: -run.settings.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    run.saved_step = run.progress.step
    run.distributed.barrier()
    return final


def save_best(run: RunState) -> None:
    """Write best/ (the model now, with best_metrics.json); every rank calls this."""
    state = _model_state(run)
    if run.distributed.main:
        best = run.output_dir / "best"
        with atomic_directory(best) as directory:
            _write_model(run, state, directory)
            atomic_write_json(directory / BEST_METRICS_NAME, run.progress.best_metrics)
        run.last_model = (run.progress.step, best)
    run.distributed.barrier()


def save_final_model(run: RunState, source: Path | None) -> Path:
    """Write model/ as hard links to the files of `source` (best/ or the last checkpoint's model/), or from
    the weights when there is none; every rank calls this."""
    model_dir = run.output_dir / "model"
    state = _model_state(run) if source is None else None
    if run.distributed.main:
        with atomic_directory(model_dir) as directory:
            if source is None:
                _write_model(run, state, directory)
            else:
                _link_tree(source, directory, skip=(BEST_METRICS_NAME,))
    run.distributed.barrier()
    return model_dir


def load_model_weights(model: torch.nn.Module, directory: Path) -> None:
    """Load a model directory's weights (Hugging Face layout) into `model`."""
    from berta.checkpoints.hf import load_state, read_weights

    load_state(model, read_weights(directory), str(directory))


def restore_optimizer(run: RunState, state: dict[str, Any]) -> None:
    """Load a checkpoint's optimizer, scheduler and scaler states into the run."""
    optimizer_state = state["optimizer"]
    if is_fsdp(run.wrapped):
        optimizer_state = fsdp_class().optim_state_dict_to_load(run.wrapped, run.optimizer, optimizer_state)
    run.optimizer.load_state_dict(optimizer_state)
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.progress = Progress(**state["progress"])


def _model_state(run: RunState) -> dict[str, torch.Tensor] | None:
    """FSDP: the full weights gathered on the main rank (every rank must call this). Otherwise None: the bare
    model is saved as it is."""
    if not is_fsdp(run.wrapped):
        return None
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType

    # Offloading is for GPUs; on CPU it hands back freed memory (torch 2.13 segfaults cloning it).
    on_gpu = any(p.device.type == "cuda" for p in run.wrapped.parameters())
    config = FullStateDictConfig(offload_to_cpu=on_gpu, rank0_only=True)
    with fsdp_class().state_dict_type(run.wrapped, StateDictType.FULL_STATE_DICT, config):
        state = run.wrapped.state_dict()
    return {clean_name(name): tensor for name, tensor in state.items()}


def _write_model(run: RunState, state: dict[str, torch.Tensor] | None, directory: Path) -> None:
    """The model directory of the current step: links to one written at the same step, else the weights."""
    if run.last_model is not None and run.last_model[0] == run.progress.step and run.last_model[1].is_dir():
        _link_tree(run.last_model[1], directory, skip=(BEST_METRICS_NAME,))
        return
    model = run.model
    if state is not None:
        # The wrapped module's parameters are views of FSDP's flat shards; an unsharded copy on the CPU saves.
        model = run.plain_copy()
        model.load_state_dict(state)
    if run.job.save_extras is not None:  # the tokenizer first: the model's `save` then finds it there
        run.job.save_extras(directory)
    model.save(directory)  # type: ignore[operator]


def _link_tree(source: Path, target: Path, skip: tuple[str, ...] = ()) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if relative.name in skip and path.parent == source:
            continue
        destination = target / relative
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        try:
            os.link(path, destination)
        except OSError:  # a file system without hard links: the same bytes, copied
            shutil.copy2(path, destination)


def _optimizer_state(run: RunState) -> dict[str, Any]:
    if is_fsdp(run.wrapped):
        return fsdp_class().optim_state_dict(run.wrapped, run.optimizer)  # full state, gathered on rank 0
    return run.optimizer.state_dict()


def write_settings(output_dir: Path, record: Any) -> None:
    """`train_settings.json`: the whole job that last ran in the directory, so the directory alone says how it
    was made: every setting (task, model, data paths, columns, max length...) under its field name, so that
    `--config runs/x/train_settings.json` takes it back, and under `_run` (which `--config` skips) the job, the
    berta version and the fingerprints of the base model and the data files."""
    import importlib.metadata

    about = {"job": record.job, "berta_version": importlib.metadata.version("berta"), "fingerprints": record.data}
    atomic_write_json(output_dir / "train_settings.json", {**record.settings, "_run": about})

