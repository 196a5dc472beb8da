"""berta.data.readers on small hand-written files: tables, CoNLL, SQuAD, label vocabularies, bad input."""

from __future__ import annotations

import bz2
import gzip
import json
import re
import warnings

import pytest

from berta.data.readers import (
    QAExample,
    Sentence,
    TextExample,
    read_conll,
    read_squad,
    read_table,
)
from berta.tasks.labels import LabelVocabulary, label_vocabulary

# --------------------------------------------------------------------------- tables


def test_read_csv_with_quotes_multiline_fields_and_blank_lines(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        '\ufeffreview,sentiment,critic\n'  # a byte-order mark, as spreadsheet programs write
        'A gripping film.,fresh,ann\n'
        '\n'
        '"Long, slow, and ""clever""",rotten,bob\n'
        '"Two\nlines",fresh,cy\n'
        'Last one,rotten,dee\n',
        encoding="utf-8",
    )
    examples = read_table(path, text_column="review", label_column="sentiment")
    assert examples == [
        TextExample("A gripping film.", None, "fresh", str(path), 2),
        TextExample('Long, slow, and "clever"', None, "rotten", str(path), 4),
        TextExample("Two\nlines", None, "fresh", str(path), 5),
        TextExample("Last one", None, "rotten", str(path), 7),
    ]


def test_read_tsv_pairs_keeps_bare_quotes(tmp_path):
    # GLUE-style TSV: quote characters are text, not field delimiters.
    path = tmp_path / "mnli.tsv"
    path.write_text('premise\thypothesis\tlabel\n"Quoted start\tA "so-called" hypothesis\tneutral\n')
    (example,) = read_table(path, "premise", text_pair_column="hypothesis", label_column="label")
    assert (example.text, example.text_pair, example.label, example.line) == (
        '"Quoted start', 'A "so-called" hypothesis', "neutral", 2
    )


def test_read_jsonl_labels_numbers_and_lists(tmp_path):
    path = tmp_path / "train.jsonl"
    lines = [
        {"text": "one", "label": 1},
        {"text": "two", "label": "2"},
        {"text": "three", "label": ["sports", "news"], "extra": True},
        {"text": "four", "label": 0.5},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines[:2]) + "\n\n" + "\n".join(
        json.dumps(line) for line in lines[2:]) + "\n")
    examples = read_table(path, "text", label_column="label")
    assert [(e.label, e.line) for e in examples] == [("1", 1), ("2", 2), (["sports", "news"], 4), ("0.5", 5)]


@pytest.mark.parametrize("compression", ["gz", "bz2"])
def test_read_compressed_table(tmp_path, compression):
    path = tmp_path / f"train.csv.{compression}"
    opener = gzip.open if compression == "gz" else bz2.open
    with opener(path, "wt", encoding="utf-8") as file:
        file.write("text,label\nfine,fresh\nbad,rotten\n")
    assert [(e.text, e.label, e.line) for e in read_table(path, "text", label_column="label")] == [
        ("fine", "fresh", 2), ("bad", "rotten", 3)
    ]


def test_delimiter_override(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("text;label\nbonjour;fr\n")
    assert read_table(path, "text", label_column="label", delimiter=";")[0].label == "fr"
    with pytest.raises(ValueError, match=r"data.txt: cannot tell the format from the extension '.txt'"):
        read_table(path, "text")
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="a delimiter applies to CSV/TSV files"):
        read_table(jsonl, "text", delimiter=",")


def test_missing_column_names_file_column_and_columns(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("review,sentiment\ngood,fresh\n")
    expected = f"{path}: no column ['label']; the columns are ['review', 'sentiment']"
    with pytest.raises(ValueError, match=re.escape(expected)):
        read_table(path, "review", label_column="label")
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    expected = f"{jsonl} line 2: no column ['label']; the columns are ['text']"
    with pytest.raises(ValueError, match=re.escape(expected)):
        read_table(jsonl, "text", label_column="label")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "text,label\ngood,x\n ,y\n", "a.csv line 3: empty text in column 'text'"),
        ("b.csv", "text,label\ngood,x\nbad\n", "b.csv line 3: 1 fields, expected 2 as in the header"),
        ("c.csv", "text,label\ngood,\n", "c.csv line 2: empty label in column 'label'"),
        ("d.csv", "", "d.csv: no header line"),
        ("e.csv", "text,label\n", "e.csv: no examples"),
        ("f.jsonl", '{"text": "a", "label": "x"}\n{"text": 3, "label": "x"}\n',
         "f.jsonl line 2: column 'text' holds int, expected text"),
        ("g.jsonl", '{"text": "a", "label": "x"}\n{"text": \n', "g.jsonl line 2: not valid JSON"),
        ("h.jsonl", '["text"]\n', "h.jsonl line 1: expected a JSON object, got list"),
        ("i.jsonl", '{"text": "a", "label": null}\n', "i.jsonl line 1: column 'label' holds null"),
    ],
)
def test_bad_table_rows_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        read_table(path, "text", label_column="label")


