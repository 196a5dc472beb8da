"""Multiple choice (RACE, SWAG, ARC): pick the right answer among a question's choices.

Each (context, question, choice) becomes one sequence: the context (or, without one, the question) first, and
the question with the choice second — a cloze question's `_` is filled with the choice, as RACE's baselines do.
The model scores every sequence and the choices of one question compete in a softmax (`berta.model.
MultipleChoice`). RoBERTa reports RACE this way (Liu et al. 2019, §5.3: 512 tokens, context first).

Input: JSON Lines, one question per line, with `question`, `choices` (a list of strings), `label` (the index
of the right choice, or its letter `A`, `B`, … as RACE writes it) and optionally `context`; the columns are
renamed with `--context-column`, `--question-column`, `--choices-column`, `--label-column`, so RACE's rows load
with `--context-column article --choices-column options --label-column answer`. The number of choices may
differ between files but is the same on every line of one file.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from berta import io
from berta.model import MultipleChoice
from berta.tasks.base import Options, Task, pad, register, run_model, softmax
from berta.tokenizer import Tokenizer


@dataclass(frozen=True)
class ChoiceExample:
    """One question with its choices; `label` is the index of the right choice (None when unlabelled)."""

    context: str | None
    question: str
    choices: list[str]
    label: int | None
    path: str
    line: int


@dataclass(kw_only=True)
class MultipleChoiceOptions(Options):
    context_column: str = field(default="context", metadata={"help": "field of the context (optional in the file)"})
    question_column: str = field(default="question", metadata={"help": "field of the question"})
    choices_column: str = field(default="choices", metadata={"help": "field of the list of choices"})
    label_column: str = field(default="label", metadata={"help": "column of the label(s)"})


def choice_index(value: Any, choices: int, where: str) -> int:
    """The index a label names: an integer, a digit string, or a letter (`A` is 0).

    Example:
        >>> choice_index("C", 4, "race.jsonl line 1"), choice_index(2, 4, "race.jsonl line 2")
        (2, 2)
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{where}: label {value!r} is neither a choice index nor a letter")
    given = value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            value = int(text)
        elif len(text) == 1 and text.upper() in string.ascii_uppercase:
            value = string.ascii_uppercase.index(text.upper())
        else:
            raise ValueError(f"{where}: label {value!r} is neither a choice index nor a letter A, B, ...")
    if not 0 <= value < choices:
        raise ValueError(f"{where}: label {given!r} names no choice; there are {choices} (0..{choices - 1} or "
                         f"A..{string.ascii_uppercase[choices - 1]})")
    return value


