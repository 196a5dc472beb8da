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

`predict` is `featurize` + `run_model` + `decode(examples, features, rows)`; training jobs call the three
themselves to featurize a validation set once and get its loss in the same pass.

The pieces here are shared: padding a batch, length-bucketed batch orders, and running a model over features.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
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


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches in order of length, for inference: each batch pads to nearly its own length.

    Example:
        >>> length_batches([5, 1, 4, 2], batch_size=2)
        [[1, 3], [2, 0]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def bucketed_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, pool: int = 50) -> list[int]:
    """A training order whose consecutive runs of `batch_size` indices have similar lengths.

    The indices are shuffled from (seed, epoch), cut into pools of `pool` batches, each pool sorted by length
    and cut into batches; the full batches are shuffled and the one partial batch goes last (where the loop
    drops it). The same (seed, epoch) always gives the same order. This is the `sample_order` the training
    loop takes: it slices the order into batches of `batch_size`, so every batch is one bucket.

    Example:
        >>> order = bucketed_order([3, 9, 4, 8], batch_size=2, seed=1, epoch=0)
        >>> sorted(order[:2]) in ([0, 2], [1, 3])
        True
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = random.Random(seed * 1_000_003 + epoch)
    indices = list(range(len(lengths)))
    generator.shuffle(indices)
    step = batch_size * pool
    pooled = []
    for start in range(0, len(indices), step):
        pooled.extend(sorted(indices[start : start + step], key=lambda i: lengths[i]))
    batches = [pooled[i : i + batch_size] for i in range(0, len(pooled), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    generator.shuffle(full)
    return [i for batch in full + [b for b in batches if len(b) < batch_size] for i in batch]


def run_model(
    model: nn.Module,
    features: Sequence[dict[str, Any]],
    collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]],
    outputs: Sequence[str],
    batch_size: int = 64,
    per_token: bool = False,
) -> tuple[list[dict[str, np.ndarray]], float | None]:
    """Run `model` over features in length-sorted batches: per feature the named outputs as float32 arrays,
    and the mean loss when the features carry labels (else None).

    `per_token` outputs ((batch, seq, ...) tensors such as token logits) are cut to each feature's length.
    The loss is averaged over labelled units: tokens with a label for token tasks, examples otherwise. The
    model is put in eval mode; results come back in the order of `features`.

    Example:
        >>> rows, loss = run_model(model, features, task.collate, ["logits"])  # doctest: +SKIP
        >>> rows[0]["logits"].shape
        (2,)
    """
    model.eval()
    device = next(model.parameters()).device
    results: list[dict[str, np.ndarray] | None] = [None] * len(features)
    lengths = [len(f["input_ids"]) for f in features]
    loss_sum, units = 0.0, 0
    with torch.inference_mode():
        for indices in length_batches(lengths, batch_size):
            batch = {name: value.to(device) for name, value in collate([features[i] for i in indices]).items()}
            output = model(**batch)
            if getattr(output, "loss", None) is not None:
                labels = batch.get("labels")
                per_token_labels = labels is not None and labels.dim() > 1 and not labels.is_floating_point()
                count = int(labels.ne(-100).sum()) if per_token_labels else len(indices)
                loss_sum, units = loss_sum + float(output.loss) * count, units + count
            values = {name: getattr(output, name).float().cpu().numpy() for name in outputs}
            for row, index in enumerate(indices):
                results[index] = {
                    name: value[row, : lengths[index]] if per_token else value[row] for name, value in values.items()
                }
    return results, (loss_sum / units if units else None)  # type: ignore[return-value]


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
