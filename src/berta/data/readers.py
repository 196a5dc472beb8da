"""Readers for fine-tuning files: tables (CSV / TSV / JSONL), CoNLL token files and SQuAD JSON.

Every example keeps the file and line it came from, so a bad row or an unknown label is reported where a
user can fix it. Files are read through `berta.io`: compressed files (gzip, bz2, xz, told by their first
bytes) read as the text inside, and the format comes from the extension under `.gz` / `.bz2` / `.xz`.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berta import io

log = logging.getLogger(__name__)

TABLE_EXTENSIONS = {".csv": ",", ".tsv": "\t", ".jsonl": None}


@dataclass(frozen=True)
class TextExample:
    """One row of a table: a text, an optional second text (pairs: NLI, paraphrase) and an optional label.

    `label` is a string, or a list of strings for multi-label rows (a JSON array in JSONL files).
    """

    text: str
    text_pair: str | None
    label: str | list[str] | None
    path: str
    line: int


@dataclass(frozen=True)
class Sentence:
    """One sentence of a CoNLL file; `line` is the line of its first token, token i is on line + i."""

    tokens: list[str]
    tags: list[str] | None
    path: str
    line: int


class Examples(list):
    """A reader's examples, and the ones it skipped as wrongly labelled: `skipped` holds (id, problem) pairs, so
    a job can count and name them in its log and report instead of letting the total shrink unexplained."""

    def __init__(self, examples: Sequence[Any] = (), skipped: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(examples)
        self.skipped = list(skipped)


@dataclass(frozen=True)
class QAExample:
    """One SQuAD question; `answers` are (text, character offset into context); none when impossible."""

    id: str
    question: str
    context: str
    answers: list[tuple[str, int]]
    is_impossible: bool


def _missing_columns(path: Path, where: str, columns: list[str], present: Sequence[str]) -> None:
    missing = [column for column in columns if column not in present]
    if missing:
        raise ValueError(f"{path}{where}: no column {missing}; the columns are {list(present)}")


def _delimited_records(
    path: Path, delimiter: str, quoting: int, columns: list[str], encoding: str
) -> Iterator[tuple[int, dict[str, str]]]:
    # io.lines keeps line endings, so the csv module sees line breaks inside quoted fields.
    reader = csv.reader((text for _, text in io.lines(path, encoding)), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: no header line; the first line must name the columns")
        _missing_columns(path, "", columns, header)
        start = reader.line_num + 1
        for row in reader:
            if row:
                if len(row) != len(header):
                    raise ValueError(
                        f"{path} line {start}: {len(row)} fields, expected {len(header)} as in the header "
                        f"{header}"
                    )
                yield start, dict(zip(header, row, strict=True))
            start = reader.line_num + 1
    except csv.Error as error:
        raise ValueError(f"{path} line {reader.line_num}: {error}") from error


def _jsonl_records(path: Path, columns: list[str], encoding: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, record in io.read_jsonl(path, encoding):
        _missing_columns(path, f" line {number}", columns, list(record))
        yield number, record


class _EmptyFieldError(ValueError):
    """An empty text or label: an error, or a counted skip with `skip_empty`."""


def _text_field(path: Path, line: int, record: Mapping[str, Any], column: str) -> str:
    value = record[column]
    if not isinstance(value, str):
        raise ValueError(f"{path} line {line}: column {column!r} holds {type(value).__name__}, expected text")
    if not value.strip():
        raise _EmptyFieldError(f"{path} line {line}: empty text in column {column!r}")
    return value


def _label_field(path: Path, line: int, value: Any, column: str) -> str | list[str]:
    # JSON numbers and booleans become their JSON spelling, so 1 in a JSONL file and "1" in a CSV file are
    # the same label.
    if isinstance(value, list):
        return [_label_field(path, line, item, column) for item in value]
    if value is None or isinstance(value, dict):
        raise ValueError(f"{path} line {line}: column {column!r} holds {json.dumps(value)}, expected a label")
    label = value if isinstance(value, str) else json.dumps(value)
    if not label.strip():
        raise _EmptyFieldError(f"{path} line {line}: empty label in column {column!r}")
    return label


def read_table(
    path: str | Path,
    text_column: str,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    delimiter: str | None = None,
    skip_empty: bool = False,
    encoding: str = "utf-8",
) -> list[TextExample]:
    """Read examples from a CSV, TSV or JSONL file (optionally compressed), choosing columns by name.

    The format follows the extension; `delimiter` overrides the CSV/TSV separator. TSV is read without
    quote handling, as GLUE-style files contain bare quote characters. An empty text or label is an error
    naming file and line; with `skip_empty=True` such rows are skipped and counted in one warning.

    Example:
        >>> import tempfile, pathlib
        >>> train = pathlib.Path(tempfile.mkdtemp()) / "train.csv"
        >>> _ = train.write_text('review,sentiment\\n"A gripping,\\nfilm.",fresh\\nDull.,rotten\\n')
        >>> examples = read_table(train, text_column="review", label_column="sentiment")
        >>> examples[0].text, examples[0].label, examples[1].line  # a quoted field may span lines
        ('A gripping,\\nfilm.', 'fresh', 4)
    """
    path = Path(path)
    io.check_file(path)
    suffix = io.format_suffix(path)
    columns = [c for c in (text_column, text_pair_column, label_column) if c is not None]
    if suffix not in TABLE_EXTENSIONS and delimiter is None:
        raise ValueError(
            f"{path}: cannot tell the format from the extension {suffix!r}; expected one of "
            f"{sorted(TABLE_EXTENSIONS)} (optionally .gz/.bz2/.xz); rename the file to say its format"
        )
    if suffix == ".jsonl":
        if delimiter is not None:
            raise ValueError(f"{path}: a delimiter applies to CSV/TSV files, not JSON Lines")
        records: Iterator[tuple[int, Mapping[str, Any]]] = _jsonl_records(path, columns, encoding)
    else:
        separator = delimiter or TABLE_EXTENSIONS.get(suffix) or ","
        quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
        records = _delimited_records(path, separator, quoting, columns, encoding)
    examples = []
    skipped = []
    for line, record in records:
        try:
            example = TextExample(
                text=_text_field(path, line, record, text_column),
                text_pair=_text_field(path, line, record, text_pair_column) if text_pair_column else None,
                label=_label_field(path, line, record[label_column], label_column) if label_column else None,
                path=str(path),
                line=line,
            )
        except _EmptyFieldError:
            if not skip_empty:
                raise
            skipped.append(line)
            continue
        examples.append(example)
    if skipped:
        warnings.warn(
            f"{path}: skipped {len(skipped)} rows with an empty text or label, on lines {skipped[:10]}"
            + (" ..." if len(skipped) > 10 else ""),
            stacklevel=2,
        )
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def read_conll(path: str | Path, token_column: int = 0, tag_column: int | None = -1,
               encoding: str = "utf-8") -> list[Sentence]:
    """Read a CoNLL-style file: one token per line, fields split by tabs (or spaces), blank lines between
    sentences, lines starting with `-DOCSTART-` skipped. `tag_column=None` reads tokens only (text to tag).

    Every token line must have as many fields as the first one.

    Example:
        >>> import tempfile, pathlib
        >>> train = pathlib.Path(tempfile.mkdtemp()) / "train.conll"  # "EU NNP B-NP B-ORG" lines, as CoNLL-2003
        >>> _ = train.write_text("-DOCSTART- -X- -X- O\\n\\nEU NNP B-NP B-ORG\\nrejects VBZ B-VP O\\n")
        >>> sentences = read_conll(train)
        >>> sentences[0].tokens, sentences[0].tags, sentences[0].line
        (['EU', 'rejects'], ['B-ORG', 'O'], 3)
    """
    path = Path(path)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    expected: tuple[int, int, str] | None = None  # (fields, line number, separator) of the first token line

    def close_sentence() -> None:
        if tokens:
            sentences.append(Sentence(list(tokens), list(tags) if tag_column is not None else None, str(path),
                                      start))
            tokens.clear()
            tags.clear()

    for number, raw in io.lines(path, encoding):
        line = raw.rstrip("\r\n")
        if not line.strip():
            close_sentence()
            continue
        # Document separators may carry fewer fields than token lines; they are never tokens.
        if line.split()[0] == "-DOCSTART-":
            close_sentence()
            continue
        if expected is None:
            separator = "\t" if "\t" in line else " "
            fields = _split_fields(line, separator)
            expected = (len(fields), number, separator)
            for name, column in (("token column", token_column), ("tag column", tag_column)):
                if column is not None and not -len(fields) <= column < len(fields):
                    raise ValueError(
                        f"{path} line {number}: {name} {column} but the line has {len(fields)} fields"
                    )
            if tag_column is not None and token_column % len(fields) == tag_column % len(fields):
                raise ValueError(
                    f"{path} line {number}: {len(fields)} field per line, expected a token and its tag "
                    f"(token column {token_column}, tag column {tag_column}); is it a file of tokens only?"
                )
        fields = _split_fields(line, expected[2])
        if len(fields) != expected[0]:
            raise ValueError(
                f"{path} line {number}: {len(fields)} fields, expected {expected[0]} as on line "
                f"{expected[1]}: {line!r}"
            )
        if not tokens:
            start = number
        tokens.append(fields[token_column])
        if tag_column is not None:
            tags.append(fields[tag_column])
    close_sentence()
    if not sentences:
        raise ValueError(f"{path}: no sentences")
    return sentences


def _split_fields(line: str, separator: str) -> list[str]:
    # Tab-separated files may hold tokens with spaces inside; otherwise any run of spaces separates.
    return [field.strip() for field in line.split("\t")] if separator == "\t" else line.split()


def _require(value: Any, kinds: tuple[type, ...], path: Path, where: str, field: str) -> Any:
    # bool is an int in Python, but `"answer_start": true` is not an offset.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(kind.__name__ for kind in kinds)
        raise ValueError(f"{path}: {where}: field {field!r} holds {json.dumps(value)[:80]}, expected {expected}")
    return value


def _field(record: Any, name: str, kinds: tuple[type, ...], path: Path, where: str) -> Any:
    if not isinstance(record, dict):
        raise ValueError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
    if name not in record:
        raise ValueError(f"{path}: {where}: missing field {name!r}; the fields are {sorted(record)}")
    return _require(record[name], kinds, path, where, name)


def read_squad(path: str | Path, strict: bool = False, encoding: str = "utf-8") -> Examples:
    """Read SQuAD v1.1 / v2.0 JSON (optionally compressed) into one example per question.

    An answer whose text differs from `context[answer_start:answer_start + len(text)]`, or a question marked
    impossible that has answers (or answerable without any), is a wrong label: the question is skipped, listed in
    the result's `skipped` as (id, problem) and counted in one log line; `strict=True` raises instead. A
    missing or mistyped field raises.

    Example:
        >>> import json, tempfile, pathlib
        >>> dev = pathlib.Path(tempfile.mkdtemp()) / "dev-v2.0.json"
        >>> paragraph = {"context": "Normandy is a region in France.", "qas": [{"id": "q1", "question": "Where is "
        ...     "Normandy?", "answers": [{"text": "France", "answer_start": 24}], "is_impossible": False}]}
        >>> _ = dev.write_text(json.dumps({"data": [{"title": "Normandy", "paragraphs": [paragraph]}]}))
        >>> examples = read_squad(dev)
        >>> examples[0].question, examples[0].answers, examples[0].is_impossible
        ('Where is Normandy?', [('France', 24)], False)
    """
    path = Path(path)
    document = io.read_json(path, encoding)
    examples: list[QAExample] = []
    problems: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for a, article in enumerate(_field(document, "data", (list,), path, "top level")):
        for p, paragraph in enumerate(_field(article, "paragraphs", (list,), path, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", (str,), path, where)
            for q, qa in enumerate(_field(paragraph, "qas", (list,), path, where)):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                qid = str(_field(qa, "id", (str, int), path, where))
                if qid in seen:
                    raise ValueError(f"{path}: {where}: id {qid!r} already used at {seen[qid]}")
                seen[qid] = where
                question = _field(qa, "question", (str,), path, where)
                answers = []
                for i, answer in enumerate(_field(qa, "answers", (list,), path, where)):
                    text = _field(answer, "text", (str,), path, f"{where}.answers[{i}]")
                    offset = _field(answer, "answer_start", (int,), path, f"{where}.answers[{i}]")
                    answers.append((text, offset))
                is_impossible = _require(qa.get("is_impossible", not answers), (bool,), path, where, "is_impossible")
                problem = _answer_problem(context, answers, is_impossible)
                if problem:
                    if strict:
                        raise ValueError(f"{path}: {where} (id {qid!r}): {problem}")
                    problems.append((qid, problem))
                    continue
                examples.append(QAExample(qid, question, context, answers, is_impossible))
    if problems:
        log.warning("%s", skipped_line(path, len(examples) + len(problems), problems))
    return Examples(examples, problems)


def skipped_line(path: str | Path, total: int, skipped: Sequence[tuple[str, str]]) -> str:
    """One line naming the questions a reader skipped: "dev.json: skipped 2 of 50 questions whose answers do
    not fit their context: q7 (answer 'France' at 23, but the context there reads ' Franc'); ..."."""
    shown = "; ".join(f"{qid} ({problem})" for qid, problem in skipped[:5])
    return (f"{path}: skipped {len(skipped)} of {total} questions whose answers do not fit their context: {shown}"
            + (" ..." if len(skipped) > 5 else ""))


def _answer_problem(context: str, answers: list[tuple[str, int]], is_impossible: bool) -> str | None:
    if is_impossible and answers:
        return f"marked impossible but has {len(answers)} answers"
    if not is_impossible and not answers:
        return "marked answerable but has no answers"
    for text, offset in answers:
        found = context[offset : offset + len(text)] if offset >= 0 else ""
        if found != text:
            return f"answer {text!r} at {offset}, but the context there reads {found!r}"
    return None
