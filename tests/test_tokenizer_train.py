"""`berta tokenizer train`: the three trainers end to end, input formats, language sampling, bad input.

Reference: `transformers.AutoTokenizer` loading each trained directory must give berta's ids.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from berta.cli import main
from berta.tokenizer import Tokenizer
from berta.tokenizer_train import TokenizerTrainSettings, read_lines, sampled_lines, sampling_rates, train_tokenizer

ENGLISH = [f"the quick brown fox number {i} jumps over the lazy dog near the river bank" for i in range(300)]
FRENCH = [f"le renard brun numéro {i} saute par-dessus le chien paresseux près de la rivière" for i in range(40)]
RUSSIAN = [f"быстрая бурая лиса номер {i} прыгает через ленивую собаку" for i in range(20)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    directory = tmp_path_factory.mktemp("corpus")
    english = directory / "en.txt"
    english.write_text("\n".join(ENGLISH) + "\n\n", encoding="utf-8")
    french = directory / "fr.jsonl"
    french.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(FRENCH)), "utf-8")
    russian = directory / "ru.txt.gz"
    with gzip.open(russian, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(RUSSIAN) + "\n")
    return [english, french, russian]


@pytest.mark.parametrize(("kind", "size", "family", "transformers_class"), [
    ("bpe", 300, "roberta", "RobertaTokenizer"),
    ("unigram", 100, "xlm-roberta", "XLMRobertaTokenizer"),  # SentencePiece finds ~110 pieces in this corpus
    ("wordpiece", 200, "bert", "BertTokenizer"),
])
def test_train_each_type_through_the_cli(kind, size, family, transformers_class, corpus, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    output = tmp_path / kind
    main(["tokenizer", "train", "--type", kind, "--vocab-size", str(size), "--no-progress", "--output", str(output),
          *map(str, corpus)])
    assert "fingerprint" in capsys.readouterr().out
    tok = Tokenizer.from_pretrained(output)
    assert tok.family == family and len(tok) == size
    reference = transformers.AutoTokenizer.from_pretrained(str(output))
    assert type(reference).__name__ == transformers_class
    texts = ENGLISH[:3] + FRENCH[:3] + RUSSIAN[:3] + [f"the {tok.mask_token} fox", "unseen 漢字 👍"]
    pairs = FRENCH[: len(texts)]
    assert tok(texts, pairs, padding=False)["input_ids"] == reference(texts, pairs)["input_ids"]
    encoding = tok.encode("the fox", "le renard")
    assert encoding.ids[0] == tok.cls_id and encoding.ids[-1] == tok.sep_id
    assert tok.decode(tok.encode("the lazy dog").ids, skip_special_tokens=True) == "the lazy dog"


def test_training_is_deterministic(corpus, tmp_path):
    first = train_tokenizer(TokenizerTrainSettings(files=corpus, output=tmp_path / "a", type="bpe", vocab_size=300,
                                                   progress=False))
    second = train_tokenizer(TokenizerTrainSettings(files=corpus, output=tmp_path / "b", type="bpe",
                                                    vocab_size=300, progress=False))
    assert first.fingerprint == second.fingerprint


def test_language_sampling_follows_xlmr_exponent(corpus):
    counts = {Path("en"): 900, Path("sw"): 100}
    rates = sampling_rates(counts, 0.3)
    used = {p: counts[p] * rates[p] for p in counts}
    assert sum(used.values()) == pytest.approx(1000)
    # q_i = p_i^0.3 / sum_j p_j^0.3 (Conneau et al. 2020)
    assert used[Path("sw")] / 1000 == pytest.approx(0.1**0.3 / (0.1**0.3 + 0.9**0.3))
    assert sampling_rates(counts, 1.0)[Path("sw")] == pytest.approx(1.0)

    lines, expected = sampled_lines(TokenizerTrainSettings(files=corpus, output=Path("unused"), alpha=0.3))
    lines = list(lines)
    russian = sum("лиса" in line for line in lines)
    assert russian > 2 * len(RUSSIAN)  # the smallest language is upsampled ...
    assert sum("fox" in line for line in lines) < len(ENGLISH)  # ... the largest subsampled
    assert abs(len(lines) - expected) < 0.1 * expected


def test_bad_input_files_name_file_and_line(tmp_path):
    broken = tmp_path / "broken.txt"
    broken.write_bytes(b"good line\nanother\nbad \xff\xfe byte\n")
    with pytest.raises(ValueError, match=r"broken.txt line 3: not valid utf-8 text \(byte offset 22 in the file\)"):
        list(read_lines(broken))
    records = tmp_path / "records.jsonl"
    records.write_text('{"text": "ok"}\n{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"records.jsonl line 2: no string field 'text' \(--text-field\)"):
        list(read_lines(records))
    assert next(read_lines(records, "text")) == "ok"
    not_json = tmp_path / "bad.jsonl"
    not_json.write_text('{"text": "ok"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: not valid JSON"):
        list(read_lines(not_json))
    with pytest.raises(SystemExit, match=r"berta: error: .*broken.txt line 3: not valid utf-8"):
        main(["tokenizer", "train", "--no-progress", "--output", str(tmp_path / "out"), str(broken)])
    with pytest.raises(SystemExit, match=r"missing.txt: no such file"):
        main(["tokenizer", "train", "--output", str(tmp_path / "out"), str(tmp_path / "missing.txt")])
