"""Extractive question answering, SQuAD v1.1 and v2.0.

Featurizing: the question and its context are encoded as a pair; a context longer than the window continues
in further windows that overlap by `stride` tokens, so an answer cut by one window's end lies whole inside the
next. A window is labelled with the tokens of the answer when the whole answer lies inside it, and with the
first token ([CLS] / <s>) otherwise or when the question has no answer — BERT's run_squad rule.

Post-processing, per question over all its windows: the `n_best` start and end tokens of each window's
context are paired into spans of at most `max_answer_length` tokens, scored start + end logit; the text is
cut from the original context through the tokens' character offsets, so byte-level BPE (leading spaces in
tokens) and non-ASCII text come back exactly. SQuAD v2: the null score is the smallest first-token score over
the windows; the question is unanswered when null score - best span score > `null_threshold`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from berta import metrics
from berta.data.readers import QAExample, read_squad
from berta.model import QuestionAnswering
from berta.tasks.base import Options, Task, collate_inputs, register, run_model
from berta.tokenizer import Tokenizer


@dataclass(kw_only=True)
class QAOptions(Options):
    # Defaults: BERT's run_squad.py (doc_stride 128, max_query_length 64, n_best_size 20, max_answer_length 30,
    # null_score_diff_threshold 0.0).
    stride: int = field(default=128, metadata={"min": 0, "help": "tokens shared by consecutive context windows"})
    max_query_length: int = field(default=64, metadata={"min": 1, "help": "question tokens kept"})
    n_best: int = field(default=20, metadata={"min": 1, "help": "start and end candidates per window, spans kept"})
    max_answer_length: int = field(default=30, metadata={"min": 1, "help": "longest answer in tokens"})
    null_threshold: float = field(
        default=0.0, metadata={"help": "SQuAD v2: answer nothing when null score - best span score exceeds this"}
    )


@register
class QATask(Task):
    """Featurize, collate, predict and score SQuAD-style extractive QA.

    Example:
        >>> task = QATask(Tokenizer.from_pretrained("roberta"), max_length=384, stride=128)
        >>> examples = task.read("dev-v2.0.json")  # doctest: +SKIP
        >>> predictions = task.predict(model, examples)  # [{'answer': 'France', ...}, ...]  # doctest: +SKIP
    """

    name = "qa"
    model_class = QuestionAnswering
    heads = {family: {"qa_outputs.weight": "qa_outputs.weight", "qa_outputs.bias": "qa_outputs.bias"}
             for family in ("bert", "roberta")}
    architecture_suffix = "ForQuestionAnswering"
    methods = ("answer",)
    default_max_length = 384  # BERT's run_squad max_seq_length
    options = QAOptions
    outputs, per_token = ("start_logits", "end_logits"), True
    output_axes = {"start_logits": {0: "batch", 1: "seq"}, "end_logits": {0: "batch", 1: "seq"}}

    @classmethod
    def from_options(cls, tokenizer: Tokenizer, options: Any, id2label: Mapping[int, str] | None = None,
                     problem_type: str | None = None) -> QATask:
        own = cls.own_options(options)
        return cls(tokenizer, cls.length(options), own.stride, own.max_query_length, own.n_best,
                   own.max_answer_length, own.null_threshold)

    def main_metric(self) -> str:
        return "f1"

    def fit_evaluation(self, examples: Sequence[QAExample]) -> None:
        self.fit_labels(examples)  # SQuAD v2 scoring when the file has unanswerable questions

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_length: int = 384,
        stride: int = 128,
        max_query_length: int = 64,
        n_best: int = 20,
        max_answer_length: int = 30,
        null_threshold: float = 0.0,
        with_null_answer: bool | None = None,
    ):
        # Defaults: BERT's run_squad.py (max_seq_length 384, doc_stride 128, max_query_length 64, n_best_size 20,
        # max_answer_length 30, null_score_diff_threshold 0.0).
        room = max_length - max_query_length - 4  # [CLS] q [SEP] c [SEP], and RoBERTa's </s></s>
        if room < 1 or not 0 <= stride < room:
            raise ValueError(
                f"--max-length {max_length} with --max-query-length {max_query_length} leaves {room} context tokens "
                f"per window; --stride must be smaller than that, got {stride} (lower --stride, or raise "
                "--max-length up to the model's positions)"
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.stride = stride
        self.max_query_length = max_query_length
        self.n_best = n_best
        self.max_answer_length = max_answer_length
        self.null_threshold = null_threshold
        # SQuAD v2 (unanswerable questions): None = decide from the data (any impossible question).
        self.with_null_answer = with_null_answer

    # -- data ----------------------------------------------------------------------------------------

    def read(self, path: str | Path, labelled: bool = True) -> list[QAExample]:
        """Questions of a SQuAD JSON file; questions whose answers do not match their offsets are skipped, counted
        in one log line and listed in the result's `skipped` (the report's `skipped`)."""
        return read_squad(path, encoding=self.encoding)

    def fit_labels(self, examples: Sequence[QAExample]) -> None:
        """QA has no label set; the training data decides whether unanswerable questions are predicted."""
        if self.with_null_answer is None:
            self.with_null_answer = any(e.is_impossible for e in examples)

    def _question(self, question: str) -> str:
        # Keep the first max_query_length tokens of a long question (run_squad's max_query_length), cut at a
        # token boundary of the text so offsets stay valid.
        encoding = self.tokenizer.encode(question, add_special_tokens=False)
        if len(encoding.ids) <= self.max_query_length:
            return question
        return question[: encoding.offsets[self.max_query_length - 1][1]]

    def featurize(self, examples: Sequence[QAExample], labelled: bool = True) -> list[dict[str, Any]]:
        """One feature per window: token ids, `example` (its question's index), `offsets` (character spans into
        the context, None outside it) and, when `labelled`, `start_positions` / `end_positions`."""
        questions = [self._question(e.question.lstrip()) for e in examples]
        batch = self.tokenizer(
            questions, [e.context for e in examples], padding=False, truncation="only_second",
            max_length=self.max_length, stride=self.stride, return_overflowing_tokens=True,
        )
        features = []
        for row in range(batch.num_rows):
            index = batch["overflow_to_sample"][row]
            sequence_ids = batch.sequence_ids(row)
            offsets = [
                tuple(span) if sequence == 1 else None
                for span, sequence in zip(batch["offset_mapping"][row], sequence_ids, strict=True)
            ]
            feature: dict[str, Any] = {"input_ids": batch["input_ids"][row], "example": index, "offsets": offsets}
            if self.tokenizer.has_token_types:
                feature["token_type_ids"] = batch["token_type_ids"][row]
            if labelled:
                feature["start_positions"], feature["end_positions"] = answer_tokens(examples[index], offsets)
            features.append(feature)
        return features

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """A padded batch: `input_ids`, `attention_mask` (`token_type_ids`) and the answer token positions."""
        batch = collate_inputs(features, self.tokenizer.pad_id)
        if "start_positions" in features[0]:
            batch["start_positions"] = torch.tensor([f["start_positions"] for f in features])
            batch["end_positions"] = torch.tensor([f["end_positions"] for f in features])
        return batch

    # -- prediction and scoring ------------------------------------------------------------------------

    def predict(self, model: nn.Module, examples: Sequence[QAExample], batch_size: int = 64) -> list[dict]:
        """Per question: `answer` ("" = no answer), `best_span` with its `start`/`end` characters and `score`,
        `no_answer_score` (null score - best span score) and the `n_best` spans."""
        features = self.featurize(examples, labelled=False)
        rows, _ = run_model(model, features, self.collate, self.outputs, batch_size, per_token=True)
        return self.decode(examples, features, rows)

    def decode(
        self, examples: Sequence[QAExample], features: Sequence[dict], rows: Sequence[dict[str, np.ndarray]]
    ) -> list[dict]:
        """One answer per question from the start / end logits of all its windows."""
        windows: list[list[tuple[dict[str, Any], dict[str, np.ndarray]]]] = [[] for _ in examples]
        for feature, row in zip(features, rows, strict=True):
            windows[feature["example"]].append((feature, row))
        return [self.postprocess(example, found) for example, found in zip(examples, windows, strict=True)]

    def postprocess(
        self, example: QAExample, windows: Sequence[tuple[dict[str, Any], dict[str, np.ndarray]]]
    ) -> dict[str, Any]:
        """Best answer of one question from its windows' (feature, {start_logits, end_logits}); see the module
        docstring."""
        candidates: dict[tuple[int, int], float] = {}
        null_score = float("inf")
        for feature, logits in windows:
            start_logits, end_logits = logits["start_logits"], logits["end_logits"]
            offsets = feature["offsets"]
            null_score = min(null_score, float(start_logits[0] + end_logits[0]))
            context = [i for i, span in enumerate(offsets) if span is not None and span[1] > span[0]]
            if not context:
                continue
            starts = sorted(context, key=lambda i: -start_logits[i])[: self.n_best]
            ends = sorted(context, key=lambda i: -end_logits[i])[: self.n_best]
            for s in starts:
                for e in ends:
                    if e < s or e - s + 1 > self.max_answer_length:
                        continue
                    span = _strip(example.context, offsets[s][0], offsets[e][1])
                    if span is None:
                        continue
                    score = float(start_logits[s] + end_logits[e])
                    # A span inside two overlapping windows is one candidate, with its better score.
                    if score > candidates.get(span, -np.inf):
                        candidates[span] = score
        ranked = sorted(candidates.items(), key=lambda item: -item[1])[: self.n_best]
        n_best = [
            {"text": example.context[start:end], "start": start, "end": end, "score": score}
            for (start, end), score in ranked
        ]
        best = n_best[0] if n_best else {"text": "", "start": -1, "end": -1, "score": float("-inf")}
        no_answer_score = null_score - best["score"] if n_best else float("inf")
        answer = best["text"]
        if self.with_null_answer and no_answer_score > self.null_threshold:
            answer = ""
        return {
            "answer": answer,
            "best_span": best["text"],
            "start": best["start"],
            "end": best["end"],
            "score": best["score"],
            "no_answer_score": no_answer_score,
            "n_best": n_best,
        }

    def score(self, examples: Sequence[QAExample], predictions: Sequence[dict]) -> dict[str, Any]:
        """SQuAD exact match and F1 (0-100, the official scripts); for v2 also HasAns / NoAns and the best
        null threshold (`best_f1_thresh`, in the units of `no_answer_score`)."""
        references = {e.id: [text for text, _ in e.answers] for e in examples}
        if not self.with_null_answer:
            answers = {e.id: p["answer"] for e, p in zip(examples, predictions, strict=True)}
            return metrics.squad(predictions=answers, references=references, version="1.1")
        # The scripts take the best non-null span and decide "no answer" from the no-answer scores, so the best
        # threshold can be searched; with `null_threshold` this gives the same answers as `answer`.
        spans = {e.id: p["best_span"] for e, p in zip(examples, predictions, strict=True)}
        scores = {e.id: _finite(p["no_answer_score"]) for e, p in zip(examples, predictions, strict=True)}
        return metrics.squad(predictions=spans, references=references, no_answer_probabilities=scores,
                             threshold=self.null_threshold, version="2.0")

    def records(self, examples: Sequence[QAExample], predictions: Sequence[dict]) -> list[dict[str, Any]]:
        """One JSON-ready row per question: id, question, gold answers and the prediction."""
        rows = []
        for example, prediction in zip(examples, predictions, strict=True):
            row = {"id": example.id, "question": example.question, "gold": [text for text, _ in example.answers]}
            n_best = [{**c, "score": _finite(c["score"])} for c in prediction["n_best"]]
            fields = {**prediction, "n_best": n_best, "score": _finite(prediction["score"]),
                      "no_answer_score": _finite(prediction["no_answer_score"])}
            rows.append({**row, **fields})
        return rows


def _finite(value: float) -> float:
    # JSON has no infinity; a question without any valid span gets a large finite score instead.
    return float(np.clip(value, -1e9, 1e9))


def _strip(context: str, start: int, end: int) -> tuple[int, int] | None:
    # Offsets of some tokenizers include the space a token starts with (byte-level BPE without offset
    # trimming); an answer never starts or ends with whitespace.
    while start < end and context[start].isspace():
        start += 1
    while end > start and context[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def answer_tokens(example: QAExample, offsets: Sequence[tuple[int, int] | None]) -> tuple[int, int]:
    """Token positions (start, end) of the example's first answer inside one window, or (0, 0) — the first
    token — when the question has no answer or the answer is not wholly inside the window.

    `offsets` are the window's character spans into the context, None for question and special tokens.

    Example:
        >>> example = QAExample("q1", "Where?", "in Paris today", [("Paris", 3)], False)
        >>> answer_tokens(example, [None, None, None, (0, 2), (3, 8), (9, 14), None])
        (4, 4)
    """
    if example.is_impossible or not example.answers:
        return 0, 0
    text, start = example.answers[0]
    end = start + len(text)
    context = [i for i, span in enumerate(offsets) if span is not None and span[1] > span[0]]
    if not context or offsets[context[0]][0] > start or offsets[context[-1]][1] < end:  # type: ignore[index]
        return 0, 0
    # First token ending after the answer's start, last token starting before its end: whitespace around the
    # answer (and a leading space inside a byte-level BPE token) never moves the span.
    first = next(i for i in context if offsets[i][1] > start)  # type: ignore[index]
    last = next(i for i in reversed(context) if offsets[i][0] < end)  # type: ignore[index]
    return (first, last) if first <= last else (0, 0)
