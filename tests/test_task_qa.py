"""QA featurizing and post-processing: windows, answers straddling a window edge, whitespace and punctuation
around answers, byte-level BPE offsets with leading spaces, non-ASCII text, the null answer of SQuAD v2."""

import json
import re

import numpy as np
import pytest

from berta.data.readers import QAExample
from berta.tasks.qa import QATask, answer_tokens


def example(qid: str, question: str, context: str, answer: str | None, occurrence: int = 0) -> QAExample:
    if answer is None:
        return QAExample(qid, question, context, [], True)
    start = -1
    for _ in range(occurrence + 1):
        start = context.index(answer, start + 1)
    return QAExample(qid, question, context, [(answer, start)], False)


def oracle(task: QATask, examples: list[QAExample]) -> list[dict]:
    """Post-process logits that put all weight on each window's labelled tokens: the round trip
    featurize -> labels -> logits -> text must give back the gold answer exactly."""
    features = task.featurize(examples)
    windows = [[] for _ in examples]
    for feature in features:
        length = len(feature["input_ids"])
        start, end = np.full(length, -8.0), np.full(length, -8.0)
        start[feature["start_positions"]] += 16.0
        end[feature["end_positions"]] += 16.0
        windows[feature["example"]].append((feature, {"start_logits": start, "end_logits": end}))
    return [task.postprocess(e, w) for e, w in zip(examples, windows, strict=True)]


TRICKY = [
    example("punct", "Who?", "It was discovered by Marie Curie, in 1898.", "Marie Curie"),
    example("quote", "What?", 'He said "hello there" twice.', "hello there"),
    example("spaces", "Where?", "Born in   Zürich  ,  Switzerland.", "Zürich"),
    example("accents", "Which café?", "Le café Procope à Paris est le plus ancien café.", "café Procope"),
    example("cjk", "Where?", "东京 is the capital; Tokyo means 东京.", "东京", occurrence=1),
    example("emoji", "What?", "The sign showed 🎉 party 🎉 tonight.", "party"),
    example("start", "What?", "Photosynthesis makes sugar.", "Photosynthesis"),
    example("end", "What?", "Plants make sugar", "sugar"),
    example("digits", "When?", "The year 1,234.5 was odd.", "1,234.5"),
]


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_oracle_logits_recover_every_answer_exactly(family, request):
    tokenizer = request.getfixturevalue(family)
    task = QATask(tokenizer, max_length=64, stride=16, max_query_length=16)
    predictions = oracle(task, TRICKY)
    for e, p in zip(TRICKY, predictions, strict=True):
        assert p["answer"] == e.answers[0][0], e.id
        assert (p["start"], p["end"]) == (e.answers[0][1], e.answers[0][1] + len(e.answers[0][0])), e.id


def long_context(answer_at: int) -> tuple[str, str]:
    words = [f"w{i}" for i in range(120)]
    words[answer_at : answer_at + 3] = ["Ada", "Lovelace", "Byron"]
    return " ".join(words), "Ada Lovelace Byron"


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_answer_straddling_a_window_edge_is_labelled_in_the_next_window_and_recovered(family, request):
    tokenizer = request.getfixturevalue(family)
    task = QATask(tokenizer, max_length=40, stride=12, max_query_length=8)
    found = 0
    for answer_at in range(5, 100):  # slide the answer over every window boundary
        context, answer = long_context(answer_at)
        e = example("q", "Who?", context, answer)
        features = task.featurize([e])
        assert len(features) > 3
        start, end = e.answers[0][1], e.answers[0][1] + len(answer)
        for feature in features:
            spans = [s for s in feature["offsets"] if s is not None]
            whole = spans[0][0] <= start and spans[-1][1] >= end
            straddles = spans[0][0] < end and spans[-1][1] > start and not whole
            found += straddles
            if straddles:  # a cut answer is never a label: the window points at the first token
                assert (feature["start_positions"], feature["end_positions"]) == (0, 0)
            if whole:
                s, t = feature["start_positions"], feature["end_positions"]
                assert context[feature["offsets"][s][0] : feature["offsets"][t][1]] == answer
        assert oracle(task, [e])[0]["answer"] == answer
    assert found > 5  # the sweep did put answers across window edges


