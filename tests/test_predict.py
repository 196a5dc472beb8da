"""berta predict: every input format, output in input order equal to the pipeline, malformed lines stop the run
naming the line (or are skipped and counted), and `torchrun --nproc-per-node 2` (gloo) equals one process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import minilm_directory
from test_pipeline import TAGS, TEXTS, save_model

import berta
from berta import cli
from berta.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("classifier"), Tokenizer.from_pretrained("roberta"), "classification",
                      {0: "negative", 1: "positive"})


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_txt_input_in_order_equal_to_the_pipeline_with_a_progress_bar(classifier, tmp_path, capsys):
    texts = [TEXTS[i % len(TEXTS)] + f" {i}" * (i % 7) for i in range(70)]
    source = tmp_path / "inputs.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    output = tmp_path / "out.jsonl"
    cli.main(["predict", "--model", str(classifier), "--input", str(source), "--output", str(output),
              "--batch-size", "8", "--top-k", "2", "--device", "cpu"])
    records = read(output)
    assert [r["line"] for r in records] == list(range(1, 71))
    expected = berta.pipeline(classifier, device="cpu").classify(texts, top_k=2)
    for record, labels in zip(records, expected, strict=True):
        assert [x["label"] for x in record["labels"]] == [x["label"] for x in labels]
        assert [x["score"] for x in record["labels"]] == pytest.approx([x["score"] for x in labels], abs=1e-6)
    printed = capsys.readouterr().err
    assert "predict: 70/70 inputs" in printed and "inputs/s, ETA 0 s" in printed  # plain lines: not a terminal


def test_jsonl_malformed_lines_stop_the_run_or_are_skipped(classifier, tmp_path, capsys):
    source = tmp_path / "inputs.jsonl"
    source.write_text('{"text": "fine", "text_pair": "a pair"}\n{"text": 3}\n\n{"text": "ok", "text_pair": "b"}\n'
                      '{"broken\n[1, 2]\n{"text": "last", "text_pair": "c"}\n', encoding="utf-8")
    output = tmp_path / "out.jsonl"
    command = ["predict", "--model", str(classifier), "--input", str(source), "--output", str(output),
               "--device", "cpu"]
    with pytest.raises(SystemExit, match=r"inputs\.jsonl line 2: field 'text' must be a string, got int; fix it or "
                                         "pass --skip-errors"):
        cli.main(command)
    assert not output.exists()  # nothing half-written
    cli.main([*command, "--skip-errors"])
    records = read(output)
    assert [r["line"] for r in records] == [1, 4, 7]
    assert "3 malformed lines skipped" in capsys.readouterr().err
    expected = berta.pipeline(classifier, device="cpu").classify(["fine", "ok", "last"], ["a pair", "b", "c"])
    assert [r["labels"][0]["score"] for r in records] == pytest.approx([e[0]["score"] for e in expected], abs=1e-6)


def test_csv_columns_stdin_limit_and_embed_from_minilm(tmp_path, monkeypatch, capsys):
    source = tmp_path / "reviews.csv"
    source.write_text('id,review\n1,"a gem, truly"\n2,"two hours\nlost"\n3,fine\n4,"extra",field\n',
                      encoding="utf-8")
    output = tmp_path / "out.jsonl"
    command = ["predict", "--model", str(minilm_directory()), "--input", str(source), "--output", str(output),
               "--device", "cpu"]
    missing = r"no column 'text' \(the text\) in the header \['id', 'review'\]; name yours with --text-column"
    with pytest.raises(SystemExit, match=missing):
        cli.main(command)
    with pytest.raises(SystemExit, match=r"reviews\.csv line 6: 3 fields, expected 2"):
        cli.main([*command, "--text-column", "review"])
    cli.main([*command, "--text-column", "review", "--limit", "3", "--skip-errors"])
    records = read(output)
    assert [r["line"] for r in records] == [2, 4, 5]  # the quoted field spans lines 3-4; its record ends on 4
    expected = berta.pipeline(minilm_directory(), device="cpu").embed(["a gem, truly", "two hours\nlost", "fine"])
    assert np.asarray([r["embedding"] for r in records]) == pytest.approx(expected, abs=1e-6)

    monkeypatch.setattr(sys, "stdin", io.StringIO("a gem, truly\nfine\n"))
    cli.main(["predict", "--model", str(minilm_directory()), "--input", "-", "--output", "-", "--device", "cpu"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["line"] for r in lines] == [1, 2]
    assert np.asarray([r["embedding"] for r in lines]) == pytest.approx(expected[[0, 2]], abs=1e-6)


def test_tag_and_answer_records(tmp_path):
    roberta = Tokenizer.from_pretrained("roberta")
    tokens = save_model(tmp_path / "tokens", roberta, "tokens", TAGS)
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(t for t in TEXTS if t) + "\n", encoding="utf-8")
    cli.main(["predict", "--model", str(tokens), "--input", str(source), "--output", str(tmp_path / "tags.jsonl"),
              "--aggregation", "first", "--device", "cpu"])
    expected = berta.pipeline(tokens, device="cpu").tag([t for t in TEXTS if t], aggregation="first")
    got = [r["entities"] for r in read(tmp_path / "tags.jsonl")]
    assert [[e["word"] for e in row] for row in got] == [[e["word"] for e in row] for row in expected]

    qa = save_model(tmp_path / "qa", roberta, "qa", head_std=1.0)
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": "Who?", "context": c}) + "\n" for c in TEXTS[2:]))
    with pytest.warns(UserWarning, match="doc_stride 128 does not fit"):
        cli.main(["predict", "--model", str(qa), "--input", str(questions), "--output", str(tmp_path / "a.jsonl"),
                  "--device", "cpu"])
    with pytest.warns(UserWarning, match="doc_stride"):
        expected_answers = berta.pipeline(qa, device="cpu").answer(["Who?"] * 3, TEXTS[2:])
    assert [r["answer"] for r in read(tmp_path / "a.jsonl")] == expected_answers


def test_torchrun_two_gloo_processes_equal_one(classifier, tmp_path):
    source = tmp_path / "inputs.txt"
    source.write_text("\n".join(f"{TEXTS[i % 5]} number {i}" for i in range(41)) + "\n", encoding="utf-8")
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    arguments = ["predict", "--model", str(classifier), "--input", str(source), "--device", "cpu", "--batch-size",
                 "4", "--no-progress", "--top-k", "2"]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    subprocess.run([sys.executable, "-m", "berta.cli", *arguments, "--output", str(one)], env=environment,
                   check=True, capture_output=True)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "berta.cli", *arguments, "--output", str(two)], env=environment,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    single, sharded = read(one), read(two)
    assert [r["line"] for r in sharded] == [r["line"] for r in single] == list(range(1, 42))
    for a, b in zip(single, sharded, strict=True):
        assert [x["label"] for x in a["labels"]] == [x["label"] for x in b["labels"]]
        assert [x["score"] for x in a["labels"]] == pytest.approx([x["score"] for x in b["labels"]], abs=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs.txt", "one.jsonl", "two.jsonl"]  # parts removed


def test_encoding_reads_latin1_input_and_utf8_is_the_default(classifier, tmp_path):
    source = tmp_path / "latin1.txt"
    source.write_bytes("café crème\nnaïve\n".encode("latin-1"))
    output = tmp_path / "out.jsonl"
    command = ["predict", "--model", str(classifier), "--input", str(source), "--output", str(output)]
    with pytest.raises(SystemExit, match=r"latin1\.txt line 1: not valid utf-8 text .*pass --encoding"):
        cli.main(command)
    cli.main([*command, "--encoding", "latin-1"])
    expected = berta.pipeline(classifier).classify(["café crème", "naïve"])
    assert [r["labels"][0]["score"] for r in read(output)] == pytest.approx([e[0]["score"] for e in expected],
                                                                           abs=1e-6)
