"""Multiple choice (RACE-style): the head against `transformers`' *ForMultipleChoice (logits, gradients, save and
load both ways), the JSONL reader, and `berta finetune --task multiple-choice` end to end on a generated RACE-style
file; plus an NLI-style sentence-pair classification trained end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import transformers
from conftest import minilm_directory

import berta
from berta.checkpoints.hf import name_table
from berta.cli import main
from berta.tasks.multiple_choice import ChoiceExample, MultipleChoiceTask
from berta.tokenizer import Tokenizer

TOLERANCE = 1e-5
FAMILIES = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}
CITIES = ["Kyoto", "Lagos", "Zurich", "Lima", "Oslo", "Hanoi", "Cairo", "Quito", "Dakar", "Perth"]
NAMES = ["Ada", "Kwame", "Priya", "Mateo", "Aiko", "Olu", "Björn", "Zoë"]


def reference_model(family: str):
    config_class = getattr(transformers, FAMILIES[family] + "Config")
    values = dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if family != "bert":
        values.update(type_vocab_size=1, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    model = getattr(transformers, FAMILIES[family] + "ForMultipleChoice")(config_class(**values)).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorms, so a wrong mapping cannot hide
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


def choice_batch(pad_id: int, padding_side: str = "right"):
    """2 questions x 3 choices of lengths 3..8, padded to 8: (2, 3, 8) ids and mask."""
    generator = torch.Generator().manual_seed(0)
    lengths = [[8, 5, 3], [6, 7, 4]]
    input_ids = torch.full((2, 3, 8), pad_id)
    mask = torch.zeros(2, 3, 8, dtype=torch.long)
    for q, row in enumerate(lengths):
        for c, length in enumerate(row):
            span = slice(0, length) if padding_side == "right" else slice(8 - length, 8)
            input_ids[q, c, span] = torch.randint(5, 101, (length,), generator=generator)
            mask[q, c, span] = 1
    return input_ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_gradients_equal_transformers(family, tmp_path):
    reference = reference_model(family)
    reference.save_pretrained(tmp_path)
    model = berta.load(tmp_path)
    assert type(model) is berta.MultipleChoice and not model.load_report.initialised
    input_ids, mask = choice_batch(reference.config.pad_token_id)
    labels = torch.tensor([2, 0])
    expected = reference(input_ids=input_ids, attention_mask=mask, labels=labels)
    actual = model(input_ids, mask, labels=labels)
    assert actual.logits.shape == (2, 3)
    assert (expected.logits - actual.logits).abs().max() < TOLERANCE
    assert abs(expected.loss.item() - actual.loss.item()) < TOLERANCE
    expected.loss.backward()
    actual.loss.backward()
    table = name_table(model.config, "multiple-choice", reference.base_model_prefix + ".")
    theirs = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        gradient = torch.cat([theirs[t].grad for t in table[name]])
        assert (gradient - parameter.grad).abs().max() < TOLERANCE, name

    left_ids, left_mask = choice_batch(reference.config.pad_token_id, "left")  # positions come from the mask
    with torch.no_grad():
        assert (model(left_ids, left_mask).logits - actual.logits).abs().max() < TOLERANCE


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_berta_checkpoint_opens_in_transformers(family, tmp_path):
    config = berta.EncoderConfig.from_hf_dict(reference_model(family).config.to_dict())
    torch.manual_seed(3)
    model = berta.create(config, "multiple-choice").eval()
    model.save(tmp_path)
    reference, info = transformers.AutoModelForMultipleChoice.from_pretrained(tmp_path, output_loading_info=True)
    assert type(reference).__name__ == FAMILIES[family] + "ForMultipleChoice"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    input_ids, mask = choice_batch(config.pad_token_id)
    with torch.no_grad():
        assert (reference.eval()(input_ids=input_ids, attention_mask=mask).logits
                - model(input_ids, mask).logits).abs().max() < TOLERANCE
    again = berta.load(tmp_path)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def race_rows(count: int, seed: int) -> list[dict]:
    """RACE's own field names: an article, a question, three options and the answer's letter."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        name, city = rng.choice(NAMES), rng.choice(CITIES)
        options = rng.sample([c for c in CITIES if c != city], 2)
        answer = rng.randrange(3)
        options.insert(answer, city)
        filler = rng.choice(["It rained all week.", "The trains were late.", "Nobody minded the cold."])
        cloze = rng.random() < 0.5
        rows.append({
            "article": f"{name} spent the summer in {city}. {filler}",
            "question": f"{name} spent the summer in _." if cloze else f"Where did {name} spend the summer?",
            "options": options,
            "answer": "ABC"[answer],
        })
    return rows


