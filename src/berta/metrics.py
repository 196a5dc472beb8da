"""Evaluation metrics that agree with the implementations the field reports numbers with.

- `classification`: accuracy, precision / recall / F1 (binary, macro, micro, weighted), Matthews correlation
  and per-class figures, as `sklearn.metrics` computes them; `multi_label` for label sets.
- `regression`: Pearson, Spearman and mean squared error, as `scipy.stats` / `sklearn.metrics`.
- `entities`: entity-level precision / recall / F1 with conlleval semantics (what `seqeval` reports in its
  default mode), or strict decoding per scheme (`seqeval` with `mode="strict"`).
- `squad`: exact match and F1 of the official SQuAD v1.1 and v2.0 evaluation scripts, including v2's
  HasAns / NoAns split and best no-answer thresholds.

Everything is plain Python and numpy: scikit-learn, scipy and seqeval are the references in the tests, not
dependencies.
"""

from __future__ import annotations

import collections
import re
import string
import warnings
from collections.abc import Collection, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

AVERAGES = ("binary", "macro", "micro", "weighted")
SCHEMES = ("IOB1", "IOB2", "BIOES")
# Other names the field uses for the same schemes.
_SCHEME_ALIASES = {"BIO": "IOB2", "IOBES": "BIOES"}
_SCHEME_PREFIXES = {"IOB1": "BIO", "IOB2": "BIO", "BIOES": "BIOES"}


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    # An undefined ratio (nothing predicted, nothing to find) counts as 0, as scikit-learn and seqeval
    # report it by default (`zero_division="warn"`).
    denominator = np.asarray(denominator, dtype=np.float64)
    safe = np.where(denominator == 0, 1.0, denominator)
    return np.where(denominator == 0, 0.0, np.asarray(numerator, dtype=np.float64) / safe)


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _one_label_each(values: Sequence[Hashable], name: str) -> list[Hashable]:
    labels = [_python(value) for value in values]
    if any(isinstance(label, (list, set, tuple, np.ndarray)) for label in labels):
        raise ValueError(f"{name}: expected one label per example; use multi_label for sets of labels")
    return labels


