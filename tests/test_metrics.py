"""berta.metrics against its references: scikit-learn, scipy, seqeval and the official SQuAD scripts."""

from __future__ import annotations

import collections
import math
import random
import re
import string
import warnings

import numpy as np
import pytest
import scipy.stats
import seqeval.metrics.sequence_labeling as seqeval_default
import seqeval.metrics.v1 as seqeval_strict
import seqeval.scheme
import sklearn.metrics
import sklearn.preprocessing

from berta import metrics

TOLERANCE = 1e-12
# scikit-learn warns when the inputs hold a single class; those are deliberate edge cases here.
pytestmark = pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE) or (math.isnan(a) and math.isnan(b))


# --------------------------------------------------------------------------- classification (scikit-learn)


def check_classification(predictions, labels, average, positive_label=1):
    ours = metrics.classification(predictions=predictions, references=labels, average=average,
                                  positive_label=positive_label)
    reference = sklearn.metrics.precision_recall_fscore_support(
        labels, predictions, average=average, pos_label=positive_label, zero_division=0
    )
    assert close(ours["precision"], reference[0]), (predictions, labels, average)
    assert close(ours["recall"], reference[1]), (predictions, labels, average)
    assert close(ours["f1"], reference[2]), (predictions, labels, average)
    assert close(ours["accuracy"], sklearn.metrics.accuracy_score(labels, predictions))
    assert close(ours["mcc"], sklearn.metrics.matthews_corrcoef(labels, predictions))
    assert ours["number"] == len(labels)
    order = sorted(set(predictions) | set(labels))
    per_class = sklearn.metrics.precision_recall_fscore_support(
        labels, predictions, labels=order, average=None, zero_division=0
    )
    assert list(ours["per_class"]) == order
    for i, label in enumerate(order):
        figures = ours["per_class"][label]
        assert close(figures["precision"], per_class[0][i])
        assert close(figures["recall"], per_class[1][i])
        assert close(figures["f1"], per_class[2][i])
        assert figures["support"] == per_class[3][i]


@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_classification_matches_sklearn_on_random_multiclass(average):
    rng = np.random.default_rng(0)
    for _ in range(150):
        size = int(rng.integers(1, 40))
        classes = int(rng.integers(1, 6))
        labels = rng.integers(0, classes, size).tolist()
        # Mostly right, sometimes a class that never occurs in the labels.
        predictions = [t if rng.random() < 0.6 else int(rng.integers(0, classes + 1)) for t in labels]
        check_classification(predictions, labels, average)


def test_classification_matches_sklearn_on_random_binary():
    rng = np.random.default_rng(1)
    for _ in range(150):
        size = int(rng.integers(1, 30))
        labels = rng.integers(0, 2, size).tolist()
        predictions = rng.integers(0, 2, size).tolist()
        check_classification(predictions, labels, "binary")


@pytest.mark.parametrize("average", ["binary", "macro", "micro", "weighted"])
def test_classification_edge_cases(average):
    cases = [
        ([1, 1, 1], [1, 1, 1]),  # a single class, all right
        ([0, 0, 0], [0, 0, 0]),  # a single class that is not the positive one
        ([0, 0, 0], [1, 1, 1]),  # all wrong
        ([1], [0]),
        ([0, 1, 0, 1], [1, 0, 1, 0]),  # perfectly anti-correlated: mcc -1
    ]
    for predictions, labels in cases:
        check_classification(predictions, labels, average)