def test_reader_takes_letters_indices_and_renamed_columns(tmp_path):
    tokenizer = Tokenizer.from_pretrained("roberta")
    path = write_jsonl(tmp_path / "mc.jsonl", [
        {"question": "2 + 2 =", "choices": ["3", "4", "5"], "label": 1},
        {"question": "Capital of France?", "choices": ["Rome", "Paris", "Oslo"], "label": "C"},
    ])
    examples = MultipleChoiceTask(tokenizer).read(path)
    assert [e.label for e in examples] == [1, 2] and examples[0].context is None
    race = write_jsonl(tmp_path / "race.jsonl", race_rows(3, 0))
    task = berta.tasks.get("multiple-choice").from_options(
        tokenizer, type("Settings", (), {"max_length": 64, "context_column": "article", "question_column": "question",
                                         "choices_column": "options", "label_column": "answer"})())
    first = task.read(race)[0]
    assert first.context.startswith(race_rows(1, 0)[0]["article"][:10]) and len(first.choices) == 3
    feature = task.featurize([first])[0]
    assert len(feature["input_ids"]) == 3 and feature["length"] == max(len(r) for r in feature["input_ids"])
    batch = task.collate([feature, feature])
    assert batch["input_ids"].shape == (2, 3, feature["length"]) and batch["labels"].tolist() == [first.label] * 2
    # A cloze question has its blank filled with the choice; a plain one has the choice appended.
    assert MultipleChoiceTask._second("He went to _.", "Oslo") == "He went to Oslo."
    assert MultipleChoiceTask._second("Where?", "Oslo") == "Where? Oslo"


@pytest.mark.parametrize("rows, message", [
    ([{"question": "q", "choices": ["a", "b"], "label": 0}, {"question": "q", "choices": ["a", "b", "c"], "label": 0}],
     r"mc\.jsonl line 2: 3 choices, but line 1 has 2"),
    ([{"question": "q", "choices": ["a", "b"], "label": "E"}], r"mc\.jsonl line 1: label 'E' names no choice"),
    ([{"question": "q", "choices": ["a", "b"], "label": "maybe"}], r"line 1: label 'maybe' is neither"),
    ([{"question": "q", "choices": "a b", "label": 0}], r"line 1: field 'choices' must be a list"),
    ([{"question": "q", "label": 0}], r"line 1: no field \['choices'\]"),
])
def test_reader_errors_name_file_and_line(tmp_path, rows, message):
    with pytest.raises(ValueError, match=message):
        MultipleChoiceTask(Tokenizer.from_pretrained("roberta")).read(write_jsonl(tmp_path / "mc.jsonl", rows))


def test_prediction_and_score_on_examples():
    task = MultipleChoiceTask(Tokenizer.from_pretrained("roberta"))
    examples = [ChoiceExample(None, "q", ["a", "b"], 1, "f", 1), ChoiceExample(None, "q", ["a", "b"], 0, "f", 2)]
    rows = [{"logits": torch.tensor([0.0, 2.0]).numpy()}, {"logits": torch.tensor([1.0, 3.0]).numpy()}]
    predictions = task.decode(examples, [], rows)
    assert [p["choice"] for p in predictions] == [1, 1] and predictions[0]["answer"] == "b"
    assert task.score(examples, predictions) == {"accuracy": 0.5, "number": 2}