def test_skip_empty_counts_skipped_rows(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\ngood,x\n  ,y\nfine,\nlast,z\n")
    expected = f"{path}: skipped 2 rows with an empty text or label, on lines [3, 4]"
    with pytest.warns(UserWarning, match=re.escape(expected)):
        examples = read_table(path, "text", label_column="label", skip_empty=True)
    assert [(e.text, e.line) for e in examples] == [("good", 2), ("last", 5)]


# --------------------------------------------------------------------------- CoNLL

CONLL_2003 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER


-DOCSTART- -X- O O
BRUSSELS NNP B-NP B-LOC
"""


def test_read_conll_2003_layout(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL_2003)
    sentences = read_conll(path)
    assert sentences == [
        Sentence(["EU", "rejects", "German", "call", "."], ["B-ORG", "O", "B-MISC", "O", "O"], str(path), 3),
        Sentence(["Peter", "Blackburn"], ["B-PER", "I-PER"], str(path), 9),
        Sentence(["BRUSSELS"], ["B-LOC"], str(path), 14),  # no blank line at the end of the file
    ]
    assert [s.tags for s in read_conll(path, tag_column=1)][1] == ["NNP", "NNP"]
    assert read_conll(path, tag_column=None)[1] == Sentence(["Peter", "Blackburn"], None, str(path), 9)


def test_read_conll_tab_separated_tokens_with_spaces(tmp_path):
    path = tmp_path / "train.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write("New York\tB-LOC\r\nist\tO\r\n\r\nÉcole\tB-ORG\r\n")
    assert read_conll(path) == [
        Sentence(["New York", "ist"], ["B-LOC", "O"], str(path), 1),
        Sentence(["École"], ["B-ORG"], str(path), 4),
    ]


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        ("EU B-ORG\nrejects\n", {}, "line 2: 1 fields, expected 2 as on line 1: 'rejects'"),
        ("EU NNP B-ORG\n\nx y\n", {}, "line 3: 2 fields, expected 3 as on line 1"),
        ("EU B-ORG\n", {"tag_column": 3}, "line 1: tag column 3 but the line has 2 fields"),
        ("EU\n", {}, "line 1: 1 field per line, expected a token and its tag (token column 0, tag column -1)"),
        ("-DOCSTART- O\n\n", {}, "no sentences"),
    ],
)
def test_bad_conll_names_file_and_line(tmp_path, content, kwargs, message):
    path = tmp_path / "bad.conll"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"{path}") + ".*" + re.escape(message)):
        read_conll(path, **kwargs)


# --------------------------------------------------------------------------- SQuAD

CONTEXT = "Normandy is a region in France. Its dukes held Café Anglais in 1066."


def squad_file(tmp_path, qas, name="dev.json"):
    path = tmp_path / name
    document = {"version": "v2.0", "data": [{"title": "Normandy", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return path


def qa(qid, answers, **extra):
    return {"id": qid, "question": f"question {qid}?", "answers": [{"text": t, "answer_start": s} for t, s in answers],
            **extra}


def test_read_squad_v1_and_v2(tmp_path):
    path = squad_file(tmp_path, [
        qa("q1", [("France", 24), ("in France", 21)]),
        qa("q2", [("Café Anglais", 47)]),  # non-ASCII: offsets count characters
        qa("q3", [], is_impossible=True, plausible_answers=[{"text": "dukes", "answer_start": 36}]),
        qa("q4", []),  # v1-style file without is_impossible: no answers means impossible
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        examples = read_squad(path)
    question = "question q1?"
    assert examples[0] == QAExample("q1", question, CONTEXT, [("France", 24), ("in France", 21)], False)
    assert examples[1].answers == [("Café Anglais", 47)]
    assert [(e.id, e.answers, e.is_impossible) for e in examples[2:]] == [("q3", [], True), ("q4", [], True)]


def test_read_squad_skips_and_counts_answers_that_do_not_match(tmp_path, caplog):
    path = squad_file(tmp_path, [
        qa("good", [("France", 24)]),
        qa("shifted", [("France", 23)]),
        qa("one-bad-gold", [("France", 24), ("Normandy", 1)]),
        qa("contradiction", [("France", 24)], is_impossible=True),
        qa("no-answers", [], is_impossible=False),
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a counted, named skip in the log, not a raw Python warning
        with caplog.at_level("WARNING", logger="berta"):
            examples = read_squad(path)
    assert [e.id for e in examples] == ["good"]
    assert [qid for qid, _ in examples.skipped] == ["shifted", "one-bad-gold", "contradiction", "no-answers"]
    (message,) = [r.getMessage() for r in caplog.records]
    assert "skipped 4 of 5 questions whose answers do not fit" in message
    assert "shifted (answer 'France' at 23, but the context there reads ' Franc')" in message
    assert "one-bad-gold (answer 'Normandy' at 1" in message
    assert "contradiction (marked impossible but has 1 answers)" in message
    assert "no-answers (marked answerable but has no answers)" in message
    with pytest.raises(ValueError, match=re.escape(f"{path}: data[0].paragraphs[0].qas[1] (id 'shifted'): answer")):
        read_squad(path, strict=True)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"version": "1.1"}, "top level: missing field 'data'; the fields are ['version']"),
        ({"data": [{"paragraphs": [{"qas": []}]}]}, "data[0].paragraphs[0]: missing field 'context'"),
        ({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "a", "question": "q", "answers": [
            {"text": "c", "answer_start": "0"}]}]}]}]},
         "data[0].paragraphs[0].qas[0].answers[0]: field 'answer_start' holds \"0\", expected int"),
        ({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "a", "question": "q", "answers": [
            {"text": "c", "answer_start": True}]}]}]}]},
         "data[0].paragraphs[0].qas[0].answers[0]: field 'answer_start' holds true, expected int"),
        ({"data": [{"paragraphs": [{"context": "c", "qas": [
            {"id": "a", "question": "q", "answers": []}, {"id": "a", "question": "r", "answers": []}]}]}]},
         "data[0].paragraphs[0].qas[1]: id 'a' already used at data[0].paragraphs[0].qas[0]"),
    ],
)
def test_bad_squad_structure_names_the_place(tmp_path, document, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        read_squad(path)


def test_squad_invalid_json_names_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n"data": [\n}')
    with pytest.raises(ValueError, match=re.escape(f"{path} line 3: not valid JSON")):
        read_squad(path)


# --------------------------------------------------------------------------- label vocabularies


def test_label_vocabulary_sorted_and_encoded(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,rotten\nb,fresh\nc,rotten\n")
    validation = tmp_path / "validation.csv"
    validation.write_text("text,label\nd,fresh\ne,neutral\n")
    vocabulary = label_vocabulary(read_table(train, "text", label_column="label"))
    assert vocabulary.id2label == {0: "fresh", 1: "rotten"}
    assert vocabulary.label2id == {"fresh": 0, "rotten": 1}
    first, second = read_table(validation, "text", label_column="label")
    assert vocabulary.encode(first) == 0
    expected = f"{validation} line 3: label 'neutral' is not one of the 2 labels of the training data"
    with pytest.raises(ValueError, match=re.escape(expected)):
        vocabulary.encode(second)
    assert LabelVocabulary.from_id2label({"1": "rotten", "0": "fresh"}) == vocabulary
    with pytest.raises(ValueError, match=r"ids must be 0..1, got \[0, 2\]"):
        LabelVocabulary.from_id2label({0: "a", 2: "b"})


def test_label_vocabulary_numeric_labels_sort_by_value(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": "t", "label": label}) + "\n" for label in [10, 2, 0, -1, 1]))
    assert label_vocabulary(read_table(path, "text", label_column="label")).labels == ("-1", "0", "1", "2", "10")


def test_label_vocabulary_multi_label(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": ["news", "sports"]}\n{"text": "b", "label": ["art"]}\n')
    examples = read_table(path, "text", label_column="label")
    vocabulary = label_vocabulary(examples)
    assert vocabulary.labels == ("art", "news", "sports")
    assert vocabulary.encode(examples[0]) == [1, 2]


def test_label_vocabulary_of_tags_reports_the_token_line(tmp_path):
    train = tmp_path / "train.conll"
    train.write_text(CONLL_2003)
    vocabulary = label_vocabulary(read_conll(train))
    assert vocabulary.labels == ("B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER", "O")
    validation = tmp_path / "validation.conll"
    validation.write_text("Paris B-LOC\nHilton I-ORG\n")
    (sentence,) = read_conll(validation)
    with pytest.raises(ValueError, match=re.escape(f"{validation} line 2: label 'I-ORG' is not one of the 6")):
        vocabulary.encode(sentence)
    assert vocabulary.encode(read_conll(train)[1]) == [3, 4]


def test_label_vocabulary_needs_labels(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text("text\nunlabelled\n")
    with pytest.raises(ValueError, match=re.escape(f"{path} line 2: no label")):
        label_vocabulary(read_table(path, "text"))
    with pytest.raises(ValueError, match="no labels in the examples"):
        label_vocabulary([])
