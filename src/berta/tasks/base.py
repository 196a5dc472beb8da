"""What a task is, the registry of tasks, and the pieces every task shares.

A task is ONE file under `berta/tasks/`: a `Task` subclass that declares its facts as class attributes (name,
model class, Hugging Face head names per family, architecture suffix, default length, options dataclass) and
implements the data half of fine-tuning. Decorating it with `@register` is its whole registration: `finetune`,
`evaluate`, `berta.load`, the checkpoint name tables and the CLI all read `TASKS`.

    text -> Tokenizer -> task.featurize -> task.collate (padded batch) -> model -> task.decode -> task.score

`berta.train.finetune` calls, in this order:

- `from_options(tokenizer, options, id2label, problem_type)` -> the configured task
- `read(path)` -> examples (through `berta.io`)
- `fit_labels(examples)` -> the label set of the training data, stored in the checkpoint's `id2label`
- `featurize(examples)` -> features: dicts of token ids (and labels when the examples have them)
- `collate(features)` -> a padded batch of tensors the model takes, labels included
- `predict(model, examples, batch_size)` -> one prediction per example (`featurize` + `run_model` + `decode`)
- `score(examples, predictions)` -> metric name -> value, with `number` (examples scored)
- `records(examples, predictions)` -> the rows of `predictions.jsonl`

Two model-only tasks have no data half: `encoder` (the bare encoder) and `masked-lm` (pretraining's model).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from berta.config import IGNORE_INDEX, EncoderConfig
from berta.model import init_weights
from berta.seeding import seeded_generator
from berta.tokenizer import Tokenizer

# ------------------------------------------------------------------------------------------- the Task type


@dataclasses.dataclass(kw_only=True)
class Options:
    """Options every fine-tuning task has; a task's own options dataclass extends this one."""

    max_length: int | None = dataclasses.field(
        default=None,
        metadata={"min": 8,
                  "help": "tokens per sequence (QA: per window), special tokens included (default: the task's)"},
    )
    encoding: str = dataclasses.field(default="utf-8", metadata={"help": "text encoding of the data files"})


class Task:
    """A task: what its checkpoints look like (class attributes) and, for fine-tuning tasks, its data half.

    Class attributes every task declares:
    - `name`: the task's name on the command line and in code ("classification")
    - `model_class`: the berta model class (`berta.model`)
    - `heads`: berta parameter name -> Hugging Face name of the head, per family style: "bert" (BERT) and
      "roberta" (RoBERTa, XLM-R, CamemBERT); the encoder's own names are shared (`berta.checkpoints.hf`)
    - `architecture_suffix`: `transformers`' class name after the family prefix ("ForSequenceClassification")
    - `default_max_length`: tokens per sequence when `--max-length` is not given
    - `options`: the options dataclass (an `Options` subclass), which becomes CLI options of finetune/evaluate
    - `fine_tunable`: False for the model-only tasks (no data half)
    - `needs_labels`: the head has one output per label, so a new head needs `id2label`
    - `methods`: the `berta.pipeline` methods its models serve (`classify`, `tag`, ...)
    - `outputs`, `per_token`: the model outputs `decode` reads, and whether they are per token
    """

    name: ClassVar[str]
    model_class: ClassVar[type[nn.Module]]
    heads: ClassVar[Mapping[str, Mapping[str, str]]]
    architecture_suffix: ClassVar[str]
    default_max_length: ClassVar[int] = 512
    options: ClassVar[type[Options]] = Options
    fine_tunable: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = False  # the head's size is the number of labels (id2label)
    methods: ClassVar[tuple[str, ...]] = ("embed",)  # what `berta.pipeline` serves for this task's models
    outputs: ClassVar[tuple[str, ...]] = ("logits",)
    # The exported graph (berta export onnx): each output's dynamic axes, and the inputs' axes.
    output_axes: ClassVar[Mapping[str, Mapping[int, str]]] = {"logits": {0: "batch"}}
    input_axes: ClassVar[tuple[str, ...]] = ("batch", "seq")
    per_token: ClassVar[bool] = False
    max_length: int
    encoding: str = "utf-8"  # of the files `read` reads; `finetune` / `evaluate` set it from --encoding

    @classmethod
    def from_options(cls, tokenizer: Tokenizer, options: Any, id2label: Mapping[int, str] | None = None,
                     problem_type: str | None = None) -> Task:
        """The task configured from any object with the fields of `cls.options` (finetune/evaluate settings)."""
        raise NotImplementedError(f"{cls.name} is a model-only task: it cannot be fine-tuned")

    @classmethod
    def from_checkpoint(cls, tokenizer: Tokenizer, options: Any, config: EncoderConfig) -> Task:
        """The task configured for a fine-tuned checkpoint: its labels and problem type come from the config."""
        return cls.from_options(tokenizer, options, id2label=config.id2label or None, problem_type=config.problem_type)

    def fit_evaluation(self, examples: Sequence[Any]) -> None:
        """What scoring learns from the evaluated file itself (SQuAD v2: whether questions may have no answer)."""

    @classmethod
    def own_options(cls, options: Any) -> Any:
        """`cls.options` filled from the same-named attributes of `options` (the job's settings)."""
        return cls.options(**{f.name: getattr(options, f.name) for f in dataclasses.fields(cls.options)
                              if hasattr(options, f.name) or f.default is dataclasses.MISSING})

    @classmethod
    def length(cls, options: Any) -> int:
        return getattr(options, "max_length", None) or cls.default_max_length

    def main_metric(self) -> str:
        """The validation metric (without `val_`) that selects the best model."""
        raise NotImplementedError

    def draw(self, examples: Sequence[Any], predictions: Sequence[dict], directory: Path, suffix: str = "") -> None:
        """Figures of an evaluation, written into `directory` beside `predictions{suffix}.jsonl` (none by default)."""

    def configure_model(self, model: nn.Module) -> None:
        """Settings the model takes from the task before training (the classification loss's problem type)."""

    @classmethod
    def head_table(cls, config: EncoderConfig) -> Mapping[str, str]:
        """The head's berta name -> Hugging Face name for this config's family."""
        return cls.heads["bert" if config.family == "bert" else "roberta"]