def test_classification_string_labels_and_positive_label():
    labels = ["fresh", "rotten", "rotten", "fresh", "fresh"]
    predictions = ["fresh", "fresh", "rotten", "rotten", "fresh"]
    check_classification(predictions, labels, "binary", positive_label="rotten")
    check_classification(predictions, labels, "macro")
    with pytest.raises(ValueError, match="positive_label=1 is not one of the classes"):
        metrics.classification(predictions=predictions, references=labels, average="binary")
    with pytest.raises(ValueError, match="at most two classes"):
        metrics.classification(predictions=[0, 1, 2], references=[0, 1, 2], average="binary")
    with pytest.raises(ValueError, match="average must be one of"):
        metrics.classification(predictions=[0], references=[0], average="samples")
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        metrics.classification(predictions=[0, 1, 0], references=[0, 1])
    with pytest.raises(ValueError, match="nothing to score"):
        metrics.classification(predictions=[], references=[])
    with pytest.raises(ValueError, match="labels: expected one label per example; use multi_label"):
        metrics.classification(predictions=[0, 1], references=[[0, 1], [1, 0]])
    # numpy arrays and numpy scalars work, and keys come back as plain Python values.
    result = metrics.classification(predictions=np.array([0, 1, 1]), references=np.array([0, 1, 0]))
    assert list(result["per_class"]) == [0, 1] and type(next(iter(result["per_class"]))) is int


def test_confusion_matrix_matches_sklearn():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 60).tolist()
    predictions = rng.integers(0, 5, 60).tolist()
    order, matrix = metrics.confusion_matrix(predictions=predictions, references=labels)
    assert order == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(matrix, sklearn.metrics.confusion_matrix(labels, predictions, labels=order))
    with pytest.raises(ValueError, match=r"labels \['4'\] are not in label_order"):
        metrics.confusion_matrix(predictions=predictions, references=labels, label_order=[0, 1, 2, 3])


@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_multi_label_matches_sklearn_on_indicator_matrices(average):
    rng = np.random.default_rng(11)
    names = ["art", "news", "sports", "tech"]
    for trial in range(150):
        size = int(rng.integers(1, 20))
        # Some trials with no gold labels at all (weighted average falls back to unweighted).
        density = 0.0 if trial % 25 == 0 else 0.4
        labels = [{n for n in names if rng.random() < density} for _ in range(size)]
        predictions = [{n for n in names if rng.random() < 0.4} for _ in range(size)]
        # Classes are the labels that occur, as for single-label input. scikit-learn reads a one-column
        # indicator matrix as binary input, not multi-label, so those trials cannot be compared.
        used = sorted(set().union(*labels, *predictions))
        if len(used) < 2:
            continue
        ours = metrics.multi_label(predictions=predictions, references=labels, average=average)
        binarizer = sklearn.preprocessing.MultiLabelBinarizer(classes=used).fit([used])
        gold, predicted = binarizer.transform(labels), binarizer.transform(predictions)
        reference = sklearn.metrics.precision_recall_fscore_support(gold, predicted, average=average,
                                                                     zero_division=0)
        assert close(ours["precision"], reference[0])
        assert close(ours["recall"], reference[1])
        assert close(ours["f1"], reference[2])
        assert close(ours["accuracy"], sklearn.metrics.accuracy_score(gold, predicted))
        per_class = sklearn.metrics.precision_recall_fscore_support(gold, predicted, average=None, zero_division=0)
        assert list(ours["per_class"]) == used
        for i, label in enumerate(used):
            figures = ours["per_class"][label]
            assert (figures["precision"], figures["recall"], figures["f1"], figures["support"]) == pytest.approx(
                (per_class[0][i], per_class[1][i], per_class[2][i], per_class[3][i]), rel=TOLERANCE, abs=TOLERANCE
            )


def test_multi_label_bad_input():
    with pytest.raises(ValueError, match="nothing to score"):
        metrics.multi_label(predictions=[set()], references=[set()])
    with pytest.raises(ValueError, match="for multi-label"):
        metrics.multi_label(predictions=[{"a"}], references=[{"a"}], average="binary")


# --------------------------------------------------------------------------- regression (scipy, scikit-learn)


