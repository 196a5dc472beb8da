"""`berta pretrain` and `berta fill-mask` end to end on a small prepared corpus: metrics, validation numbers and
fill-mask probabilities against `transformers` (RobertaForMaskedLM / BertForMaskedLM on the saved directory),
resume through the job, and the errors raised before any training step."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch

import berta
from berta import cli
from berta.data.corpus import BlockDataset, PrepareSettings, prepare
from berta.data.masking import MaskingCollator, MaskingVocabulary
from berta.tokenizer import Tokenizer
from berta.train import loop
from berta.train.pretrain import build_model, masked_lm_evaluator

ASSETS = Path(berta.__file__).parent / "assets" / "gpt2-bpe"
WORDS = ["the", "a", "cat", "dog", "bird", "sat", "ran", "flew", "on", "under", "over", "mat", "tree", "house", "red",
         "green", "small", "big", "quickly", "slowly"]


def fairseq_layout_tokenizer(directory: Path) -> Path:
    """GPT-2 BPE with fairseq's id layout (<s>=0, <pad>=1, </s>=2, <unk>=3): a dict.txt of GPT-2 ids in order."""
    directory.mkdir()
    shutil.copy(ASSETS / "vocab.json", directory)
    shutil.copy(ASSETS / "merges.txt", directory)
    (directory / "dict.txt").write_text("".join(f"{i} 1\n" for i in range(50257)))
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("corpus")
    generator = random.Random(0)
    lines = [" ".join(generator.choice(WORDS) for _ in range(generator.randint(5, 14))) + "." for _ in range(400)]
    (root / "text.txt").write_text("\n".join(lines) + "\n")
    tokenizer = fairseq_layout_tokenizer(root / "tokenizer")
    prepare(PrepareSettings(files=[root / "text.txt"], tokenizer=str(tokenizer), output=root / "data",
                            block_size=32, validation_fraction=0.1, progress=False))
    return root / "data", tokenizer




def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_from_scratch_validation_resume_and_fill_mask(corpus, tmp_path: Path, capsys, one_thread) -> None:
    data, _ = corpus
    run = tmp_path / "run"
    command = [
        "pretrain", "--data", str(data), "--model", "tiny", "--output", str(run), "--max-steps", "6",
        "--batch-size", "8", "--lr", "1e-3", "--save-every", "3", "--eval-every", "3", "--log-every", "1",
        "--seed", "0", "--no-progress", "--no-plot", "--validation-samples", "16",
    ]
    cli.main(command)
    first = records(run)
    assert [r["step"] for r in first] == [1, 2, 3, 4, 5, 6]
    validated = [r for r in first if "val_loss" in r]
    assert [r["step"] for r in validated] == [3, 6]
    for record in validated:
        assert record["val_ppl"] == pytest.approx(math.exp(record["val_loss"]))
        assert 0.0 <= record["val_accuracy"] <= 1.0
    assert first[-1]["loss"] < first[0]["loss"]

    # The run directory's model opens in transformers; the validation loss is the mean cross-entropy over the
    # masked tokens of the fixed validation masking, recomputed here from transformers' full logits.
    from transformers import AutoModelForMaskedLM

    model_dir = run / "model"
    assert (model_dir / "tokenizer.json").is_file()
    reference = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    assert type(reference).__name__ == "RobertaForMaskedLM"
    tokenizer = Tokenizer.from_pretrained(model_dir)
    validation = BlockDataset(data, "validation", tokenizer=tokenizer)
    vocabulary = MaskingVocabulary.from_tokenizer(tokenizer, position_offset=2)
    fixed = MaskingCollator(vocabulary, seed=1)  # the job's validation masking: seed + 1, epoch 0
    indices = list(range(16))
    batch = fixed([validation[i] for i in indices], indices, 0)
    with torch.no_grad():
        logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten()).item()
    assert validated[-1]["val_loss"] == pytest.approx(expected, abs=1e-5)

    # Running the same command again resumes: drop the last checkpoint, and steps 4-6 are redone identically.
    shutil.rmtree(loop.checkpoints(run)[-1])
    shutil.rmtree(run / "model")
    cli.main(command)
    again = records(run)
    assert [r["step"] for r in again] == [1, 2, 3, 4, 5, 6]
    for old, new in zip(first, again, strict=True):
        assert new["loss"] == pytest.approx(old["loss"], abs=1e-6)
        assert new.get("val_loss", 0.0) == pytest.approx(old.get("val_loss", 0.0), abs=1e-6)

    # fill-mask: top-k probabilities equal transformers' softmax at the mask position.
    capsys.readouterr()
    text = "the cat sat on the <mask>."
    cli.main(["fill-mask", "--model", str(model_dir), "--top-k", "3", text])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == text and len(printed) == 4
    encoded = tokenizer([text], return_tensors="pt")
    position = encoded["input_ids"][0].tolist().index(tokenizer.mask_id)
    with torch.no_grad():
        reference_logits = reference(input_ids=encoded["input_ids"]).logits[0, position]
    probabilities, ids = reference_logits.softmax(-1).topk(3)
    for line, probability, token_id in zip(printed[1:], probabilities.tolist(), ids.tolist(), strict=True):
        assert line.split()[-1] == f"{probability:.4f}"
        assert repr(tokenizer.decode([token_id])) in line  # the token as text, its leading space kept


