"""Fine-tuning tasks: each brings its featurizer, collator, post-processing and metric; the model and the
training loop are shared.

    text -> Tokenizer -> task.featurize -> collate (padded batch) -> model -> task.predict -> task.score

Every task class has the same methods, which `berta.train.finetune` calls in this order:

- `read(path)` -> examples (the file readers of `berta.data.readers`)
- `fit_labels(examples)` -> the label set of the training data, stored in the checkpoint's `id2label`
- `featurize(examples)` -> features: dicts of token ids (and labels when the examples have them)
- `collate(features)` -> a padded batch of tensors the model takes, labels included
- `predict(model, examples, batch_size)` -> one prediction per example
- `score(examples, predictions)` -> metric name -> value, with `number` (examples scored)
- `records(examples, predictions)` -> the rows of `predictions.jsonl`

The pieces here are shared: padding a batch, length-bucketed batching, and running a model over features.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

TASK_NAMES = ("classification", "tokens", "qa")


def pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pad ragged rows of ids to the longest: (batch, longest).

    Example:
        >>> pad([[5, 6, 7], [8]], 0).tolist()
        [[5, 6, 7], [8, 0, 0]]
    """
    longest = max(len(row) for row in rows)
    out = torch.full((len(rows), longest), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def collate_inputs(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask` and (when the features carry them) `token_type_ids` of a padded batch.

    Example:
        >>> collate_inputs([{"input_ids": [0, 9, 2]}, {"input_ids": [0, 2]}], pad_id=1)["attention_mask"].tolist()
        [[1, 1, 1], [1, 1, 0]]
    """
    input_ids = pad([f["input_ids"] for f in features], pad_id)
    lengths = torch.tensor([len(f["input_ids"]) for f in features])
    # From the lengths, never from `input_ids != pad_id`: a pad id inside a text would be masked.
    attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "token_type_ids" in features[0]:
        batch["token_type_ids"] = pad([f["token_type_ids"] for f in features], 0)
    return batch


def length_batches(
    lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0, pool: int = 50
) -> list[list[int]]:
    """Index batches of similar lengths, so padded batches waste little work.

    With `shuffle`, indices are shuffled, cut into pools of `pool` batches, each pool sorted by length and
    cut into batches, and the batches shuffled again: every epoch (seed) gives another order, the same
    seed the same order. Without `shuffle`, all indices are sorted by length (inference).

    Example:
        >>> length_batches([5, 1, 4, 2], batch_size=2, shuffle=False)
        [[1, 3], [2, 0]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = list(range(len(lengths)))
    if not shuffle:
        indices.sort(key=lambda i: lengths[i])
        return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    generator = random.Random(seed)
    generator.shuffle(indices)
    batches = []
    step = batch_size * pool
    for start in range(0, len(indices), step):
        chunk = sorted(indices[start : start + step], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    generator.shuffle(batches)
    return batches


class BucketedBatches:
    """An iterable of training batches: length-bucketed, reshuffled every epoch from (seed, epoch).

    Example:
        >>> batches = BucketedBatches(features, task.collate, batch_size=32, seed=0)  # doctest: +SKIP
        >>> for batch in batches: model(**batch).loss.backward()  # doctest: +SKIP
    """

    def __init__(
        self,
        features: Sequence[dict[str, Any]],
        collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]],
        batch_size: int,
        seed: int = 0,
    ):
        if not features:
            raise ValueError("no training features: the training file gave no examples")
        self.features = features
        self.collate = collate
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self._lengths = [len(f["input_ids"]) for f in features]

    def __len__(self) -> int:
        return -(-len(self.features) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # Each pass is a new epoch with its own order; the order depends only on (seed, epoch).
        order = length_batches(self._lengths, self.batch_size, shuffle=True, seed=self.seed * 100_003 + self.epoch)
        self.epoch += 1
        for indices in order:
            yield self.collate([self.features[i] for i in indices])


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors of `batch` that the model's forward takes as inputs (labels dropped), on `device`."""
    names = ("input_ids", "attention_mask", "token_type_ids")
    return {name: batch[name].to(device) for name in names if name in batch}


def run_model(
    model: nn.Module,
    features: Sequence[dict[str, Any]],
    collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]],
    outputs: Sequence[str],
    batch_size: int = 64,
    per_token: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Run `model` over features in length-sorted batches; per feature, the named outputs as float32 arrays.

    `per_token` outputs ((batch, seq, ...) tensors such as token logits) are cut to each feature's length.
    The model is put in eval mode; results come back in the order of `features`.

    Example:
        >>> rows = run_model(model, features, task.collate, ["logits"])  # doctest: +SKIP
        >>> rows[0]["logits"].shape
        (2,)
    """
    model.eval()
    device = next(model.parameters()).device
    results: list[dict[str, np.ndarray] | None] = [None] * len(features)
    lengths = [len(f["input_ids"]) for f in features]
    with torch.inference_mode():
        for indices in length_batches(lengths, batch_size, shuffle=False):
            batch = collate([features[i] for i in indices])
            output = model(**model_inputs(batch, device))
            values = {name: getattr(output, name).float().cpu().numpy() for name in outputs}
            for row, index in enumerate(indices):
                results[index] = {
                    name: value[row, : lengths[index]] if per_token else value[row] for name, value in values.items()
                }
    return results  # type: ignore[return-value]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed stably. Example: `softmax(np.zeros(2)).tolist() == [0.5, 0.5]`."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def task_class(name: str) -> type:
    """The task class for a task name: "classification", "tokens" or "qa".

    Example:
        >>> task_class("tokens").__name__
        'TokenTask'
    """
    if name == "classification":
        from berta.tasks.classification import ClassificationTask

        return ClassificationTask
    if name == "tokens":
        from berta.tasks.tokens import TokenTask

        return TokenTask
    if name == "qa":
        from berta.tasks.qa import QATask

        return QATask
    raise ValueError(f"unknown task {name!r}; tasks are {list(TASK_NAMES)}")