def run(*argv) -> None:
    main([str(a) for a in argv] + ["--no-progress", "--no-tensorboard"])


def test_finetune_race_style_end_to_end_beats_chance(tmp_path):
    """MiniLM learns to pick the city the article names: accuracy far above the 33% of chance."""
    train = write_jsonl(tmp_path / "train.jsonl", race_rows(72, 1))
    dev = write_jsonl(tmp_path / "dev.jsonl", race_rows(32, 2))
    run("finetune", "--task", "multiple-choice", "--model", minilm_directory(), "--train", train, "--validation", dev,
        "--output", tmp_path / "run", "--context-column", "article", "--choices-column", "options",
        "--label-column", "answer", "--epochs", "3", "--batch-size", "8", "--lr", "1e-4", "--max-length", "32")
    report = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert report["examples"] == 32 and report["accuracy"] >= 0.6, report
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 32 and {"choice", "answer", "probabilities", "gold"} <= set(rows[0])
    assert sum(r["choice"] == r["gold"] for r in rows) / 32 == report["accuracy"]
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["architectures"] == ["BertForMultipleChoice"]
    # The saved model opens in transformers with the same logits.
    reference = transformers.AutoModelForMultipleChoice.from_pretrained(tmp_path / "run" / "model").eval()
    task = MultipleChoiceTask(Tokenizer.from_pretrained(tmp_path / "run" / "model"), 32,
                              berta.tasks.get("multiple-choice").options(
                                  context_column="article", choices_column="options", label_column="answer"))
    batch = task.collate(task.featurize(task.read(dev)[:4]))
    batch.pop("labels")
    with torch.no_grad():
        ours = berta.load(tmp_path / "run" / "model")(**batch).logits
        theirs = reference(**batch).logits
    assert (ours - theirs).abs().max() < 1e-4
    # berta.pipeline(...).choose scores the same sequences as the task's own prediction.
    examples = [e for e in task.read(dev) if "_" not in e.question][:4]
    expected = task.predict(berta.load(tmp_path / "run" / "model"), examples)
    chosen = berta.pipeline(tmp_path / "run" / "model").choose(
        [e.context for e in examples], [[f"{e.question} {c}" for c in e.choices] for e in examples])
    for want, got in zip(expected, chosen, strict=True):
        assert got["index"] == want["choice"]
        assert max(abs(a - b) for a, b in zip(got["scores"], want["probabilities"], strict=True)) < 1e-5


def nli_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        name, city = rng.choice(NAMES), rng.choice(CITIES)
        label = rng.choice(["entailment", "contradiction"])
        other = city if label == "entailment" else rng.choice([c for c in CITIES if c != city])
        rows.append({"premise": f"{name} lives in {city} with two cats.", "hypothesis": f"{name} lives in {other}.",
                     "label": label})
    return rows


def test_nli_sentence_pairs_single_label_end_to_end(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", nli_rows(160, 3))
    dev = write_jsonl(tmp_path / "dev.jsonl", nli_rows(40, 4))
    run("finetune", "--task", "classification", "--model", minilm_directory(), "--train", train,
        "--validation", dev, "--output", tmp_path / "run", "--text-column", "premise", "--text-pair-column",
        "hypothesis", "--epochs", "4", "--batch-size", "16", "--lr", "2e-4", "--max-length", "24")
    report = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    gold = [r["label"] for r in nli_rows(40, 4)]
    majority = max(gold.count("entailment"), gold.count("contradiction")) / len(gold)
    assert report["accuracy"] >= 0.85 > majority, report
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["problem_type"] == "single_label_classification"
    assert sorted(config["id2label"].values()) == ["contradiction", "entailment"]