def test_regression_matches_scipy_on_random_inputs_with_ties():
    rng = np.random.default_rng(3)
    for trial in range(100):
        size = int(rng.integers(2, 50))
        targets = rng.normal(size=size)
        predictions = targets + rng.normal(scale=float(rng.uniform(0.1, 3)), size=size)
        if trial % 2:  # integer-valued: many ties, which Spearman must average
            targets, predictions = np.round(targets * 2), np.round(predictions * 2)
        ours = metrics.regression(predictions=predictions.tolist(), references=targets.tolist())
        if np.ptp(predictions) == 0 or np.ptp(targets) == 0:
            continue
        assert close(ours["pearson"], scipy.stats.pearsonr(predictions, targets).statistic)
        assert close(ours["spearman"], scipy.stats.spearmanr(predictions, targets).statistic)
        assert close(ours["mse"], sklearn.metrics.mean_squared_error(targets, predictions))
        assert ours["number"] == size


def test_regression_constant_input_gives_nan_like_scipy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = scipy.stats.pearsonr([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]).statistic
    ours = metrics.regression(predictions=[1.0, 1.0, 1.0], references=[1.0, 2.0, 3.0])
    assert math.isnan(reference) and math.isnan(ours["pearson"]) and math.isnan(ours["spearman"])
    assert ours["mse"] == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        metrics.regression(predictions=[1.0], references=[1.0])


# --------------------------------------------------------------------------- entities (seqeval)

TYPES = ["PER", "LOC", "MISC"]


def random_tags(rng: random.Random, prefixes: str, length: int) -> list[str]:
    # Heavy on O and on prefixes out of place, so ill-formed sequences are common.
    return [
        "O" if rng.random() < 0.35 else f"{rng.choice(prefixes)}-{rng.choice(TYPES)}" for _ in range(length)
    ]


def random_corpus(rng: random.Random, prefixes: str) -> tuple[list[list[str]], list[list[str]]]:
    gold, predicted = [], []
    for _ in range(rng.randint(0, 6)):
        length = rng.randint(0, 8)
        gold_sentence = random_tags(rng, prefixes, length)
        noise = random_tags(rng, prefixes, length)
        gold.append(gold_sentence)
        predicted.append([n if rng.random() < 0.4 else g for g, n in zip(gold_sentence, noise, strict=True)])
    return predicted, gold


def check_entities(predicted, gold, scheme="IOB2", strict=False):
    ours = metrics.entities(predictions=predicted, references=gold, scheme=scheme, strict=strict)
    if not gold:  # seqeval refuses an empty corpus; nothing found of nothing is 0, as for all-O input
        assert ours == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 0, "accuracy": 0.0, "per_type": {}}
        return
    if strict:
        reference_scheme = {"IOB1": seqeval.scheme.IOB1, "IOB2": seqeval.scheme.IOB2,
                            "BIOES": seqeval.scheme.IOBES}[scheme]

        def reference(average):
            return seqeval_strict.precision_recall_fscore_support(
                gold, predicted, average=average, zero_division=0, scheme=reference_scheme
            )

        types = seqeval_strict.unique_labels(gold, predicted, reference_scheme)
    else:

        def reference(average):
            return seqeval_default.precision_recall_fscore_support(
                gold, predicted, average=average, zero_division=0
            )

        types = sorted({t for t, _, _ in seqeval_default.get_entities(gold + predicted)})
    precision, recall, f1, number = reference("micro")
    assert (ours["precision"], ours["recall"], ours["f1"], ours["number"]) == (precision, recall, f1, number)
    assert list(ours["per_type"]) == types
    if types:
        per_type = reference(None)
        for i, entity_type in enumerate(types):
            figures = ours["per_type"][entity_type]
            expected = (per_type[0][i], per_type[1][i], per_type[2][i], per_type[3][i])
            assert (figures["precision"], figures["recall"], figures["f1"], figures["number"]) == expected
    if any(gold):
        assert ours["accuracy"] == seqeval_default.accuracy_score(gold, predicted)


def test_entities_default_mode_matches_seqeval_on_random_iob2():
    rng = random.Random(4)
    for _ in range(400):
        check_entities(*random_corpus(rng, "BI"))


def test_entities_default_mode_matches_seqeval_on_random_bioes():
    rng = random.Random(5)
    for _ in range(300):
        check_entities(*random_corpus(rng, "BIES"), scheme="BIOES")