def test_roberta_preset_tokenizer_builds_a_roberta_model_and_gpt2_ids_are_refused() -> None:
    model = build_model("tiny", Tokenizer.from_pretrained("roberta"), block_size=64, seed=0)
    config = model.config
    assert (config.family, config.pad_token_id, config.position_offset, config.vocab_size) == ("roberta", 1, 2, 50262)
    gpt2_ids = Tokenizer.from_pretrained(ASSETS)  # GPT-2's own ids: <pad> = 50260
    with pytest.raises(ValueError, match=r"numbers <pad> 50260.*fairseq's layout.*the `roberta` preset"):
        build_model("tiny", gpt2_ids, block_size=64, seed=0)


def test_validation_loss_is_the_mean_over_all_masked_tokens(corpus) -> None:
    data, tokenizer_dir = corpus
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    validation = BlockDataset(data, "validation", tokenizer=tokenizer)
    collator = MaskingCollator(MaskingVocabulary.from_tokenizer(tokenizer), seed=5)
    model = build_model("tiny", tokenizer, block_size=32, seed=0).eval()
    with torch.no_grad():
        metrics = masked_lm_evaluator(validation, collator, batch_size=3, max_samples=10)(model)
        # Reference: one batch of all 10 samples, full logits, cross-entropy over labels != -100.
        batch = collator([validation[i] for i in range(10)], list(range(10)), 0)
        logits = model(batch["input_ids"], batch["attention_mask"]).logits
    labels = batch["labels"]
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()).item()
    accuracy = (logits.argmax(-1)[labels != -100] == labels[labels != -100]).float().mean().item()
    assert metrics["val_loss"] == pytest.approx(expected, abs=1e-5)
    assert metrics["val_accuracy"] == pytest.approx(accuracy)
    assert metrics["val_tokens"] == float((labels != -100).sum())


def test_errors_before_any_training_step(corpus, tmp_path: Path) -> None:
    data, tokenizer_dir = corpus
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    with pytest.raises(ValueError, match="blocks hold 200 tokens but the model takes at most 128"):
        build_model("tiny", tokenizer, block_size=200)
    with pytest.raises(ValueError, match="is a bert model but the data's tokenizer is a roberta tokenizer"):
        build_model("bert-base", tokenizer, block_size=32)
    with pytest.raises(ValueError, match="neither a model directory nor a preset"):
        build_model("no-such-model", tokenizer, block_size=32)
    other = berta.create(berta.EncoderConfig.preset("tiny").replace(vocab_size=1000), "masked-lm")
    other.save(tmp_path / "other")
    with pytest.raises(ValueError, match="vocab_size is 1000 but the data.s tokenizer has 50262 tokens"):
        build_model(str(tmp_path / "other"), tokenizer, block_size=32)
    with pytest.raises(SystemExit, match="holds no mask token"):
        saved = tmp_path / "saved"
        build_model("tiny", tokenizer, block_size=32).save(saved)
        tokenizer.save(saved)
        cli.main(["fill-mask", "--model", str(saved), "no mask here"])


def test_a_padded_vocabulary_pretrains(corpus, tmp_path: Path) -> None:
    """A model with more embedding rows than its tokenizer has tokens (50,265 for the 50,262-token data, as
    `resize_token_embeddings(pad_to_multiple_of=...)` makes) trains; only ids past the model's rows are an error."""
    data, _ = corpus
    padded = berta.create(berta.EncoderConfig.preset("tiny").replace(vocab_size=50265), "masked-lm")
    padded.save(tmp_path / "padded")
    run = tmp_path / "run"
    cli.main(["pretrain", "--data", str(data), "--model", str(tmp_path / "padded"), "--output", str(run),
              "--max-steps", "2", "--batch-size", "4", "--log-every", "1", "--no-progress", "--no-plot",
              "--no-tensorboard"])
    assert [r["step"] for r in records(run)] == [1, 2]
    assert berta.load(run / "model").config.vocab_size == 50265
    with pytest.raises(ValueError, match=r"outside the vocabulary \(vocab_size 50265\)"):
        padded(torch.tensor([[0, 50265, 2]]))
