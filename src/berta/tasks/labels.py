"""Label vocabularies: the label set of the training data and the ids a model's head and checkpoint use.

They live with the tasks, not the readers: a reader returns what the file says; which labels exist and how they
are numbered is the task's business.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from berta.data.readers import Sentence, TextExample


@dataclass(frozen=True)
class LabelVocabulary:
    """The label set of the training data, with the ids a model's head and checkpoint config use."""

    labels: tuple[str, ...]

    @functools.cached_property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @functools.cached_property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    @classmethod
    def from_id2label(cls, id2label: Mapping[int | str, str]) -> LabelVocabulary:
        """Rebuild the vocabulary from a checkpoint config's `id2label` (JSON keys may be strings).

        Example:
            >>> LabelVocabulary.from_id2label({"0": "neg", "1": "pos"}).label2id
            {'neg': 0, 'pos': 1}
        """
        by_id = {int(i): label for i, label in id2label.items()}
        if sorted(by_id) != list(range(len(by_id))):
            raise ValueError(f"id2label ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
        return cls(tuple(by_id[i] for i in range(len(by_id))))

    def encode(self, example: TextExample | Sentence) -> int | list[int]:
        """The id of an example's label (a list of ids for multi-label rows and for sentences' tags).

        An unknown label raises an error naming the file, line and label.

        Example:
            >>> vocabulary = LabelVocabulary(("fresh", "rotten"))
            >>> vocabulary.encode(TextExample("Two hours I will never get back.", None, "rotten", "dev.csv", 2))
            1
        """
        if isinstance(example, Sentence):
            if example.tags is None:
                raise ValueError(f"{example.path} line {example.line}: the sentence has no tags to encode")
            return [self._id(tag, example.path, example.line + i) for i, tag in enumerate(example.tags)]
        if example.label is None:
            raise ValueError(f"{example.path} line {example.line}: the example has no label to encode")
        if isinstance(example.label, list):
            return [self._id(label, example.path, example.line) for label in example.label]
        return self._id(example.label, example.path, example.line)

    def _id(self, label: str, path: str, line: int) -> int:
        if label not in self.label2id:
            raise ValueError(
                f"{path} line {line}: label {label!r} is not one of the {len(self.labels)} labels of the "
                f"training data: {list(self.labels)}"
            )
        return self.label2id[label]


def _label_order(label: str) -> tuple[int, str]:
    return (int(label), label)


_INTEGER = re.compile(r"-?[0-9]+")


def label_vocabulary(examples: Sequence[TextExample] | Sequence[Sentence]) -> LabelVocabulary:
    """The sorted label set of training examples (tags for sentences); integer labels sort by value.

    Example:
        >>> examples = [TextExample("great", None, "fresh", "train.csv", 2), TextExample("dull", None, "rotten",
        ...             "train.csv", 3), TextExample("fine", None, "fresh", "train.csv", 4)]
        >>> label_vocabulary(examples).id2label
        {0: 'fresh', 1: 'rotten'}
    """
    labels: set[str] = set()
    for example in examples:
        if isinstance(example, Sentence):
            values = example.tags
        else:
            values = [example.label] if isinstance(example.label, str) else example.label
        if values is None:
            raise ValueError(f"{example.path} line {example.line}: no label; read training data with labels")
        labels.update(values)
    if not labels:
        raise ValueError("no labels in the examples")
    # "2" before "10": numeric labels (0/1/2 in GLUE files) keep their own value as id.
    numeric = all(_INTEGER.fullmatch(label) for label in labels)
    return LabelVocabulary(tuple(sorted(labels, key=_label_order if numeric else None)))