TASKS: dict[str, type[Task]] = {}
TaskType = TypeVar("TaskType", bound=type[Task])


def register(task: TaskType) -> TaskType:
    """Class decorator: add a task to `TASKS` (its name must be new)."""
    if task.name != getattr(task.model_class, "task", None):
        raise ValueError(f"task {task.name!r}: its model class {task.model_class.__name__} says task "
                         f"{getattr(task.model_class, 'task', None)!r}")
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is registered twice: {TASKS[task.name]} and {task}")
    TASKS[task.name] = task
    return task


def get(name: str) -> type[Task]:
    """The task class registered under `name`.

    Example:
        >>> get("tokens").__name__
        'TokenTask'
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks are {sorted(TASKS)}")
    return TASKS[name]


def fine_tunable() -> list[str]:
    """Names of the tasks `finetune` and `evaluate` take, in registration order.

    Example:
        >>> fine_tunable()
        ['classification', 'multiple-choice', 'qa', 'tokens']
    """
    return [name for name, task in TASKS.items() if task.fine_tunable]


def task_of_model(model: nn.Module) -> type[Task]:
    """The registered task whose model class `model` is."""
    for task in TASKS.values():
        if type(model) is task.model_class:
            return task
    raise ValueError(f"{type(model).__name__} is not the model class of any task; tasks are {sorted(TASKS)}")


def create(config: EncoderConfig, task: str = "encoder") -> nn.Module:
    """A freshly initialised model for `task` (a name in `TASKS`).

    Example:
        >>> model = create(EncoderConfig.preset("tiny"), "masked-lm")
        >>> type(model).__name__
        'MaskedLM'
    """
    return init_weights(get(task).model_class(config), config)


def combined_options() -> type:
    """One dataclass with the options of every fine-tuning task (the CLI of `finetune` / `evaluate`).

    A field several tasks share must have the same type and default; its help names the tasks that use it.
    """
    merged: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    types: dict[str, Any] = {}
    for name in fine_tunable():
        hints = typing.get_type_hints(get(name).options)  # real types: the fields' annotations are strings
        for option in dataclasses.fields(get(name).options):
            if option.name in merged:
                first, users = merged[option.name]
                if first.default != option.default or types[option.name] != hints[option.name]:
                    raise TypeError(f"option {option.name!r} differs between tasks {users} and {name!r}")
                users.append(name)
            else:
                merged[option.name] = (option, [name])
                types[option.name] = hints[option.name]
    fields = []
    for option, users in merged.values():
        shared = dataclasses.fields(Options)
        help_text = option.metadata.get("help", "")
        if option.name == "max_length":
            lengths = ", ".join(f"{get(n).default_max_length} {n}" for n in fine_tunable())
            help_text = f"{help_text.split(' (default')[0]} (default: {lengths})"
        elif option.name not in {f.name for f in shared}:
            help_text = f"{'/'.join(users)}: {help_text}"
        default = {"default": option.default} if option.default is not dataclasses.MISSING else {
            "default_factory": option.default_factory}
        fields.append((option.name, types[option.name], dataclasses.field(**default, metadata={**option.metadata,
                                                                                        "help": help_text})))
    return dataclasses.make_dataclass("TaskOptions", fields, kw_only=True)


# ------------------------------------------------------------------------------------------- shared pieces


def feature_length(feature: Mapping[str, Any]) -> int:
    """Tokens of a feature: its `length` when it has several rows (multiple choice), else its ids."""
    return feature.get("length") or len(feature["input_ids"])

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
    generator = seeded_generator(seed, epoch)
    indices = generator.permutation(len(lengths)).tolist()
    step = batch_size * pool
    pooled = []
    for start in range(0, len(indices), step):
        pooled.extend(sorted(indices[start : start + step], key=lambda i: lengths[i]))
    batches = [pooled[i : i + batch_size] for i in range(0, len(pooled), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    full = [full[i] for i in generator.permutation(len(full))]
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
        >>> config = EncoderConfig.preset("tiny").replace(id2label={0: "no", 1: "yes"})
        >>> features = [{"input_ids": [0, 9, 8, 2]}, {"input_ids": [0, 7, 2]}]
        >>> rows, loss = run_model(create(config, "classification"), features,
        ...                        lambda batch: collate_inputs(batch, pad_id=1), ["logits"])
        >>> rows[0]["logits"].shape, loss
        ((2,), None)
    """
    model.eval()
    device = next(model.parameters()).device
    results: list[dict[str, np.ndarray] | None] = [None] * len(features)
    lengths = [feature_length(f) for f in features]
    loss_sum, units = 0.0, 0
    with torch.inference_mode():
        for indices in length_batches(lengths, batch_size):
            batch = {name: value.to(device) for name, value in collate([features[i] for i in indices]).items()}
            output = model(**batch)
            if getattr(output, "loss", None) is not None:
                labels = batch.get("labels")
                per_token_labels = labels is not None and labels.dim() > 1 and not labels.is_floating_point()
                count = int(labels.ne(IGNORE_INDEX).sum()) if per_token_labels else len(indices)
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