@pytest.mark.parametrize(("scheme", "prefixes"), [("IOB1", "BI"), ("IOB2", "BI"), ("BIOES", "BIES")])
def test_entities_strict_mode_matches_seqeval_strict(scheme, prefixes):
    rng = random.Random(6)
    for _ in range(300):
        check_entities(*random_corpus(rng, prefixes), scheme=scheme, strict=True)


@pytest.mark.parametrize("strict", [False, True])
def test_entities_edge_cases(strict):
    cases = [
        ([], []),  # no sentences
        ([[]], [[]]),  # an empty sentence
        ([["O", "O"]], [["O", "O"]]),  # all O
        ([["O", "O"]], [["B-PER", "O"]]),  # nothing predicted
        ([["B-PER", "O"]], [["O", "O"]]),  # nothing to find
        ([["I-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]]),  # I- without B-
        ([["O", "I-LOC"]], [["O", "B-LOC"]]),  # entity at the end, I- without B-
        ([["B-LOC", "I-PER"]], [["B-LOC", "I-LOC"]]),  # type change inside an entity
        ([["B-PER"], ["I-PER"]], [["B-PER"], ["B-PER"]]),  # entities at both ends of sentences
    ]
    for predicted, gold in cases:
        check_entities(predicted, gold, strict=strict)


def test_tags_to_spans_match_seqeval_get_entities():
    rng = random.Random(7)
    for _ in range(300):
        tags = random_tags(rng, "BIES", rng.randint(0, 10))
        expected = [(t, start, end + 1) for t, start, end in seqeval_default.get_entities(tags)]
        assert metrics.tags_to_spans(tags, "BIOES") == expected
        strict = seqeval.scheme.Tokens(tags, seqeval.scheme.IOBES).entities
        assert metrics.tags_to_spans(tags, "IOBES", strict=True) == [(e.tag, e.start, e.end) for e in strict]


def test_tags_to_spans_hand_cases():
    assert metrics.tags_to_spans(["I-PER", "I-PER", "B-PER", "O", "I-LOC"], "IOB1") == [
        ("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5)
    ]
    assert metrics.tags_to_spans(["B-PER", "I-LOC"], "BIO", strict=True) == [("PER", 0, 1)]
    assert metrics.tags_to_spans(["S-PER", "B-LOC", "E-LOC"], "BIOES", strict=True) == [
        ("PER", 0, 1), ("LOC", 1, 3)
    ]
    # Types may contain hyphens.
    assert metrics.tags_to_spans(["B-GPE-LOC", "I-GPE-LOC"]) == [("GPE-LOC", 0, 2)]


def test_entities_reject_bad_input():
    with pytest.raises(ValueError, match="tag 'E-PER' is not valid in scheme IOB2"):
        metrics.entities(predictions=[["E-PER"]], references=[["O"]])
    with pytest.raises(ValueError, match="tag 'PER' is not valid"):
        metrics.entities(predictions=[["PER"]], references=[["O"]])
    with pytest.raises(ValueError, match="unknown tagging scheme 'IOE2'"):
        metrics.entities(predictions=[["O"]], references=[["O"]], scheme="IOE2")
    with pytest.raises(ValueError, match="sequence 1: 1 predicted tags but 2 gold tags"):
        metrics.entities(predictions=[["O"], ["O"]], references=[["O"], ["O", "O"]])
    with pytest.raises(ValueError, match="2 predicted sequences but 1 gold sequences"):
        metrics.entities(predictions=[["O"], ["O"]], references=[["O"]])


# --------------------------------------------------------------------------- SQuAD (official scripts)
# A faithful transcription of the official evaluation scripts, evaluate-v1.1.py and evaluate-v2.0.py
# (https://rajpurkar.github.io/SQuAD-explorer/), run on the dataset layout they read.


def official_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_v1_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def official_v1_exact_match_score(prediction, ground_truth):
    return official_normalize_answer(prediction) == official_normalize_answer(ground_truth)


def official_v1_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def official_v1_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                ground_truths = list(map(lambda x: x["text"], qa["answers"]))
                prediction = predictions[qa["id"]]
                exact_match += official_v1_metric_max_over_ground_truths(
                    official_v1_exact_match_score, prediction, ground_truths
                )
                f1 += official_v1_metric_max_over_ground_truths(official_v1_f1_score, prediction, ground_truths)
    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total
    return {"exact_match": exact_match, "f1": f1}


def official_v2_make_qid_to_has_ans(dataset):
    qid_to_has_ans = {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid_to_has_ans[qa["id"]] = bool(qa["answers"])
    return qid_to_has_ans


def official_v2_get_tokens(s):
    if not s:
        return []
    return official_normalize_answer(s).split()


def official_v2_compute_exact(a_gold, a_pred):
    return int(official_normalize_answer(a_gold) == official_normalize_answer(a_pred))


def official_v2_compute_f1(a_gold, a_pred):
    gold_toks = official_v2_get_tokens(a_gold)
    pred_toks = official_v2_get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def official_v2_get_raw_scores(dataset, preds):
    exact_scores = {}
    f1_scores = {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid = qa["id"]
                gold_answers = [a["text"] for a in qa["answers"] if official_normalize_answer(a["text"])]
                if not gold_answers:
                    gold_answers = [""]
                if qid not in preds:
                    continue
                a_pred = preds[qid]
                exact_scores[qid] = max(official_v2_compute_exact(a, a_pred) for a in gold_answers)
                f1_scores[qid] = max(official_v2_compute_f1(a, a_pred) for a in gold_answers)
    return exact_scores, f1_scores


def official_v2_apply_no_ans_threshold(scores, na_probs, qid_to_has_ans, na_prob_thresh):
    new_scores = {}
    for qid, s in scores.items():
        pred_na = na_probs[qid] > na_prob_thresh
        if pred_na:
            new_scores[qid] = float(not qid_to_has_ans[qid])
        else:
            new_scores[qid] = s
    return new_scores


def official_v2_make_eval_dict(exact_scores, f1_scores, qid_list=None):
    if not qid_list:
        total = len(exact_scores)
        return collections.OrderedDict(
            [
                ("exact", 100.0 * sum(exact_scores.values()) / total),
                ("f1", 100.0 * sum(f1_scores.values()) / total),
                ("total", total),
            ]
        )
    else:
        total = len(qid_list)
        return collections.OrderedDict(
            [
                ("exact", 100.0 * sum(exact_scores[k] for k in qid_list) / total),
                ("f1", 100.0 * sum(f1_scores[k] for k in qid_list) / total),
                ("total", total),
            ]
        )


def official_v2_merge_eval(main_eval, new_eval, prefix):
    for k in new_eval:
        main_eval["%s_%s" % (prefix, k)] = new_eval[k]  # noqa: UP031 (transcribed as published)


def official_v2_find_best_thresh(preds, scores, na_probs, qid_to_has_ans):
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score = num_no_ans
    best_score = cur_score
    best_thresh = 0.0
    qid_list = sorted(na_probs, key=lambda k: na_probs[k])
    for qid in qid_list:
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            if preds[qid]:  # noqa: SIM108 (transcribed as published)
                diff = -1
            else:
                diff = 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def official_v2_find_all_best_thresh(main_eval, preds, exact_raw, f1_raw, na_probs, qid_to_has_ans):
    best_exact, exact_thresh = official_v2_find_best_thresh(preds, exact_raw, na_probs, qid_to_has_ans)
    best_f1, f1_thresh = official_v2_find_best_thresh(preds, f1_raw, na_probs, qid_to_has_ans)
    main_eval["best_exact"] = best_exact
    main_eval["best_exact_thresh"] = exact_thresh
    main_eval["best_f1"] = best_f1
    main_eval["best_f1_thresh"] = f1_thresh


def official_v2_evaluate(dataset, preds, na_probs=None, na_prob_thresh=1.0):
    na_prob_file = na_probs is not None
    if not na_prob_file:
        na_probs = {k: 0.0 for k in preds}
    qid_to_has_ans = official_v2_make_qid_to_has_ans(dataset)
    has_ans_qids = [k for k, v in qid_to_has_ans.items() if v]
    no_ans_qids = [k for k, v in qid_to_has_ans.items() if not v]
    exact_raw, f1_raw = official_v2_get_raw_scores(dataset, preds)
    exact_thresh = official_v2_apply_no_ans_threshold(exact_raw, na_probs, qid_to_has_ans, na_prob_thresh)
    f1_thresh = official_v2_apply_no_ans_threshold(f1_raw, na_probs, qid_to_has_ans, na_prob_thresh)
    out_eval = official_v2_make_eval_dict(exact_thresh, f1_thresh)
    if has_ans_qids:
        has_ans_eval = official_v2_make_eval_dict(exact_thresh, f1_thresh, qid_list=has_ans_qids)
        official_v2_merge_eval(out_eval, has_ans_eval, "HasAns")
    if no_ans_qids:
        no_ans_eval = official_v2_make_eval_dict(exact_thresh, f1_thresh, qid_list=no_ans_qids)
        official_v2_merge_eval(out_eval, no_ans_eval, "NoAns")
    if na_prob_file:
        official_v2_find_all_best_thresh(out_eval, preds, exact_raw, f1_raw, na_probs, qid_to_has_ans)
    return dict(out_eval)


def as_dataset(references):
    return [{"paragraphs": [{"qas": [{"id": qid, "answers": [{"text": t} for t in golds]}]}]}
            for qid, golds in references.items()]


WORDS = ["the", "The", "a", "An", "cat", "Cat", "sat", "on", "mat", "mat.", "(1984)", "1984", "--", "é", "Élan",
         "théâtre", "a-ha", "an", "there", "  ", "!", "Paris,", "paris"]


def random_answer(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5)))


def random_squad(rng: random.Random, unanswerable: bool):
    references, predictions, probabilities = {}, {}, {}
    for i in range(rng.randint(1, 12)):
        qid = f"q{i}"
        golds = [] if unanswerable and rng.random() < 0.4 else [random_answer(rng)
                                                              for _ in range(rng.randint(1, 3))]
        references[qid] = golds
        roll = rng.random()
        if golds and roll < 0.4:
            predictions[qid] = rng.choice(golds)  # often right, up to normalisation
        elif unanswerable and roll < 0.6:
            predictions[qid] = ""
        else:
            predictions[qid] = random_answer(rng)
        # Coarse probabilities, so ties are common and their order matters in find_best_thresh.
        probabilities[qid] = rng.choice([0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
    keys = list(probabilities)
    rng.shuffle(keys)
    return references, predictions, {k: probabilities[k] for k in keys}


def test_normalize_answer_matches_official():
    rng = random.Random(8)
    for _ in range(300):
        text = random_answer(rng)
        assert metrics.normalize_answer(text) == official_normalize_answer(text)


def test_squad_v1_matches_official_script():
    rng = random.Random(9)
    for _ in range(300):
        references, predictions, _ = random_squad(rng, unanswerable=False)
        ours = metrics.squad(predictions=predictions, references=references)
        expected = official_v1_evaluate(as_dataset(references), predictions)
        assert ours == {**expected, "total": len(references)}


def test_squad_v1_missing_prediction_scores_zero_with_a_warning():
    references = {"a": ["Paris"], "b": ["the cat"]}
    with pytest.warns(UserWarning, match=r"1 of 2 questions have no prediction and score 0: \['b'\]"):
        ours = metrics.squad(predictions={"a": "paris!"}, references=references)
    assert ours == {**official_v1_evaluate(as_dataset(references), {"a": "paris!"}), "total": 2}
    assert ours["exact_match"] == 50.0
    with pytest.warns(UserWarning):
        assert metrics.squad(predictions={}, references=references) == {"exact_match": 0.0, "f1": 0.0, "total": 2}


@pytest.mark.parametrize("threshold", [1.0, 0.5, 0.0])
def test_squad_v2_matches_official_script(threshold):
    rng = random.Random(10)
    for _ in range(300):
        references, predictions, probabilities = random_squad(rng, unanswerable=True)
        dataset = as_dataset(references)
        expected = official_v2_evaluate(dataset, predictions, na_prob_thresh=threshold)
        expected["exact_match"] = expected.pop("exact")
        assert metrics.squad(predictions=predictions, references=references, threshold=threshold,
                             version="2.0") == expected
        expected = official_v2_evaluate(dataset, predictions, probabilities, na_prob_thresh=threshold)
        expected["exact_match"] = expected.pop("exact")
        assert metrics.squad(predictions=predictions, references=references, no_answer_probabilities=probabilities,
                             threshold=threshold) == expected


def test_squad_hand_cases():
    # Normalisation: case, punctuation, articles and whitespace do not matter.
    result = metrics.squad(predictions={"q": "  The  Eiffel tower."}, references={"q": ["eiffel Tower"]})
    assert result["exact_match"] == 100.0
    # Partial overlap: F1 from the bag of tokens, best gold answer wins.
    result = metrics.squad(predictions={"q": "in Paris France"}, references={"q": ["Paris", "Paris, France"]})
    assert result == {"exact_match": 0.0, "f1": pytest.approx(100 * 0.8), "total": 1}
    # v2: an unanswerable question is right only with "", and gets its own NoAns figures.
    result = metrics.squad(predictions={"q1": "", "q2": "Paris", "q3": ""},
                           references={"q1": [], "q2": ["Paris"], "q3": ["Rome"]})
    assert result == {
        "exact_match": pytest.approx(200 / 3), "f1": pytest.approx(200 / 3), "total": 3,
        "HasAns_exact": 50.0, "HasAns_f1": 50.0, "HasAns_total": 2,
        "NoAns_exact": 100.0, "NoAns_f1": 100.0, "NoAns_total": 1,
    }
    # With no-answer probabilities: answering only below 0.4 would get all three right.
    result = metrics.squad(
        predictions={"q1": "Oslo", "q2": "Paris", "q3": "Milan"},
        references={"q1": [], "q2": ["Paris"], "q3": ["Rome"]},
        no_answer_probabilities={"q1": 0.9, "q2": 0.2, "q3": 0.4},
    )
    assert (result["best_exact"], result["best_exact_thresh"]) == (pytest.approx(200 / 3), 0.2)
    assert result["exact_match"] == pytest.approx(100 / 3)


def test_squad_bad_input():
    with pytest.raises(ValueError, match="nothing to score"):
        metrics.squad(predictions={}, references={})
    with pytest.raises(ValueError, match=r"have no prediction \(use '' for no answer\): \['q2'\]"):
        metrics.squad(predictions={"q1": ""}, references={"q1": [], "q2": ["x"]})
    with pytest.raises(ValueError, match=r"no no-answer probability: \['q2'\]"):
        metrics.squad(predictions={"q1": "", "q2": "x"}, references={"q1": [], "q2": ["x"]},
                      no_answer_probabilities={"q1": 0.5})
    with pytest.raises(ValueError, match="v1.1 has no unanswerable questions"):
        metrics.squad(predictions={"q1": ""}, references={"q1": []}, version="1.1")


def test_metric_inputs_are_keyword_only():
    # scikit-learn's order is (y_true, y_pred); ours was (predictions, labels): a positional call cannot swap them.
    for function, arguments in ((metrics.classification, ([1, 0], [1, 1])), (metrics.multi_label, ([{"a"}], [{"a"}])),
                                (metrics.regression, ([1.0, 2.0], [1.0, 3.0])), (metrics.entities, ([["O"]], [["O"]])),
                                (metrics.squad, ({"q": "a"}, {"q": ["a"]})), (metrics.confusion_matrix, ([1], [1]))):
        with pytest.raises(TypeError, match="positional argument"):
            function(*arguments)
    result = metrics.classification(predictions=[1, 1, 0, 0], references=[1, 0, 0, 0], average="binary")
    assert (result["precision"], result["recall"]) == (0.5, 1.0)  # as sklearn's precision_score(y_true, y_pred)
