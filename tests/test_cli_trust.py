"""Runs a user can trust (issue 9): a missing head refuses, metrics take keywords, saved models carry their
tokenizer, skipped SQuAD answers are counted, inputs and numbers are checked before any work, and the CLI
speaks one language. References: transformers' fill-mask pipeline and AutoTokenizer, sentence-transformers."""

from __future__ import annotations

import json
from pathlib import Path

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
    model.save(directory)
    tokenizer.save(directory)
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