@register
class MultipleChoiceTask(Task):
    """Read, featurize, collate, predict and score multiple-choice questions.

    Example:
        >>> task = MultipleChoiceTask(Tokenizer.from_pretrained("roberta"), max_length=64)
        >>> feature = task.featurize([ChoiceExample(None, "2 + 2 =", ["3", "4"], 1, "mc.jsonl", 1)])[0]
        >>> len(feature["input_ids"]), feature["labels"]
        (2, 1)
    """

    name = "multiple-choice"
    model_class = MultipleChoice
    heads = {family: {"classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"}
             for family in ("bert", "roberta")}
    architecture_suffix = "ForMultipleChoice"
    methods = ("choose",)
    default_max_length = 256  # RACE articles need more (RoBERTa: 512); --max-length raises it
    options = MultipleChoiceOptions
    outputs, per_token = ("logits",), False
    output_axes = {"logits": {0: "batch", 1: "choices"}}
    input_axes = ("batch", "choices", "seq")

    def __init__(self, tokenizer: Tokenizer, max_length: int = 256, options: MultipleChoiceOptions | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.columns = options or MultipleChoiceOptions()

    @classmethod
    def from_options(cls, tokenizer: Tokenizer, options: Any, id2label: Mapping[int, str] | None = None,
                     problem_type: str | None = None) -> MultipleChoiceTask:
        return cls(tokenizer, cls.length(options), cls.own_options(options))

    def main_metric(self) -> str:
        return "accuracy"

    # -- data --------------------------------------------------------------------------------------------

    def read(self, path: str | Path, labelled: bool = True) -> list[ChoiceExample]:
        """The questions of a JSON Lines file; every line must have as many choices as the first."""
        columns = self.columns
        examples: list[ChoiceExample] = []
        for line, record in io.read_jsonl(path, self.encoding):
            where = f"{path} line {line}"
            wanted = [columns.question_column, columns.choices_column] + ([columns.label_column] if labelled else [])
            missing = [name for name in wanted if name not in record]
            if missing:
                raise ValueError(f"{where}: no field {missing}; the fields are {sorted(record)}")
            question, choices = record[columns.question_column], record[columns.choices_column]
            context = record.get(columns.context_column)
            if not isinstance(question, str) or (context is not None and not isinstance(context, str)):
                raise ValueError(f"{where}: the question and the context must be text")
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise ValueError(f"{where}: field {columns.choices_column!r} must be a list of two or more texts, "
                                 f"got {choices!r}")
            if examples and len(choices) != len(examples[0].choices):
                raise ValueError(f"{where}: {len(choices)} choices, but line {examples[0].line} has "
                                 f"{len(examples[0].choices)}; every question of a file needs the same number")
            label = choice_index(record[columns.label_column], len(choices), where) if labelled else None
            examples.append(ChoiceExample(context or None, question, choices, label, str(path), line))
        if not examples:
            raise ValueError(f"{path}: no questions in the file")
        return examples

    def fit_labels(self, examples: Sequence[ChoiceExample]) -> dict[int, str]:
        """Multiple choice has no label set: the model scores each choice; returns {}."""
        return {}

    @staticmethod
    def _second(question: str, choice: str) -> str:
        return question.replace("_", choice) if "_" in question else f"{question} {choice}".strip()

    def featurize(self, examples: Sequence[ChoiceExample]) -> list[dict[str, Any]]:
        """Per question: the ids of each choice's sequence (`input_ids` is a list of rows), its longest row as
        `length`, and the right choice as `labels`."""
        firsts, seconds = [], []
        for example in examples:
            for choice in example.choices:
                firsts.append(example.context if example.context else example.question)
                seconds.append(self._second(example.question, choice) if example.context else choice)
        batch = self.tokenizer(firsts, seconds, padding=False, truncation="longest_first",
                               max_length=self.max_length)
        features, row = [], 0
        for example in examples:
            rows = range(row, row + len(example.choices))
            row += len(example.choices)
            feature: dict[str, Any] = {"input_ids": [batch["input_ids"][i] for i in rows]}
            if self.tokenizer.has_token_types:
                feature["token_type_ids"] = [batch["token_type_ids"][i] for i in rows]
            feature["length"] = max(len(ids) for ids in feature["input_ids"])
            if example.label is not None:
                feature["labels"] = example.label
            features.append(feature)
        return features

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """A padded batch: `input_ids`, `attention_mask` (`token_type_ids`) of shape (batch, choices, longest),
        and `labels` (batch,) when present."""
        rows = [ids for f in features for ids in f["input_ids"]]
        batch, choices = len(features), len(features[0]["input_ids"])
        if any(len(f["input_ids"]) != choices for f in features):
            raise ValueError("every question of a batch needs the same number of choices")
        input_ids = pad(rows, self.tokenizer.pad_id)  # (batch * choices, longest)
        lengths = torch.tensor([len(ids) for ids in rows])
        attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
        out = {"input_ids": input_ids.view(batch, choices, -1),
               "attention_mask": attention_mask.view(batch, choices, -1)}
        if "token_type_ids" in features[0]:
            types = pad([t for f in features for t in f["token_type_ids"]], 0)
            out["token_type_ids"] = types.view(batch, choices, -1)
        if "labels" in features[0]:
            out["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return out

    # -- prediction and scoring ----------------------------------------------------------------------------

    def predict(self, model: nn.Module, examples: Sequence[ChoiceExample], batch_size: int = 64) -> list[dict]:
        """Per question: `choice` (index), `answer` (its text) and `probabilities` (one per choice)."""
        unlabelled = [ChoiceExample(e.context, e.question, e.choices, None, e.path, e.line) for e in examples]
        features = self.featurize(unlabelled)
        rows, _ = run_model(model, features, self.collate, self.outputs, batch_size)
        return self.decode(examples, features, rows)

    def decode(self, examples: Sequence[ChoiceExample], features: Sequence[dict],
               rows: Sequence[dict[str, np.ndarray]]) -> list[dict]:
        predictions = []
        for example, row in zip(examples, rows, strict=True):
            probabilities = softmax(row["logits"])
            best = int(np.argmax(row["logits"]))
            predictions.append({"choice": best, "answer": example.choices[best],
                                "probabilities": [float(p) for p in probabilities]})
        return predictions

    def score(self, examples: Sequence[ChoiceExample], predictions: Sequence[dict]) -> dict[str, Any]:
        """Accuracy over questions (RACE's metric) and `number`, the questions scored."""
        gold = [e.label for e in examples]
        if any(label is None for label in gold):
            raise ValueError("scoring needs labelled questions")
        correct = sum(p["choice"] == g for p, g in zip(predictions, gold, strict=True))
        return {"accuracy": correct / len(examples), "number": len(examples)}

    def records(self, examples: Sequence[ChoiceExample], predictions: Sequence[dict]) -> list[dict[str, Any]]:
        """One JSON-ready row per question: line, question, choices, gold choice and the prediction."""
        rows = []
        for example, prediction in zip(examples, predictions, strict=True):
            row: dict[str, Any] = {"line": example.line, "question": example.question, "choices": example.choices}
            if example.label is not None:
                row["gold"] = example.label
            rows.append({**row, **prediction})
        return rows
