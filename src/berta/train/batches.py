"""Batches: which samples make each micro-batch, and how many labelled units (the loss denominator) it holds.

Data order. Each epoch's order is a permutation drawn from (seed, epoch) (`berta.seeding.seeded_generator`).
An optimizer step consumes the next `batch_size * grad_accum * world_size` samples of that order (the global
batch); micro-step `a` of rank `r` takes the slice `(a * world_size + r) * batch_size` of it. The collator is
called as `collate(samples, indices, epoch)` so its randomness (dynamic masking) can be derived from (seed,
epoch, index). The data position is therefore just (epoch, samples consumed in the epoch) — which is what a
checkpoint stores.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from berta.config import IGNORE_INDEX
from berta.seeding import seeded_generator
from berta.train.settings import TrainSettings

Collate = Callable[[list[Any], list[int], int], dict[str, Any]]


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
        return selected.ne(IGNORE_INDEX).sum()
    for value in batch.values():
        if isinstance(value, Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError(f"cannot count the examples of a batch with keys {sorted(batch)}: it holds no tensor")


def token_count(batch: dict[str, Any]) -> int | Tensor:
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
    return seeded_generator(seed, epoch).permutation(num_samples).tolist()


class MicroBatches(torch.utils.data.Dataset):
    """The micro-batches of one rank for the rest of one epoch, item k = micro-step k (see the module docstring)."""

    def __init__(self, data: Sequence[Any], collate: Collate, order: list[int], *, start: int, epoch: int,
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


def micro_batch_iterator(source: MicroBatches, settings: TrainSettings) -> Iterator[dict[str, Any]]:
    """The micro-batches of `source` in order, collated in `num_workers` worker processes when asked."""
    if settings.num_workers == 0:
        return (source[k] for k in range(len(source)))
    # A private generator: the DataLoader draws its worker seed from it, not from the global torch RNG that
    # dropout uses — otherwise creating the iterator mid-epoch (on resume) would shift every later dropout mask.
    loader = torch.utils.data.DataLoader(
        source, batch_size=None, shuffle=False, num_workers=settings.num_workers, collate_fn=_identity,
        generator=torch.Generator().manual_seed(settings.seed), persistent_workers=False,
        worker_init_fn=_ignore_interrupts,
    )
    return iter(loader)


def _identity(item: Any) -> Any:
    return item


def _ignore_interrupts(worker: int) -> None:
    # Ctrl-C reaches the whole process group; the main process saves and stops, so its workers must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
