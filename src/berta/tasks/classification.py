"""Sequence classification: single texts and text pairs (NLI, paraphrase); multi-class, multi-label, regression.

The problem type follows the training labels (or `problem_type`): one label per row is multi-class, a list
of labels per row (a JSON array in JSONL) is multi-label, and numbers with a fraction (STS-B's 3.8) are a
regression target. The label set is the training data's, in `berta.data.readers.label_vocabulary` order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from berta import metrics
from berta.config import PROBLEM_TYPES, EncoderConfig
from berta.data.readers import TextExample, read_table
from berta.model import SequenceClassifier
from berta.tasks.base import Options, Task, collate_inputs, register, run_model, softmax
from berta.tasks.labels import LabelVocabulary, label_vocabulary
from berta.tokenizer import Tokenizer

SINGLE_LABEL, MULTI_LABEL, REGRESSION = PROBLEM_TYPES
# The metric that selects the best model, per problem type.
_MAIN_METRIC = {SINGLE_LABEL: "accuracy", MULTI_LABEL: "micro_f1", REGRESSION: "spearman"}


@dataclass(kw_only=True)
class ClassificationOptions(Options):
    text_column: str = field(default="text", metadata={"help": "column of the text"})
    text_pair_column: str | None = field(
        default=None, metadata={"help": "column of the second text of a pair (NLI, paraphrase)"}
    )
    label_column: str = field(default="label", metadata={"help": "column of the label(s)"})


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def infer_problem_type(examples: Sequence[TextExample]) -> str:
    """Multi-label when any row holds a list of labels, regression when every label is a number and some
    have a fraction, otherwise multi-class (so "0"/"1" labels stay classes).

    Example:
        >>> infer_problem_type([TextExample("a", None, "3.8", "f", 2), TextExample("b", None, "1", "f", 3)])
        'regression'
    """
    labels = [e.label for e in examples if e.label is not None]
    if any(isinstance(label, list) for label in labels):
        return MULTI_LABEL
    values = [_number(label) for label in labels]  # type: ignore[arg-type]
    if labels and all(v is not None for v in values) and any(v != int(v) for v in values):  # type: ignore[arg-type]
        return REGRESSION
    return SINGLE_LABEL


@register
class ClassificationTask(Task):
    """Featurize, collate, predict and score sequence classification.

    Example:
        >>> task = ClassificationTask(Tokenizer.from_pretrained("roberta"), max_length=64)
        >>> train = task.read("train.csv")  # doctest: +SKIP
        >>> id2label = task.fit_labels(train)  # {0: 'fresh', 1: 'rotten'}  # doctest: +SKIP
    """

    name = "classification"
    model_class = SequenceClassifier
    heads = {
        "bert": {"head.classifier.weight": "classifier.weight", "head.classifier.bias": "classifier.bias"},
        "roberta": {
            "head.dense.weight": "classifier.dense.weight",
            "head.dense.bias": "classifier.dense.bias",
            "head.out_proj.weight": "classifier.out_proj.weight",
            "head.out_proj.bias": "classifier.out_proj.bias",
        },
    }
    architecture_suffix = "ForSequenceClassification"
    methods = ("classify",)
    needs_labels = True
    # GLUE-style sentences and pairs fit 128 tokens (RoBERTa's GLUE runs use up to 512; 128 is BERT's default).
    default_max_length = 128
    options = ClassificationOptions
    outputs, per_token = ("logits",), False

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_length: int = 128,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        problem_type: str | None = None,
        id2label: Mapping[int, str] | None = None,
        average: str = "macro",
        threshold: float = 0.5,
    ):
        if problem_type is not None and problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type {problem_type!r} is not one of {PROBLEM_TYPES}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.text_column = text_column
        self.text_pair_column = text_pair_column
        self.label_column = label_column
        self.problem_type = problem_type
        self.average = average
        self.threshold = threshold  # multi-label: a label is predicted when its probability exceeds this
        self.vocabulary = LabelVocabulary.from_id2label(id2label) if id2label else None

    @classmethod
    def from_options(cls, tokenizer: Tokenizer, options: Any, id2label: Mapping[int, str] | None = None,
                     problem_type: str | None = None) -> ClassificationTask:
        own = cls.own_options(options)
        return cls(tokenizer, cls.length(options), own.text_column, own.text_pair_column, own.label_column,
                   problem_type=problem_type, id2label=id2label)

    @classmethod
    def from_checkpoint(cls, tokenizer: Tokenizer, options: Any, config: EncoderConfig) -> ClassificationTask:
        # transformers' rule when the config does not say: one output is a regression, more are classes.
        problem_type = config.problem_type or (REGRESSION if config.num_labels == 1 else SINGLE_LABEL)
        return cls.from_options(tokenizer, options, id2label=config.id2label or None, problem_type=problem_type)

    def main_metric(self) -> str:
        return _MAIN_METRIC[self.problem_type or SINGLE_LABEL]

    def configure_model(self, model: nn.Module) -> None:
        model.config.problem_type = self.problem_type  # type: ignore[union-attr]  # the loss follows it

    # -- data ----------------------------------------------------------------------------------------

    def read(self, path: str | Path, labelled: bool = True) -> list[TextExample]:
        """Examples of a CSV / TSV / JSONL file, with labels unless `labelled=False`."""
        return read_table(path, self.text_column, self.text_pair_column, self.label_column if labelled else None,
                          encoding=self.encoding)

    def fit_labels(self, examples: Sequence[TextExample]) -> dict[int, str]:
        """Set the problem type and the label set from training examples; returns `id2label`."""
        if self.problem_type is None:
            self.problem_type = infer_problem_type(examples)
        if self.problem_type == REGRESSION:
            self.vocabulary = LabelVocabulary((self.label_column,))  # one output: the predicted value
        else:
            self.vocabulary = label_vocabulary(examples)
        return self.vocabulary.id2label

    @property
    def id2label(self) -> dict[int, str]:
        return self._labels().id2label

    def _labels(self) -> LabelVocabulary:
        if self.vocabulary is None:
            raise ValueError("the task has no label set yet: call fit_labels(training examples) or pass id2label")
        return self.vocabulary

    def _target(self, example: TextExample) -> int | float | list[float]:
        if self.problem_type == REGRESSION:
            value = _number(example.label) if isinstance(example.label, str) else None
            if value is None:
                raise ValueError(
                    f"{example.path} line {example.line}: label {example.label!r} in column "
                    f"{self.label_column!r} is not a number, but the task is regression"
                )
            return value
        ids = self._labels().encode(example)
        if self.problem_type == MULTI_LABEL:
            hot = [0.0] * len(self.id2label)
            for i in [ids] if isinstance(ids, int) else ids:
                hot[i] = 1.0
            return hot
        if isinstance(ids, list):
            raise ValueError(
                f"{example.path} line {example.line}: {len(ids)} labels in one row, but the task is "
                "single-label (train on rows with label lists to make it multi-label)"
            )
        return ids

    def featurize(self, examples: Sequence[TextExample]) -> list[dict[str, Any]]:
        """Token ids (truncated to `max_length`) and, for labelled examples, the target of each example."""
        pairs = [e.text_pair or "" for e in examples] if self.text_pair_column else None
        batch = self.tokenizer(
            [e.text for e in examples], pairs, padding=False, truncation=True, max_length=self.max_length
        )
        features = []
        for i, example in enumerate(examples):
            feature: dict[str, Any] = {"input_ids": batch["input_ids"][i]}
            if self.tokenizer.has_token_types:
                feature["token_type_ids"] = batch["token_type_ids"][i]
            if example.label is not None:
                feature["labels"] = self._target(example)
            features.append(feature)
        return features

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """A padded batch: `input_ids`, `attention_mask` (`token_type_ids`) and `labels` when present."""
        batch = collate_inputs(features, self.tokenizer.pad_id)
        if "labels" in features[0]:
            dtype = torch.long if self.problem_type == SINGLE_LABEL else torch.float
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=dtype)
        return batch

    # -- prediction and scoring ------------------------------------------------------------------------

    def predict(self, model: nn.Module, examples: Sequence[TextExample], batch_size: int = 64) -> list[dict]:
        """Per example: `label` and `probabilities` (multi-class), `labels` and `probabilities` (multi-label)
        or `value` (regression)."""
        features = self.featurize([TextExample(e.text, e.text_pair, None, e.path, e.line) for e in examples])
        rows, _ = run_model(model, features, self.collate, self.outputs, batch_size)
        return self.decode(examples, features, rows)

    def decode(
        self, examples: Sequence[TextExample], features: Sequence[dict], rows: Sequence[dict[str, np.ndarray]]
    ) -> list[dict]:
        """Predictions from the model's logits for each feature (one feature per example)."""
        names = self.id2label
        predictions = []
        for row in rows:
            logits = row["logits"]
            if self.problem_type == REGRESSION:
                predictions.append({"value": float(logits[0])})
            elif self.problem_type == MULTI_LABEL:
                probabilities = 1.0 / (1.0 + np.exp(-logits))
                predictions.append({
                    "labels": [names[i] for i in range(len(names)) if probabilities[i] > self.threshold],
                    "probabilities": {names[i]: float(p) for i, p in enumerate(probabilities)},
                })
            else:
                probabilities = softmax(logits)
                predictions.append({
                    "label": names[int(np.argmax(logits))],
                    "probabilities": {names[i]: float(p) for i, p in enumerate(probabilities)},
                })
        return predictions

    def score(self, examples: Sequence[TextExample], predictions: Sequence[dict]) -> dict[str, Any]:
        """Accuracy, precision / recall / F1 (`average`), MCC (multi-class); micro figures over (example, label)
        decisions plus exact-match accuracy (multi-label); Pearson / Spearman / MSE (regression)."""
        for example in examples:
            self._target(example)  # an unknown or malformed gold label fails here, naming its file and line
        if self.problem_type == REGRESSION:
            return metrics.regression(predictions=[p["value"] for p in predictions],
                                      references=[float(e.label) for e in examples])
        if self.problem_type == MULTI_LABEL:
            names = list(self.id2label.values())
            predicted = [[int(name in p["labels"]) for name in names] for p in predictions]
            gold = [[int(name in e.label) for name in names] for e in examples]
            # Pooling every (example, label) decision gives scikit-learn's average="micro" for multi-label.
            pooled = metrics.classification(predictions=[x for row in predicted for x in row],
                                            references=[x for row in gold for x in row], average="binary")
            return {
                "exact_match": float(np.mean([p == g for p, g in zip(predicted, gold, strict=True)])),
                "micro_precision": pooled["precision"],
                "micro_recall": pooled["recall"],
                "micro_f1": pooled["f1"],
                "number": len(examples),
            }
        return metrics.classification(predictions=[p["label"] for p in predictions],
                                      references=[e.label for e in examples], average=self.average)

    def draw(self, examples: Sequence[TextExample], predictions: Sequence[dict], directory: Path,
             suffix: str = "") -> None:
        """`confusion_matrix{suffix}.png` for single-label classification (rows: true label, columns: prediction)."""
        # Imported here: `berta.viz` (the attention viewer) loads checkpoints, which load the task registry.
        from berta.viz.plots import plot_confusion_matrix

        if self.problem_type == SINGLE_LABEL:
            plot_confusion_matrix([p["label"] for p in predictions], [e.label for e in examples],
                                  list(self.id2label.values()), Path(directory) / f"confusion_matrix{suffix}.png")

    def records(self, examples: Sequence[TextExample], predictions: Sequence[dict]) -> list[dict[str, Any]]:
        """One JSON-ready row per example: where it came from, its text(s), gold label and prediction."""
        rows = []
        for example, prediction in zip(examples, predictions, strict=True):
            row: dict[str, Any] = {"line": example.line, "text": example.text}
            if example.text_pair is not None:
                row["text_pair"] = example.text_pair
            if example.label is not None:
                row["gold"] = example.label
            rows.append({**row, **prediction})
        return rows