def test_best_span_across_windows_and_null_score_is_the_smallest(roberta):
    task = QATask(roberta, max_length=40, stride=12, max_query_length=8, with_null_answer=True)
    context, answer = long_context(50)
    e = example("q", "Who?", context, answer)
    features = task.featurize([e], labelled=False)
    windows = []
    for i, feature in enumerate(features):
        length = len(feature["input_ids"])
        start, end = np.zeros(length), np.zeros(length)
        start[0] = end[0] = 3.0 + i  # null scores 6, 8, 10, ...: the smallest (6) counts
        windows.append((feature, {"start_logits": start, "end_logits": end}))
    # Put the answer in one window with score 4 + 4 = 8 > null 6: answered, no_answer_score = 6 - 8.
    feature, logits = windows[-1]
    token = {span[0]: i for i, span in enumerate(feature["offsets"]) if span is not None}
    ends = {span[1]: i for i, span in enumerate(feature["offsets"]) if span is not None}
    if e.answers[0][1] not in token:
        feature, logits = next((f, g) for f, g in windows if e.answers[0][1] in
                               {s[0] for s in f["offsets"] if s is not None} and
                               e.answers[0][1] + len(answer) in {s[1] for s in f["offsets"] if s is not None})
        token = {span[0]: i for i, span in enumerate(feature["offsets"]) if span is not None}
        ends = {span[1]: i for i, span in enumerate(feature["offsets"]) if span is not None}
    logits["start_logits"][token[e.answers[0][1]]] = 4.0
    logits["end_logits"][ends[e.answers[0][1] + len(answer)]] = 4.0
    prediction = task.postprocess(e, windows)
    assert prediction["answer"] == answer
    assert prediction["no_answer_score"] == pytest.approx(6.0 - 8.0)
    task.null_threshold = -3.0  # a stricter threshold makes the same logits an unanswered question
    assert task.postprocess(e, windows)["answer"] == ""
    assert task.postprocess(e, windows)["best_span"] == answer


def test_max_answer_length_and_n_best(roberta):
    context = "one two three four five six seven eight nine ten"
    e = example("q", "Which?", context, "two")
    task = QATask(roberta, max_length=64, stride=8, max_query_length=8, max_answer_length=3, n_best=4)
    (feature,) = task.featurize([e], labelled=False)
    length = len(feature["input_ids"])
    start, end = np.zeros(length), np.zeros(length)
    first = next(i for i, s in enumerate(feature["offsets"]) if s is not None)
    start[first + 1] = 5.0  # "two"
    end[first + 8] = 9.0  # "nine": 8 tokens long, over max_answer_length
    end[first + 3] = 2.0  # "four": 3 tokens
    prediction = task.postprocess(e, [(feature, {"start_logits": start, "end_logits": end})])
    assert prediction["answer"] == "two three four"
    assert len(prediction["n_best"]) == 4
    scores = [c["score"] for c in prediction["n_best"]]
    assert scores == sorted(scores, reverse=True)
    assert all(len(c["text"].split()) <= 3 for c in prediction["n_best"])


def test_whitespace_in_token_offsets_is_stripped(roberta):
    # Offsets that include a token's leading space (byte-level BPE without offset trimming).
    e = example("q", "Who?", "Hello  Zoë and friends", "Zoë")
    task = QATask(roberta, max_length=64, stride=8, max_query_length=8)
    feature = {"input_ids": [0] * 6, "offsets": [None, (0, 5), (5, 10), (10, 14), (14, 22), None]}
    start = np.array([0, 0, 5.0, 0, 0, 0])
    end = np.array([0, 0, 5.0, 0, 0, 0])
    prediction = task.postprocess(e, [(feature, {"start_logits": start, "end_logits": end})])
    assert (prediction["answer"], prediction["start"], prediction["end"]) == ("Zoë", 7, 10)
    assert answer_tokens(e, feature["offsets"]) == (2, 2)


def test_impossible_question_is_labelled_with_the_first_token_and_scored_as_v2(roberta):
    examples = [example("a", "Who?", "Ada wrote notes.", "Ada"), example("b", "Why?", "Ada wrote notes.", None)]
    task = QATask(roberta, max_length=64, stride=8, max_query_length=8)
    task.fit_labels(examples)
    assert task.with_null_answer
    features = task.featurize(examples)
    assert (features[1]["start_positions"], features[1]["end_positions"]) == (0, 0)
    predictions = oracle(task, examples)
    assert [p["answer"] for p in predictions] == ["Ada", ""]
    result = task.score(examples, predictions)
    assert result["exact_match"] == result["f1"] == 100.0
    assert result["HasAns_total"] == result["NoAns_total"] == 1


def test_long_question_is_cut_to_max_query_length(roberta):
    question = " ".join(["why"] * 50) + "?"
    task = QATask(roberta, max_length=40, stride=4, max_query_length=8)
    (feature,) = task.featurize([example("q", question, "short context here", "context")])
    assert sum(1 for s in feature["offsets"] if s is None) == 8 + 4  # 8 question tokens + <s> </s></s> </s>


def test_bad_window_settings_are_refused(roberta):
    with pytest.raises(ValueError, match="stride must be smaller"):
        QATask(roberta, max_length=64, stride=64, max_query_length=16)


def test_squad_answer_not_matching_its_offset(tmp_path, roberta, caplog):
    data = {"data": [{"paragraphs": [{"context": "Ada wrote notes.", "qas": [
        {"id": "good", "question": "Who?", "answers": [{"text": "Ada", "answer_start": 0}]},
        {"id": "bad", "question": "What?", "answers": [{"text": "notes", "answer_start": 3}]},
    ]}]}]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    task = QATask(roberta, max_length=64, stride=8, max_query_length=8)
    with caplog.at_level("WARNING", logger="berta"):  # a counted, named skip in the log (issue 9), no raw warning
        examples = task.read(path)
    assert re.search(r"train\.json: skipped 1 of 2 .*bad", caplog.text)
    assert [e.id for e in examples] == ["good"] and [qid for qid, _ in examples.skipped] == ["bad"]
