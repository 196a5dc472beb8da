"""Token classification (NER, POS): one label per word, predicted on sub-tokens.

Words come pre-split (CoNLL). The tokenizer splits each word into sub-tokens; the word's label goes on its
first sub-token and the others are ignored in the loss (-100), or, with `label_all_tokens`, every sub-token
carries it (a B- tag continues as I-, as in `transformers`' run_ner). A word's prediction is read at its first
sub-token. Entity tags are decoded into spans (conlleval rules, `berta.metrics.tags_to_spans`) with character
offsets into the sentence text, the words joined by single spaces.

A sentence longer than `max_length` tokens is split into overlapping windows (`token_windows`); each token is
labelled and read in exactly one window, the one where it has context on both sides, so nothing is cut and
nothing is counted twice. `berta.pipeline(...).tag` windows raw text the same way.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from berta import metrics
from berta.config import IGNORE_INDEX
from berta.data.readers import Sentence, read_conll
from berta.model import TokenClassifier
from berta.tasks.base import Options, Task, collate_inputs, pad, register, run_model
from berta.tasks.labels import LabelVocabulary, label_vocabulary
from berta.tokenizer import Tokenizer

Scheme = Literal["IOB1", "IOB2", "BIO", "BIOES", "IOBES"]


@dataclass(kw_only=True)
class TokenOptions(Options):
    label_all_tokens: bool = field(
        default=False, metadata={"help": "label every sub-token of a word, not only the first"}
    )
    scheme: Scheme | None = field(default=None, metadata={"help": "tag scheme (default: from the tags)"})


_ENTITY_TAG = re.compile(r"[BIES]-.+")


def token_windows(length: int, room: int, stride: int | None = None) -> list[tuple[int, int, int, int]]:
    """Windows over `length` tokens: (start, end, own_start, own_end) with at most `room` tokens each,
    consecutive windows overlapping by `stride` tokens (default: half the room, at most 128).

    Every token is owned by exactly one window — the overlap is split at its middle — so a token is read where
    it has context on both sides. One window when everything fits.

    Example:
        >>> token_windows(10, room=6, stride=2)
        [(0, 6, 0, 5), (4, 10, 5, 10)]
    """
    if room < 1:
        raise ValueError(f"a window needs room for at least one token, got room={room}")
    stride = min(128, room // 2) if stride is None else stride
    if not 0 <= stride < room:
        raise ValueError(f"stride must be in 0..{room - 1} (room {room}), got {stride}")
    spans = [(0, min(length, room))]
    while spans[-1][1] < length:
        start = spans[-1][1] - stride
        spans.append((start, min(length, start + room)))
    windows = []
    for index, (start, end) in enumerate(spans):
        own_start = 0 if index == 0 else start + stride // 2
        own_end = end if index == len(spans) - 1 else spans[index + 1][0] + stride // 2
        windows.append((start, end, own_start, own_end))
    return windows


def detect_scheme(labels: Sequence[str]) -> str | None:
    """The entity scheme of a label set: "BIOES" when E-/S- tags occur, "IOB2" for B-/I- tags, None when the
    labels are not entity tags (POS tags: scored by accuracy only).

    Example:
        >>> detect_scheme(["O", "B-PER", "I-PER"]), detect_scheme(["NOUN", "VERB"])
        ('IOB2', None)
    """
    if not all(label == "O" or _ENTITY_TAG.fullmatch(label) for label in labels):
        return None
    return "BIOES" if any(label[:2] in ("E-", "S-") for label in labels) else "IOB2"


def word_offsets(words: Sequence[str]) -> list[tuple[int, int]]:
    """Character span of each word in the sentence text `" ".join(words)`.

    Example:
        >>> word_offsets(["New", "York"])
        [(0, 3), (4, 8)]
    """
    spans, start = [], 0
    for word in words:
        spans.append((start, start + len(word)))
        start += len(word) + 1
    return spans


def entity_spans(words: Sequence[str], tags: Sequence[str], scheme: str = "IOB2") -> list[dict[str, Any]]:
    """Entities of one tagged sentence with word and character offsets into `" ".join(words)`.

    Example:
        >>> entity_spans(["Ada", "Lovelace", "wrote"], ["B-PER", "I-PER", "O"])
        [{'type': 'PER', 'text': 'Ada Lovelace', 'start': 0, 'end': 12, 'first_word': 0, 'last_word': 1}]
    """
    offsets = word_offsets(words)
    text = " ".join(words)
    entities = []
    for entity_type, first, end in metrics.tags_to_spans(tags, scheme):
        start, stop = offsets[first][0], offsets[end - 1][1]
        entities.append({
            "type": entity_type, "text": text[start:stop], "start": start, "end": stop,
            "first_word": first, "last_word": end - 1,
        })
    return entities


@register
class TokenTask(Task):
    """Featurize, collate, predict and score word-level tagging.

    Example:
        >>> task = TokenTask(Tokenizer.from_pretrained("roberta"), max_length=128)
        >>> train = task.read("train.conll")  # doctest: +SKIP
        >>> task.fit_labels(train)  # {0: 'B-LOC', 1: 'B-PER', ...}  # doctest: +SKIP
    """

    name = "tokens"
    model_class = TokenClassifier
    heads = {family: {"classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"}
             for family in ("bert", "roberta")}
    architecture_suffix = "ForTokenClassification"
    methods = ("tag",)
    needs_labels = True
    default_max_length = 256  # CoNLL sentences fit; longer ones are the exception
    options = TokenOptions
    outputs, per_token = ("logits",), True
    output_axes = {"logits": {0: "batch", 1: "seq"}}

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_length: int = 256,
        id2label: Mapping[int, str] | None = None,
        label_all_tokens: bool = False,
        scheme: str | None = None,
        token_column: int = 0,
        tag_column: int = -1,
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.label_all_tokens = label_all_tokens
        self.token_column = token_column
        self.tag_column = tag_column
        self._scheme = scheme
        self.vocabulary = LabelVocabulary.from_id2label(id2label) if id2label else None

    @classmethod
    def from_options(cls, tokenizer: Tokenizer, options: Any, id2label: Mapping[int, str] | None = None,
                     problem_type: str | None = None) -> TokenTask:
        own = cls.own_options(options)
        return cls(tokenizer, cls.length(options), id2label=id2label, label_all_tokens=own.label_all_tokens,
                   scheme=own.scheme)

    def main_metric(self) -> str:
        return "f1" if self.scheme else "accuracy"  # entity F1; word accuracy for tags such as POS

    def read(self, path: str | Path, labelled: bool = True) -> list[Sentence]:
        """Sentences of a CoNLL file (tags from `tag_column` unless `labelled=False`)."""
        return read_conll(path, self.token_column, self.tag_column if labelled else None, encoding=self.encoding)

    def fit_labels(self, sentences: Sequence[Sentence]) -> dict[int, str]:
        """The tag set of the training sentences; returns `id2label`."""
        self.vocabulary = label_vocabulary(sentences)
        return self.vocabulary.id2label

    @property
    def id2label(self) -> dict[int, str]:
        if self.vocabulary is None:
            raise ValueError("the task has no tag set yet: call fit_labels(training sentences) or pass id2label")
        return self.vocabulary.id2label

    @property
    def scheme(self) -> str | None:
        """The entity scheme (given, or detected from the tag set); None for non-entity tags such as POS."""
        return self._scheme or detect_scheme(list(self.id2label.values()))

    def featurize(self, sentences: Sequence[Sentence]) -> list[dict[str, Any]]:
        """Token ids, each token's word (`word_ids`, None for special tokens) and the aligned `labels`; one
        feature per window (`example`: the sentence's index; `owned`: the positions labelled and read here)."""
        batch = self.tokenizer([s.tokens for s in sentences], is_split_into_words=True, padding=False)
        label2id = self.vocabulary.label2id if self.vocabulary is not None else {}
        features = []
        for i, sentence in enumerate(sentences):
            ids, word_ids = batch["input_ids"][i], batch.word_ids(i)
            labels = None
            if sentence.tags is not None:
                tag_ids = self.vocabulary.encode(sentence) if self.vocabulary is not None else None
                if tag_ids is None:
                    raise ValueError("the task has no tag set yet: call fit_labels(training sentences)")
                labels = self._align(word_ids, tag_ids, sentence.tags, label2id)  # type: ignore[arg-type]
            if len(ids) <= self.max_length:
                feature: dict[str, Any] = {"input_ids": ids, "word_ids": word_ids, "example": i,
                                           "owned": (0, len(ids))}
                if self.tokenizer.has_token_types:
                    feature["token_type_ids"] = batch["token_type_ids"][i]
                if labels is not None:
                    feature["labels"] = labels
                features.append(feature)
                continue
            # [CLS] content [SEP]: windows over the content, each with its own special tokens.
            for start, end, own_start, own_end in token_windows(len(ids) - 2, self.max_length - 2):
                window = range(1 + start, 1 + end)
                feature = {
                    "input_ids": [ids[0], *(ids[j] for j in window), ids[-1]],
                    "word_ids": [None, *(word_ids[j] for j in window), None],
                    "example": i,
                    "owned": (1 + own_start - start, 1 + own_end - start),
                }
                if self.tokenizer.has_token_types:
                    feature["token_type_ids"] = [0] * len(feature["input_ids"])
                if labels is not None:
                    feature["labels"] = [IGNORE_INDEX] + [
                        labels[1 + j] if own_start <= j < own_end else IGNORE_INDEX for j in range(start, end)
                    ] + [IGNORE_INDEX]
                features.append(feature)
        return features

    def _align(
        self, word_ids: list[int | None], tag_ids: list[int], tags: list[str], label2id: dict[str, int]
    ) -> list[int]:
        labels, previous = [], None
        for word in word_ids:
            if word is None:
                labels.append(IGNORE_INDEX)
            elif word != previous:
                labels.append(tag_ids[word])
            elif self.label_all_tokens:
                tag = tags[word]
                inside = "I-" + tag[2:] if tag.startswith("B-") else tag
                labels.append(label2id.get(inside, tag_ids[word]))
            else:
                labels.append(IGNORE_INDEX)
            previous = word
        return labels

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """A padded batch: `input_ids`, `attention_mask` (`token_type_ids`) and `labels` (-100 on padding)."""
        batch = collate_inputs(features, self.tokenizer.pad_id)
        if "labels" in features[0]:
            batch["labels"] = pad([f["labels"] for f in features], IGNORE_INDEX)
        return batch

    def predict(self, model: nn.Module, sentences: Sequence[Sentence], batch_size: int = 64) -> list[dict]:
        """Per sentence: `tags` (one per word) and `entities` (spans with character offsets) when the tags are
        entity tags. Sentences longer than `max_length` tokens are read in overlapping windows."""
        features = self.featurize([Sentence(s.tokens, None, s.path, s.line) for s in sentences])
        rows, _ = run_model(model, features, self.collate, self.outputs, batch_size, per_token=True)
        return self.decode(sentences, features, rows)

    def decode(
        self, sentences: Sequence[Sentence], features: Sequence[dict], rows: Sequence[dict[str, np.ndarray]]
    ) -> list[dict]:
        """Per-word tags (and entities) from the token logits of each sentence's windows."""
        names, scheme = self.id2label, self.scheme
        outside = "O" if "O" in names.values() else names[0]
        windows: list[list[tuple[dict, dict[str, np.ndarray]]]] = [[] for _ in sentences]
        for feature, row in zip(features, rows, strict=True):
            windows[feature["example"]].append((feature, row))
        predictions, missing = [], 0
        for sentence, found in zip(sentences, windows, strict=True):
            tags = [outside] * len(sentence.tokens)
            seen = set()
            for feature, row in found:  # in order: a word's first owned token is its first sub-token
                first, last = feature["owned"]
                for position in range(first, last):
                    word = feature["word_ids"][position]
                    if word is not None and word not in seen:
                        seen.add(word)
                        tags[word] = names[int(np.argmax(row["logits"][position]))]
            missing += len(sentence.tokens) - len(seen)
            prediction: dict[str, Any] = {"tags": tags}
            if scheme is not None:
                prediction["entities"] = entity_spans(sentence.tokens, tags, scheme)
            predictions.append(prediction)
        if missing:
            warnings.warn(f"{missing} words have no tokens and are tagged {outside!r}", stacklevel=3)
        return predictions

    def score(self, sentences: Sequence[Sentence], predictions: Sequence[dict]) -> dict[str, Any]:
        """Entity precision / recall / F1 (conlleval, what seqeval reports) and word accuracy; accuracy only
        for tags that are not entity tags."""
        gold = []
        for sentence in sentences:
            self.vocabulary.encode(sentence)  # type: ignore[union-attr]  # unknown tags fail naming file and line
            gold.append(sentence.tags)
        predicted = [p["tags"] for p in predictions]
        if self.scheme is None:
            pairs = [(p, g) for ps, gs in zip(predicted, gold, strict=True) for p, g in zip(ps, gs, strict=True)]
            return {"accuracy": sum(p == g for p, g in pairs) / len(pairs), "number": len(pairs)}
        return metrics.entities(predictions=predicted, references=gold, scheme=self.scheme)

    def records(self, sentences: Sequence[Sentence], predictions: Sequence[dict]) -> list[dict[str, Any]]:
        """One JSON-ready row per sentence: line, words, gold tags and the prediction."""
        rows = []
        for sentence, prediction in zip(sentences, predictions, strict=True):
            row: dict[str, Any] = {"line": sentence.line, "words": sentence.tokens}
            if sentence.tags is not None:
                row["gold"] = sentence.tags
            rows.append({**row, **prediction})
        return rows