def confusion_matrix(
    *, predictions: Sequence[Hashable], references: Sequence[Hashable],
    label_order: Sequence[Hashable] | None = None,
) -> tuple[list[Hashable], np.ndarray]:
    """Count (true label, predicted label) pairs; rows are true labels, columns predictions.

    The label order defaults to the sorted union of both sequences, as `sklearn.metrics.confusion_matrix`.

    Example:
        >>> order, matrix = confusion_matrix(predictions=["a", "b", "b"], references=["a", "a", "b"])
        >>> order, matrix.tolist()
        (['a', 'b'], [[1, 1], [0, 1]])
    """
    predictions = _one_label_each(predictions, "predictions")
    references = _one_label_each(references, "labels")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} labels; they must pair up")
    order = sorted(set(predictions) | set(references)) if label_order is None else list(label_order)
    index = {label: i for i, label in enumerate(order)}
    unknown = sorted({str(x) for x in predictions + references if x not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not in label_order {order}")
    size = len(order)
    true_ids = np.array([index[t] for t in references], dtype=np.int64)
    predicted_ids = np.array([index[p] for p in predictions], dtype=np.int64)
    counts = np.bincount(true_ids * size + predicted_ids, minlength=size * size)
    return order, counts.reshape(size, size)


def _matthews(matrix: np.ndarray) -> float:
    # Gorodkin's multi-class generalisation, as sklearn.metrics.matthews_corrcoef; 0 when undefined.
    true_sum = matrix.sum(axis=1, dtype=np.float64)
    predicted_sum = matrix.sum(axis=0, dtype=np.float64)
    correct = np.trace(matrix, dtype=np.float64)
    samples = predicted_sum.sum()
    covariance_true_predicted = correct * samples - np.dot(true_sum, predicted_sum)
    covariance_predicted = samples**2 - np.dot(predicted_sum, predicted_sum)
    covariance_true = samples**2 - np.dot(true_sum, true_sum)
    product = covariance_predicted * covariance_true
    return 0.0 if product == 0 else float(covariance_true_predicted / np.sqrt(product))


def _per_class(
    order: list[Hashable], true_positives: np.ndarray, predicted_sum: np.ndarray, true_sum: np.ndarray
) -> dict[Hashable, dict[str, float | int]]:
    precision = _divide(true_positives, predicted_sum)
    recall = _divide(true_positives, true_sum)
    # F1 from the counts, 2tp / (2tp + fp + fn), as scikit-learn >= 1.3 computes it.
    f1 = _divide(2 * true_positives, true_sum + predicted_sum)
    return {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(true_sum[i]),
        }
        for i, label in enumerate(order)
    }


def _average(
    true_positives: np.ndarray, predicted_sum: np.ndarray, true_sum: np.ndarray, average: str
) -> tuple[float, float, float]:
    if average == "micro":
        tp, predicted, true = true_positives.sum(), predicted_sum.sum(), true_sum.sum()
        return (
            float(_divide(tp, predicted)),
            float(_divide(tp, true)),
            float(_divide(2 * tp, true + predicted)),
        )
    # Weighted by support; with no support at all, unweighted (scikit-learn's _nanaverage).
    weights = true_sum if average == "weighted" and true_sum.sum() > 0 else None
    precision = _divide(true_positives, predicted_sum)
    recall = _divide(true_positives, true_sum)
    f1 = _divide(2 * true_positives, true_sum + predicted_sum)
    return tuple(float(np.average(values, weights=weights)) for values in (precision, recall, f1))


def classification(
    *,
    predictions: Sequence[Hashable],
    references: Sequence[Hashable],
    average: str = "macro",
    positive_label: Hashable = 1,
) -> dict[str, Any]:
    """Accuracy, precision / recall / F1 with the chosen average, Matthews correlation and per-class figures.

    `average` is one of "binary" (figures of `positive_label` only), "macro", "micro", "weighted", with
    scikit-learn's meaning; classes are the sorted union of labels and predictions; an undefined ratio is 0.

    Example:
        >>> result = classification(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0], average="binary")
        >>> result["accuracy"], result["precision"], result["recall"], result["f1"]
        (0.75, 0.5, 1.0, 0.6666666666666666)
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    order, matrix = confusion_matrix(predictions=predictions, references=references)
    if not order:
        raise ValueError("no predictions and no labels: nothing to score")
    true_positives = np.diag(matrix).astype(np.float64)
    predicted_sum = matrix.sum(axis=0)
    true_sum = matrix.sum(axis=1)
    per_class = _per_class(order, true_positives, predicted_sum, true_sum)
    if average == "binary":
        if len(order) > 2:
            raise ValueError(f"average='binary' needs at most two classes, found {len(order)}: {order}")
        if positive_label not in order and len(order) == 2:
            raise ValueError(f"positive_label={positive_label!r} is not one of the classes {order}")
        if positive_label in order:
            averaged = per_class[positive_label]
            scores = (averaged["precision"], averaged["recall"], averaged["f1"])
        else:
            scores = (0.0, 0.0, 0.0)
    else:
        scores = _average(true_positives, predicted_sum, true_sum, average)
    return {
        "accuracy": float(true_positives.sum() / matrix.sum()),
        "precision": scores[0],
        "recall": scores[1],
        "f1": scores[2],
        "mcc": _matthews(matrix),
        "number": int(matrix.sum()),
        "per_class": per_class,
    }


def multi_label(
    *,
    predictions: Sequence[Collection[Hashable]],
    references: Sequence[Collection[Hashable]],
    average: str = "micro",
) -> dict[str, Any]:
    """Multi-label figures: subset accuracy, precision / recall / F1 over (example, label) decisions with the
    chosen average ("micro", "macro", "weighted"), and per-label figures, as scikit-learn on indicator matrices.

    Each prediction and label is the collection of labels of one example (empty for none).

    Example:
        >>> result = multi_label(predictions=[{"news"}, {"art", "news"}], references=[{"news"}, {"art"}])
        >>> result["accuracy"], result["precision"], result["recall"]
        (0.5, 0.6666666666666666, 1.0)
    """
    if average not in ("macro", "micro", "weighted"):
        raise ValueError(f"average must be 'macro', 'micro' or 'weighted' for multi-label, got {average!r}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} labels; they must pair up")
    order = sorted({label for row in [*predictions, *references] for label in row})
    if not order:
        raise ValueError("no label in any prediction or gold label set: nothing to score")
    index = {label: i for i, label in enumerate(order)}

    def indicator(rows: Sequence[Collection[Hashable]]) -> np.ndarray:  # (examples, labels)
        matrix = np.zeros((len(rows), len(order)), dtype=bool)
        for row, row_labels in enumerate(rows):
            matrix[row, [index[label] for label in row_labels]] = True
        return matrix

    predicted, gold = indicator(predictions), indicator(references)
    true_positives = (predicted & gold).sum(axis=0).astype(np.float64)
    predicted_sum, true_sum = predicted.sum(axis=0), gold.sum(axis=0)
    precision, recall, f1 = _average(true_positives, predicted_sum, true_sum, average)
    return {
        "accuracy": float(np.mean(np.all(predicted == gold, axis=1))),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "number": len(references),
        "per_class": _per_class(order, true_positives, predicted_sum, true_sum),
    }


def _ranks(values: np.ndarray) -> np.ndarray:
    # Ranks from 1, ties sharing the average of their ranks (scipy.stats.rankdata, method="average").
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts_group = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    group = np.cumsum(starts_group) - 1
    boundaries = np.concatenate([np.flatnonzero(starts_group), [len(values)]])
    # Ranks first..last of a group average to (first + last) / 2 with 1-based positions.
    average_rank = (boundaries[:-1] + 1 + boundaries[1:]) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = average_rank[group]
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    # Centre, then scale before the dot product (as scipy.stats.pearsonr) to avoid overflow; a constant
    # input has no correlation: NaN, as scipy returns.
    x = x - x.mean()
    y = y - y.mean()
    norm_x, norm_y = np.linalg.norm(x), np.linalg.norm(y)
    if norm_x == 0 or norm_y == 0:
        return float("nan")
    return float(np.clip(np.dot(x / norm_x, y / norm_y), -1.0, 1.0))


def regression(*, predictions: Sequence[float], references: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation and mean squared error of predictions against targets.

    A constant input gives NaN correlations, as `scipy.stats` does.

    Example:
        >>> result = regression(predictions=[1.0, 2.0, 3.0], references=[1.0, 2.0, 4.0])
        >>> round(result["pearson"], 4), round(result["spearman"], 4), round(result["mse"], 4)
        (0.982, 1.0, 0.3333)
    """
    x = np.asarray(predictions, dtype=np.float64).ravel()
    y = np.asarray(references, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"{len(x)} predictions but {len(y)} targets; they must pair up")
    if len(x) < 2:
        raise ValueError(f"correlations need at least 2 pairs, got {len(x)}")
    return {
        "pearson": _pearson(x, y),
        "spearman": _pearson(_ranks(x), _ranks(y)),
        "mse": float(np.mean((x - y) ** 2)),
        "number": len(x),
    }


def _normalize_scheme(scheme: str) -> str:
    name = _SCHEME_ALIASES.get(scheme.upper(), scheme.upper())
    if name not in SCHEMES:
        raise ValueError(f"unknown tagging scheme {scheme!r}; expected one of {SCHEMES} (or BIO, IOBES)")
    return name


def _split_tag(tag: str, scheme: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    prefix, separator, entity_type = tag.partition("-")
    if separator != "-" or prefix not in _SCHEME_PREFIXES[scheme] or prefix == "O" or not entity_type:
        raise ValueError(
            f"tag {tag!r} is not valid in scheme {scheme}: expected 'O' or PREFIX-TYPE with PREFIX in "
            f"{list(_SCHEME_PREFIXES[scheme].replace('O', ''))}"
        )
    return prefix, entity_type


def _conlleval_spans(tags: list[tuple[str, str]]) -> list[tuple[str, int, int]]:
    # conlleval.pl's chunk boundaries (startOfChunk / endOfChunk), the rules seqeval's default mode follows:
    # lenient, so an I- after O or after another type opens an entity, whatever the scheme.
    spans = []
    previous_prefix, previous_type, begin = "O", "", 0
    for i, (prefix, entity_type) in enumerate([*tags, ("O", "")]):
        ends = (
            previous_prefix in "ES"
            or (previous_prefix in "BI" and prefix in "BSO")
            or (previous_prefix != "O" and previous_type != entity_type)
        )
        starts = (
            prefix in "BS"
            or (previous_prefix in "ESO" and prefix in "EI")
            or (prefix != "O" and previous_type != entity_type)
        )
        if ends:
            spans.append((previous_type, begin, i))
        if starts:
            begin = i
        previous_prefix, previous_type = prefix, entity_type
    return spans


# Strict decoding, the patterns of seqeval.scheme: (previous prefixes, current prefixes, type condition).
# An entity is a start token followed by inside tokens and closed by a valid end; anything else is dropped.
_ANY = "BIOES"
_STRICT_PATTERNS: dict[str, dict[str, set[tuple[str, str, str]]]] = {
    "IOB1": {
        "start": {("O", "I", "any"), ("I", "I", "diff"), ("B", "I", "any"), ("I", "B", "same"),
                  ("B", "B", "same")},
        "inside": {("B", "I", "same"), ("I", "I", "same")},
        "end": {("I", "I", "diff"), ("I", "O", "any"), ("I", "B", "any"), ("B", "O", "any"),
                ("B", "I", "diff"), ("B", "B", "same")},
    },
    "IOB2": {
        "start": {(_ANY, "B", "any")},
        "inside": {("B", "I", "same"), ("I", "I", "same")},
        "end": {("I", "O", "any"), ("I", "I", "diff"), ("I", "B", "any"), ("B", "O", "any"),
                ("B", "I", "diff"), ("B", "B", "any")},
    },
    "BIOES": {
        "start": {(_ANY, "B", "any"), (_ANY, "S", "any")},
        "inside": {("B", "I", "same"), ("B", "E", "same"), ("I", "I", "same"), ("I", "E", "same")},
        "end": {("S", _ANY, "any"), ("E", _ANY, "any")},
    },
}


def _matches(patterns: set[tuple[str, str, str]], previous: tuple[str, str], current: tuple[str, str]) -> bool:
    for previous_prefixes, current_prefixes, condition in patterns:
        if previous[0] in previous_prefixes and current[0] in current_prefixes:
            same = previous[1] == current[1]
            if condition == "any" or (condition == "same") == same:
                return True
    return False


def _strict_spans(tags: list[tuple[str, str]], scheme: str) -> list[tuple[str, int, int]]:
    patterns = _STRICT_PATTERNS[scheme]
    tokens = [*tags, ("O", "")]
    spans = []
    previous, i = ("O", ""), 0
    while i < len(tokens):
        token = tokens[i]
        if _matches(patterns["start"], previous, token):
            end, last = i + 1, token
            while _matches(patterns["inside"], last, tokens[end]):
                last, end = tokens[end], end + 1
            if _matches(patterns["end"], tokens[end - 1], tokens[end]):
                spans.append((token[1], i, end))
            i = end
        else:
            i += 1
        previous = tokens[i - 1]
    return spans


def tags_to_spans(tags: Sequence[str], scheme: str = "IOB2", strict: bool = False) -> list[tuple[str, int, int]]:
    """Entities of one tag sequence as (type, start, end) with `end` exclusive: the entity is `tags[start:end]`.

    `strict=False` reads tags as conlleval does (an I- without B- opens an entity); `strict=True` keeps only
    entities well formed in `scheme` (IOB1, IOB2/BIO or BIOES/IOBES).

    Example:
        >>> tags_to_spans(["B-PER", "I-PER", "O", "I-LOC"])
        [('PER', 0, 2), ('LOC', 3, 4)]
        >>> tags_to_spans(["B-PER", "I-PER", "O", "I-LOC"], strict=True)
        [('PER', 0, 2)]
    """
    scheme = _normalize_scheme(scheme)
    split = [_split_tag(tag, scheme) for tag in tags]
    return _strict_spans(split, scheme) if strict else _conlleval_spans(split)


def _precision_recall_f1(correct: int, predicted: int, gold: int) -> dict[str, float | int]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    # The same operation order as seqeval, so the numbers agree to the last bit.
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "number": gold}


def entities(
    *,
    predictions: Sequence[Sequence[str]],
    references: Sequence[Sequence[str]],
    scheme: str = "IOB2",
    strict: bool = False,
) -> dict[str, Any]:
    """Entity-level precision / recall / F1 (micro over entities), token accuracy and per-type figures.

    An entity counts as found only when its type, start and end all match. `number` is the count of gold
    entities. The default reads tags as conlleval (the numbers `seqeval` reports in its default mode);
    `strict=True` matches `seqeval` with `mode="strict"` and the same scheme.

    Example:
        >>> result = entities(predictions=[["B-PER", "I-PER", "O"]], references=[["B-PER", "I-PER", "B-LOC"]])
        >>> result["precision"], result["recall"], result["per_type"]["LOC"]["f1"]
        (1.0, 0.5, 0.0)
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predicted sequences but {len(references)} gold sequences")
    predicted_entities: set[tuple[int, str, int, int]] = set()
    gold_entities: set[tuple[int, str, int, int]] = set()
    tokens = correct_tokens = 0
    for sentence, (predicted, gold) in enumerate(zip(predictions, references, strict=True)):
        if len(predicted) != len(gold):
            raise ValueError(
                f"sequence {sentence}: {len(predicted)} predicted tags but {len(gold)} gold tags"
            )
        predicted_entities.update((sentence, *span) for span in tags_to_spans(predicted, scheme, strict))
        gold_entities.update((sentence, *span) for span in tags_to_spans(gold, scheme, strict))
        tokens += len(gold)
        correct_tokens += sum(p == g for p, g in zip(predicted, gold, strict=True))
    found = predicted_entities & gold_entities
    types = sorted({entity[1] for entity in predicted_entities | gold_entities})

    def count(entity_set: set[tuple[int, str, int, int]], entity_type: str) -> int:
        return sum(1 for entity in entity_set if entity[1] == entity_type)

    result: dict[str, Any] = _precision_recall_f1(len(found), len(predicted_entities), len(gold_entities))
    result["accuracy"] = correct_tokens / tokens if tokens else 0.0
    result["per_type"] = {
        entity_type: _precision_recall_f1(
            count(found, entity_type), count(predicted_entities, entity_type), count(gold_entities, entity_type)
        )
        for entity_type in types
    }
    return result


# SQuAD: a transcription of the official evaluation scripts (v1.1 `evaluate-v1.1.py`, v2.0
# `evaluate-v2.0.py`), whose numbers every paper reports.
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower case, drop punctuation, articles and extra whitespace.

    Example:
        >>> normalize_answer("The  Eiffel-Tower!")
        'eiffeltower'
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(prediction_tokens: list[str], gold_tokens: list[str]) -> float:
    same = sum((collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision = 1.0 * same / len(prediction_tokens)
    recall = 1.0 * same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def _f1_v1(prediction: str, gold: str) -> float:
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(gold).split())


def _f1_v2(gold: str, prediction: str) -> float:
    gold_tokens = normalize_answer(gold).split() if gold else []
    prediction_tokens = normalize_answer(prediction).split() if prediction else []
    if not gold_tokens or not prediction_tokens:
        # v2: a no-answer scores 1 only against a no-answer.
        return float(gold_tokens == prediction_tokens)
    return _token_f1(prediction_tokens, gold_tokens)


def _exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _squad_v1(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    missing = [qid for qid in references if qid not in predictions]
    if missing:
        # The v1.1 script scores an unanswered question 0 and keeps it in the total.
        warnings.warn(
            f"{len(missing)} of {len(references)} questions have no prediction and score 0: {missing[:10]}",
            stacklevel=3,
        )
    exact_match = f1 = 0.0
    for qid, golds in references.items():
        if qid in predictions:
            exact_match += max(_exact(predictions[qid], gold) for gold in golds)
            f1 += max(_f1_v1(predictions[qid], gold) for gold in golds)
    total = len(references)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total, "total": total}


def _best_threshold(
    predictions: Mapping[str, str],
    scores: Mapping[str, float],
    no_answer_probabilities: Mapping[str, float],
    has_answer: Mapping[str, bool],
) -> tuple[float, float]:
    # find_best_thresh of evaluate-v2.0.py: start from "answer nothing", then admit questions in order of
    # rising no-answer probability (a stable sort, so ties keep the mapping's order, as in the script).
    score = best_score = sum(1 for qid in has_answer if not has_answer[qid])
    best_threshold = 0.0
    for qid in sorted(no_answer_probabilities, key=lambda k: no_answer_probabilities[k]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            score += scores[qid]
        elif predictions[qid]:
            score -= 1  # an answer to an unanswerable question
        if score > best_score:
            best_score = score
            best_threshold = no_answer_probabilities[qid]
    return 100.0 * best_score / len(scores), best_threshold


def _squad_v2(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    no_answer_probabilities: Mapping[str, float] | None,
    threshold: float,
) -> dict[str, Any]:
    missing = [qid for qid in references if qid not in predictions]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(references)} questions have no prediction (use '' for no answer): "
            f"{missing[:10]}"
        )
    probabilities = no_answer_probabilities if no_answer_probabilities is not None else {}
    absent = [qid for qid in references if no_answer_probabilities is not None and qid not in probabilities]
    if absent:
        raise ValueError(f"{len(absent)} questions have no no-answer probability: {absent[:10]}")
    has_answer = {qid: bool(golds) for qid, golds in references.items()}
    exact_raw, f1_raw = {}, {}
    for qid, golds in references.items():
        # Gold answers that normalise to nothing are dropped; none left means "no answer" is the answer.
        answers = [gold for gold in golds if normalize_answer(gold)] or [""]
        exact_raw[qid] = max(_exact(predictions[qid], gold) for gold in answers)
        f1_raw[qid] = max(_f1_v2(gold, predictions[qid]) for gold in answers)

    def thresholded(raw: dict[str, float]) -> dict[str, float]:
        return {
            qid: float(not has_answer[qid]) if probabilities.get(qid, 0.0) > threshold else score
            for qid, score in raw.items()
        }

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)
    total = len(exact)
    result: dict[str, Any] = {
        "exact_match": 100.0 * sum(exact.values()) / total,
        "f1": 100.0 * sum(f1.values()) / total,
        "total": total,
    }
    for name, wanted in (("HasAns", True), ("NoAns", False)):
        subset = [qid for qid in references if has_answer[qid] == wanted]
        if subset:
            result[f"{name}_exact"] = 100.0 * sum(exact[qid] for qid in subset) / len(subset)
            result[f"{name}_f1"] = 100.0 * sum(f1[qid] for qid in subset) / len(subset)
            result[f"{name}_total"] = len(subset)
    if no_answer_probabilities is not None:
        best_exact, best_exact_threshold = _best_threshold(predictions, exact_raw, probabilities, has_answer)
        best_f1, best_f1_threshold = _best_threshold(predictions, f1_raw, probabilities, has_answer)
        result.update(
            best_exact=best_exact,
            best_exact_thresh=best_exact_threshold,
            best_f1=best_f1,
            best_f1_thresh=best_f1_threshold,
        )
    return result


def squad(
    *,
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    no_answer_probabilities: Mapping[str, float] | None = None,
    threshold: float = 1.0,
    version: str = "auto",
) -> dict[str, Any]:
    """SQuAD exact match and F1 (0-100) as the official v1.1 / v2.0 evaluation scripts compute them.

    `predictions` maps question id to answer text ("" = no answer), `references` maps id to gold answer
    texts (an empty list = unanswerable). `version="auto"` uses v2.0 when a question is unanswerable or
    no-answer probabilities are given, else v1.1. v2.0 adds HasAns_/NoAns_ figures, applies `threshold` to
    the no-answer probabilities (a probability above it means "no answer") and, with probabilities, the
    best thresholds (best_exact, best_exact_thresh, best_f1, best_f1_thresh). Predictions for ids not in
    `references` are ignored, as the scripts do.

    Example:
        >>> result = squad(predictions={"q1": "the Eiffel Tower", "q2": ""},
        ...                references={"q1": ["Eiffel Tower"], "q2": []})
        >>> result["exact_match"]
        100.0
    """
    if not references:
        raise ValueError("no reference questions: nothing to score")
    if version not in ("auto", "1.1", "2.0"):
        raise ValueError(f"version must be 'auto', '1.1' or '2.0', got {version!r}")
    if version == "auto":
        unanswerable = any(not golds for golds in references.values())
        version = "2.0" if unanswerable or no_answer_probabilities is not None else "1.1"
    if version == "1.1":
        empty = [qid for qid, golds in references.items() if not golds]
        if empty:
            raise ValueError(f"SQuAD v1.1 has no unanswerable questions, but {empty[:10]} have no gold answer")
        return _squad_v1(predictions, references)
    return _squad_v2(predictions, references, no_answer_probabilities, threshold)
