"""Tokenizer: WordPiece (BERT), byte-level BPE (RoBERTa) and SentencePiece (XLM-R) on the Rust `tokenizers` engine.

berta's code here is the loading (every file layout the three families ship in), the family conventions
(special tokens, pair templates, fairseq's id layout) and the batching. The tokenizing itself is the Rust
engine, so ids and character offsets are exactly those of `transformers`' tokenizers for the same files.

    tok = Tokenizer.from_pretrained("roberta")            # GPT-2 merges, RoBERTa special tokens
    batch = tok(["Hello world!"], return_tensors="pt")     # input_ids, attention_mask, offset_mapping, ...

The `roberta` preset numbers GPT-2's ids + 4 behind fairseq's special tokens (`<s>`=0, `<pad>`=1, `</s>`=2,
`<unk>`=3, `<mask>` last): fairseq's *layout*, not released roberta.base's `dict.txt`, which renumbers GPT-2 ids
by frequency (real roberta.base: `Hello world!` -> 0, 31414, 232, 328, 2). A model pretrained on the preset is
therefore not vocabulary-compatible with released RoBERTa checkpoints; those bring their own vocabulary
(`vocab.json` + `merges.txt`, or `dict.txt`), which `from_pretrained(directory)` reads.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import tokenizers
from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, Unigram, WordPiece

from berta import io

Family = Literal["bert", "roberta", "xlm-roberta"]
FAMILIES: tuple[str, ...] = ("bert", "roberta", "xlm-roberta")
PRESETS: tuple[str, ...] = ("roberta",)
TRUNCATION_STRATEGIES: tuple[str, ...] = ("longest_first", "only_first", "only_second")

# The `transformers` class that rebuilds each family's pipeline from our tokenizer.json (see `save`).
_TRANSFORMERS_CLASSES = {"bert": "BertTokenizer", "roberta": "RobertaTokenizer", "xlm-roberta": "XLMRobertaTokenizer"}
# BERT's published limit; RoBERTa and XLM-R have 514 positions of which 2 are offset by the padding index.
_MODEL_MAX_LENGTH = 512
# fairseq's Dictionary puts these four first, in this order, for RoBERTa and XLM-R (fairseq/data/dictionary.py).
_FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens of a family. Example: `SpecialTokens.of("bert").cls == "[CLS]"`."""

    cls: str
    sep: str
    pad: str
    unk: str
    mask: str

    @staticmethod
    def of(family: str) -> SpecialTokens:
        """The published special tokens of `family`. Example: `SpecialTokens.of("roberta").mask == "<mask>"`."""
        if family == "bert":
            return SpecialTokens(cls="[CLS]", sep="[SEP]", pad="[PAD]", unk="[UNK]", mask="[MASK]")
        if family in ("roberta", "xlm-roberta"):
            return SpecialTokens(cls="<s>", sep="</s>", pad="<pad>", unk="<unk>", mask="<mask>")
        raise ValueError(f"unknown tokenizer family {family!r}; expected one of {FAMILIES}")

    def in_order(self) -> list[str]:
        # The order `transformers` appends missing special tokens in (bos, eos, unk, sep, pad, cls, mask), so a
        # vocabulary without them (GPT-2's) gets the same new ids here as there.
        return list(dict.fromkeys([self.cls, self.sep, self.unk, self.pad, self.mask]))


class Batch(Mapping):
    """A batch of encodings, read like a dict: `input_ids`, `attention_mask`, `token_type_ids` (BERT only),
    `offset_mapping`, `special_tokens_mask`, and `overflow_to_sample` when long inputs were split into windows.

    Each entry is built on first access (lists, or torch tensors with `return_tensors="pt"`), so a caller pays
    only for what it reads. `word_ids(i)` and `sequence_ids(i)` give the per-token word and segment of row i.

    Example: `batch = tok(["a b"]); batch["input_ids"][0], batch.word_ids(0)`.
    """

    def __init__(
        self,
        encodings: list[tokenizers.Encoding],
        *,
        token_types: bool,
        return_tensors: str | None,
        overflow_to_sample: list[int] | None = None,
        offsets: list[list[tuple[int, int]]] | None = None,
    ) -> None:
        self.encodings = encodings
        self._return_tensors = return_tensors
        self._offsets = offsets
        self._overflow_to_sample = overflow_to_sample
        self._keys = ["input_ids", "attention_mask"]
        if token_types:
            self._keys.append("token_type_ids")
        self._keys += ["offset_mapping", "special_tokens_mask"]
        if overflow_to_sample is not None:
            self._keys.append("overflow_to_sample")
        self._cache: dict[str, Any] = {}

    def _build(self, key: str) -> Any:
        encodings = self.encodings
        if key == "input_ids":
            return [e.ids for e in encodings]
        if key == "attention_mask":
            return [e.attention_mask for e in encodings]
        if key == "token_type_ids":
            return [e.type_ids for e in encodings]
        if key == "offset_mapping":
            return self._offsets if self._offsets is not None else [e.offsets for e in encodings]
        if key == "special_tokens_mask":
            return [e.special_tokens_mask for e in encodings]
        return self._overflow_to_sample

    def __getitem__(self, key: str) -> Any:
        if key in self._cache:
            return self._cache[key]
        if key not in self._keys:
            raise KeyError(f"{key!r}: this batch has {self._keys}")
        value = self._build(key)
        if self._return_tensors == "pt":
            import torch  # imported here so tokenizing never needs torch unless tensors are asked for

            value = torch.tensor(value, dtype=torch.long)
        self._cache[key] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Batch(rows={len(self.encodings)}, keys={self._keys})"

    @property
    def num_rows(self) -> int:
        """Rows in the batch (more than the inputs when windows overflowed). Example: `batch.num_rows`."""
        return len(self.encodings)

    def model_inputs(self) -> dict[str, Any]:
        """Only what an encoder takes: `input_ids`, `attention_mask` and, for BERT, `token_type_ids`.

        Example: `model(**tok(texts, return_tensors="pt").model_inputs())`.
        """
        return {key: self[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in self._keys}

    def word_ids(self, row: int) -> list[int | None]:
        """Word index of each token of `row`; None for special and padding tokens. Example: `batch.word_ids(0)`."""
        return self.encodings[row].word_ids

    def sequence_ids(self, row: int) -> list[int | None]:
        """0 for tokens of the text, 1 for the pair, None for special tokens. Example: `batch.sequence_ids(0)`."""
        return self.encodings[row].sequence_ids


class Tokenizer:
    """One tokenizer for the three families, over a `tokenizers.Tokenizer` (`tok.backend`).

    Load with `Tokenizer.from_pretrained(path_or_preset)`; encode one text with `tok.encode(text)` or a batch with
    `tok(texts)`; decode with `tok.decode(ids)`; write a directory `transformers` loads with `tok.save(path)`.

    Example:
        >>> tok = Tokenizer.from_pretrained("roberta")  # GPT-2 BPE ids + 4, fairseq's special-token layout
        >>> tok.encode("Hello world!").ids  # (released roberta.base's dict.txt numbers it 0, 31414, 232, 328, 2)
        [0, 15500, 999, 4, 2]
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        family: str,
        special_tokens: SpecialTokens | None = None,
        model_max_length: int = _MODEL_MAX_LENGTH,
    ) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown tokenizer family {family!r}; expected one of {FAMILIES}")
        special_tokens = special_tokens or SpecialTokens.of(family)
        backend.no_padding()
        backend.no_truncation()
        missing = [t for t in special_tokens.in_order() if backend.token_to_id(t) is None]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the {family} vocabulary ({len(missing)} missing)")
        self.backend = backend
        self.family = family
        self.special_tokens = special_tokens
        self.model_max_length = model_max_length
        self._ids = {t: backend.token_to_id(t) for t in special_tokens.in_order()}
        # byte-level BPE marks a word start with a space; pre-split words after the first need one (see __call__)
        self._byte_level = isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel)
        # A second engine for batches with padding/truncation, whose settings change per call: the `backend`
        # itself stays plain, so `encode` and callers of `tok.backend` never see another call's padding.
        self._engine: tokenizers.Tokenizer | None = None
        self._engine_settings: tuple | None = None
        self._lock = threading.Lock()
        self._fingerprint: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # picklable for DataLoader workers: the lock and the per-call engine are rebuilt on the other side
        return {**self.__dict__, "_lock": None, "_engine": None, "_engine_settings": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(cls, path_or_preset: str | Path) -> Tokenizer:
        """Load a tokenizer from a model directory, a tokenizer file, or a preset name.

        Directories are read in this order: `tokenizer.json`; `sentencepiece.bpe.model` (XLM-R, fairseq ids);
        `vocab.json` + `merges.txt` (or fairseq's `encoder.json` + `vocab.bpe`; byte-level BPE); `vocab.txt`
        (WordPiece, with `tokenizer_config.json`'s `do_lower_case` / `strip_accents`). A fairseq `dict.txt` beside
        GPT-2 BPE files or a SentencePiece model renumbers ids exactly as fairseq does. Presets: "roberta" (GPT-2
        byte-level BPE, RoBERTa special tokens and pair template, in fairseq's layout: `<s>`=0, `<pad>`=1, `</s>`=2,
        `<unk>`=3, GPT-2's ids + 4, `<mask>`=50261 — so RoBERTa positions start at 2). The GPT-2 files themselves,
        loaded as a directory, keep GPT-2's ids with the special tokens appended, as `transformers` does.

        Example: `Tokenizer.from_pretrained("path/to/xlm-roberta-base")`.
        """
        path = Path(path_or_preset)
        if not path.exists():
            if str(path_or_preset) == "roberta":
                assets = Path(str(resources.files("berta") / "assets" / "gpt2-bpe"))
                return _from_byte_level_bpe(
                    assets / "vocab.json", assets / "merges.txt", None, {}, fairseq_layout=True
                )
            raise FileNotFoundError(
                f"{path_or_preset}: no such file or directory, and not a preset (presets: {', '.join(PRESETS)})"
            )
        directory = path if path.is_dir() else path.parent
        config = _read_config(directory)
        if path.is_file():
            return _from_file(path, config)
        return _from_directory(directory, config)

    @classmethod
    def from_backend(cls, backend: tokenizers.Tokenizer, family: str, special_tokens: SpecialTokens | None = None,
                     model_max_length: int = _MODEL_MAX_LENGTH) -> Tokenizer:
        """Wrap a freshly built or trained engine: register the family's special tokens and pair template.

        Example: `Tokenizer.from_backend(tokenizers.Tokenizer(WordPiece(vocab, unk_token="[UNK]")), "bert")`.
        """
        special = special_tokens or SpecialTokens.of(family)
        # RoBERTa's and XLM-R's <mask> swallows the space before it, as fairseq's fill-mask and the published
        # tokenizer.json files do ("Paris is the <mask>." -> ... "Ġthe", "<mask>", ".").
        backend.add_special_tokens([
            AddedToken(token, special=True, normalized=False, lstrip=token == special.mask and family != "bert")
            for token in special.in_order()
        ])
        backend.post_processor = _post_processor(family, backend, special)
        return cls(backend, family, special, model_max_length)

    # ---------------------------------------------------------------- properties

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"Tokenizer(family={self.family!r}, vocab={len(self)}, fingerprint={self.fingerprint})"

    @property
    def pad_id(self) -> int:
        """Id of the padding token. Example: `Tokenizer.from_pretrained("roberta").pad_id == 1`."""
        return self._ids[self.special_tokens.pad]

    @property
    def mask_id(self) -> int:
        """Id of the mask token. Example: `tok.mask_id`."""
        return self._ids[self.special_tokens.mask]

    @property
    def cls_id(self) -> int:
        """Id of the first token of every sequence (`[CLS]` / `<s>`). Example: `tok.cls_id`."""
        return self._ids[self.special_tokens.cls]

    @property
    def sep_id(self) -> int:
        """Id of the separator / end token (`[SEP]` / `</s>`). Example: `tok.sep_id`."""
        return self._ids[self.special_tokens.sep]

    @property
    def unk_id(self) -> int:
        """Id of the unknown token. Example: `tok.unk_id`."""
        return self._ids[self.special_tokens.unk]

    @property
    def mask_token(self) -> str:
        """The mask token's text (`[MASK]` / `<mask>`). Example: `f"Paris is the {tok.mask_token} of France."`."""
        return self.special_tokens.mask

    @property
    def pad_token(self) -> str:
        """The padding token's text. Example: `tok.pad_token`."""
        return self.special_tokens.pad

    @property
    def has_token_types(self) -> bool:
        """Whether batches carry `token_type_ids` (BERT's segment embeddings). Example: `tok.has_token_types`."""
        return self.family == "bert"

    @property
    def special_ids(self) -> set[int]:
        """Ids of all special tokens. Example: `tok.special_ids`."""
        return set(self._ids.values())

    @property
    def fingerprint(self) -> str:
        """A stable hash of the tokenizer's content (vocabulary, merges, pipeline, family).

        Equal for tokenizers that encode identically however they were loaded or saved; corpus shards store it to
        refuse a mismatched tokenizer. Example: `tok.fingerprint` -> "3f1c…" (16 hex digits).
        """
        if self._fingerprint is None:
            # Unigram scores are float32 in sentencepiece, but tokenizers writes them as float64 whose last digit
            # can change on a save/load round trip; hash them at float32 precision.
            pipeline = json.loads(self.backend.to_str(), parse_float=_as_float32)
            content = json.dumps(pipeline, sort_keys=True, ensure_ascii=False)
            digest = hashlib.sha256(f"{self.family}\n{content}".encode())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def token_to_id(self, token: str) -> int | None:
        """Id of `token`, or None if it is not in the vocabulary. Example: `tok.token_to_id("Ġworld") == 995`."""
        return self.backend.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        """Token string of `id`. Example: `tok.id_to_token(995) == "Ġworld"`."""
        return self.backend.id_to_token(id)

    def get_vocab(self) -> dict[str, int]:
        """token -> id, special tokens included. Example: `tok.get_vocab()["<mask>"]`."""
        return self.backend.get_vocab(with_added_tokens=True)

    # ---------------------------------------------------------------- encoding

    def encode(self, text: str, pair: str | None = None, add_special_tokens: bool = True) -> tokenizers.Encoding:
        """Encode one text (and optional pair) with the family's template, no padding or truncation.

        The result has `.ids`, `.tokens`, `.offsets` (character spans into `text` / `pair`), `.word_ids`,
        `.attention_mask`, `.type_ids`, `.special_tokens_mask` and `.sequence_ids`.

        Example: `Tokenizer.from_pretrained("roberta").encode("Hello world!").ids == [0, 15500, 999, 4, 2]`.
        """
        _check_text(text, "text")
        if pair is not None:
            _check_text(pair, "pair")
        return self.backend.encode(text, pair, add_special_tokens=add_special_tokens)

    def tokenize(self, text: str) -> list[str]:
        """The token strings of `text`, without special tokens. Example: `tok.tokenize("Hello world")`."""
        return self.encode(text, add_special_tokens=False).tokens

    def __call__(
        self,
        texts: str | Sequence[str] | Sequence[Sequence[str]],
        pairs: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        padding: bool | Literal["longest", "max_length"] = True,
        truncation: bool | Literal["longest_first", "only_first", "only_second"] = False,
        max_length: int | None = None,
        stride: int = 0,
        return_overflowing_tokens: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: Literal["right", "left"] = "right",
        is_split_into_words: bool = False,
        add_special_tokens: bool = True,
        return_tensors: Literal["pt"] | None = None,
    ) -> Batch:
        """Encode a batch of texts (and pairs) in parallel in the Rust engine.

        - padding: True / "longest" pads to the longest row, "max_length" to `max_length` (default
          `model_max_length`), False leaves rows ragged; `pad_to_multiple_of` rounds the length up.
        - truncation: True means "longest_first"; "only_first" / "only_second" cut one side of a pair;
          `max_length` defaults to `model_max_length` and counts the special tokens.
        - windows: with `stride > 0` (or `return_overflowing_tokens=True`) a truncated input continues in further
          rows that overlap the previous one by `stride` tokens; `overflow_to_sample[row]` names the input.
        - is_split_into_words: texts are lists of words; offsets are then relative to each word, and byte-level
          BPE gets the space that marks a word start on every word after the first (as in the joined text).

        Example: `tok(["a question"], ["a long context"], truncation="only_second", max_length=384, stride=128)`.
        """
        texts = _as_batch(texts, is_split_into_words, "texts")
        if pairs is not None:
            pairs = _as_batch(pairs, is_split_into_words, "pairs")
            if len(pairs) != len(texts):
                raise ValueError(f"got {len(texts)} texts but {len(pairs)} pairs; they must match one to one")
        windows = stride > 0 or return_overflowing_tokens
        if truncation is True:
            truncation = "longest_first"
        if truncation and truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(f"truncation={truncation!r}; expected True, False or one of {TRUNCATION_STRATEGIES}")
        if padding is True:
            padding = "longest"
        if padding not in (False, "longest", "max_length"):
            raise ValueError(f"padding={padding!r}; expected True, False, 'longest' or 'max_length'")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side={padding_side!r}; expected 'right' or 'left'")
        if windows and not truncation:
            raise ValueError(f"stride={stride} / return_overflowing_tokens need truncation (e.g. truncation=True)")
        if max_length is not None and not truncation and padding != "max_length":
            raise ValueError(f"max_length={max_length} has no effect without truncation or padding='max_length'")
        length = max_length if max_length is not None else self.model_max_length
        settings = (
            (length, stride, truncation) if truncation else None,
            (length if padding == "max_length" else None, pad_to_multiple_of, padding_side) if padding else None,
        )
        inputs: list[Any] = texts if pairs is None else list(zip(texts, pairs, strict=True))
        if is_split_into_words and self._byte_level:
            inputs = [_space_words(x) for x in texts] if pairs is None else [
                (_space_words(a), _space_words(b)) for a, b in zip(texts, pairs, strict=True)
            ]
        try:
            if settings == (None, None):
                encodings = self.backend.encode_batch(inputs, is_pretokenized=is_split_into_words,
                                                      add_special_tokens=add_special_tokens)
            else:
                with self._lock:
                    engine = self._configured(settings)
                    encodings = engine.encode_batch(inputs, is_pretokenized=is_split_into_words,
                                                    add_special_tokens=add_special_tokens)
        except Exception as error:  # the engine raises plain Exceptions; name the settings that caused it
            raise ValueError(
                f"cannot encode with truncation={truncation!r}, max_length={length}, stride={stride}: {error}"
            ) from error
        overflow_to_sample = None
        if windows:
            rows, overflow_to_sample = [], []
            for index, encoding in enumerate(encodings):
                rows.append(encoding)
                rows.extend(encoding.overflowing)
                overflow_to_sample.extend([index] * (1 + len(encoding.overflowing)))
            encodings = rows
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}; expected 'pt' or None")
        if return_tensors == "pt" and len({len(e) for e in encodings}) > 1:
            raise ValueError("rows have different lengths: return_tensors='pt' needs padding=True or 'max_length'")
        offsets = None
        if is_split_into_words and self._byte_level:
            offsets = [_unshift_offsets(e) for e in encodings]
        return Batch(encodings, token_types=self.has_token_types, return_tensors=return_tensors,
                     overflow_to_sample=overflow_to_sample, offsets=offsets)

    def _configured(self, settings: tuple) -> tokenizers.Tokenizer:
        if self._engine is None:
            self._engine = tokenizers.Tokenizer.from_str(self.backend.to_str())
        if settings != self._engine_settings:
            truncation, padding = settings
            if truncation is None:
                self._engine.no_truncation()
            else:
                length, stride, strategy = truncation
                self._engine.enable_truncation(length, stride=stride, strategy=strategy)
            if padding is None:
                self._engine.no_padding()
            else:
                length, multiple, side = padding
                self._engine.enable_padding(direction=side, pad_id=self.pad_id, pad_token=self.special_tokens.pad,
                                            length=length, pad_to_multiple_of=multiple)
            self._engine_settings = settings
        return self._engine

    # ---------------------------------------------------------------- decoding

    def decode(self, ids: Sequence[int] | Any, skip_special_tokens: bool = False) -> str:
        """Text of `ids` (a list or a 1-D tensor). Example: `tok.decode([15496, 995, 0]) == "Hello world!"`."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, rows: Sequence[Sequence[int]] | Any, skip_special_tokens: bool = False) -> list[str]:
        """Text of each row of ids. Example: `tok.decode_batch(batch["input_ids"], skip_special_tokens=True)`."""
        if hasattr(rows, "tolist"):
            rows = rows.tolist()
        return self.backend.decode_batch([list(r) for r in rows], skip_special_tokens=skip_special_tokens)

    # ---------------------------------------------------------------- saving

    def save(self, path: str | Path) -> Path:
        """Write `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` into directory `path`.

        `transformers.AutoTokenizer.from_pretrained(path)` loads the result and gives identical ids and offsets.
        Example: `tok.save("out/tokenizer")`.
        """
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        special = self.special_tokens
        special_map = {"cls_token": special.cls, "sep_token": special.sep, "pad_token": special.pad,
                       "unk_token": special.unk, "mask_token": special.mask}
        if self.family != "bert":
            special_map.update(bos_token=special.cls, eos_token=special.sep)
        pipeline = json.loads(self.backend.to_str())
        config: dict[str, Any] = {
            "tokenizer_class": _transformers_class(pipeline, self.family),
            "berta_family": self.family,
            "model_max_length": self.model_max_length,
            **special_map,
            "added_tokens_decoder": {
                str(token["id"]): {k: token[k] for k in ("content", "lstrip", "rstrip", "normalized",
                                                          "single_word", "special")}
                for token in pipeline["added_tokens"]
            },
        }
        if self.family == "bert":
            normalizer = pipeline.get("normalizer") or {}
            config.update(do_lower_case=normalizer.get("lowercase", False),
                          strip_accents=normalizer.get("strip_accents"),
                          tokenize_chinese_chars=normalizer.get("handle_chinese_chars", True))
        elif self.family == "roberta":
            config.update(add_prefix_space=False, trim_offsets=True)
        else:
            config.update(add_prefix_space=True)
        _write_json(directory / "tokenizer_config.json", config)
        _write_json(directory / "special_tokens_map.json", special_map)
        return directory


# -------------------------------------------------------------------- input checks


def _as_float32(text: str) -> float:
    return struct.unpack("f", struct.pack("f", float(text)))[0]


def _check_text(text: Any, name: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")


def _as_batch(texts: Any, split: bool, name: str) -> list:
    if isinstance(texts, str):
        if split:
            raise TypeError(f"is_split_into_words=True needs {name} as lists of words, got one str")
        return [texts]
    texts = list(texts)
    if split and texts and isinstance(texts[0], str):
        texts = [texts]  # one pre-split example
    kind = list if split else str
    for index, item in enumerate(texts):
        if split:
            if not isinstance(item, (list, tuple)) or not all(isinstance(w, str) for w in item):
                raise TypeError(f"{name}[{index}] must be a list of str words (is_split_into_words=True)")
        elif not isinstance(item, kind):
            raise TypeError(f"{name}[{index}] must be a str, got {type(item).__name__}")
    return texts


def _space_words(words: Sequence[str]) -> list[str]:
    # GPT-2's BPE sees "Ġworld" for " world": words after the first get the space they had in the running text.
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _unshift_offsets(encoding: tokenizers.Encoding) -> list[tuple[int, int]]:
    # Undo `_space_words`: offsets of words after the first count from the word itself, not the added space.
    offsets = []
    for (start, end), word in zip(encoding.offsets, encoding.word_ids, strict=True):
        if word:  # None (special, padding) and the first word (0) keep their offsets
            start, end = max(start - 1, 0), max(end - 1, 0)
        offsets.append((start, end))
    return offsets


# -------------------------------------------------------------------- loading


def _read_json(path: Path) -> Any:
    return io.read_json(path)  # errors name the file, line and column (or the line and byte of bad UTF-8)


def _write_json(path: Path, value: Any) -> None:
    io.atomic_write_json(path, value)


def _read_config(directory: Path) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the second wins, as in transformers
        if (directory / name).is_file():
            value = _read_json(directory / name)
            if not isinstance(value, dict):
                raise ValueError(f"{directory / name}: expected a JSON object, got {type(value).__name__}")
            config.update(value)
    return config


def _config_tokens(config: dict[str, Any], family: str) -> SpecialTokens:
    defaults = SpecialTokens.of(family)

    def pick(key: str, default: str) -> str:
        value = config.get(key) or default
        return value["content"] if isinstance(value, dict) else str(value)

    return SpecialTokens(cls=pick("cls_token", defaults.cls), sep=pick("sep_token", defaults.sep),
                         pad=pick("pad_token", defaults.pad), unk=pick("unk_token", defaults.unk),
                         mask=pick("mask_token", defaults.mask))


def _max_length(config: dict[str, Any]) -> int:
    value = config.get("model_max_length")
    # transformers writes a huge sentinel (1e30) when the length is unknown
    return int(value) if isinstance(value, int | float) and 0 < value < 1_000_000 else _MODEL_MAX_LENGTH


_LAYOUTS = (
    "tokenizer.json; sentencepiece.bpe.model (optionally with dict.txt); vocab.json + merges.txt "
    "(or encoder.json + vocab.bpe, optionally with dict.txt); vocab.txt"
)


def _from_directory(directory: Path, config: dict[str, Any]) -> Tokenizer:
    if (directory / "tokenizer.json").is_file():
        return _from_tokenizer_json(directory / "tokenizer.json", config)
    models = sorted(directory.glob("*.model"))
    if models:
        preferred = directory / "sentencepiece.bpe.model"
        return _from_sentencepiece(preferred if preferred in models else models[0], _dict_beside(directory), config)
    vocab = next((directory / n for n in ("vocab.json", "encoder.json") if (directory / n).is_file()), None)
    merges = next((directory / n for n in ("merges.txt", "vocab.bpe") if (directory / n).is_file()), None)
    if vocab is not None or merges is not None:
        if vocab is None or merges is None:
            found = (vocab or merges).name
            raise FileNotFoundError(
                f"{directory}: found {found} but byte-level BPE needs both vocab.json and merges.txt "
                "(or fairseq's encoder.json and vocab.bpe)"
            )
        return _from_byte_level_bpe(vocab, merges, _dict_beside(directory), config)
    if (directory / "vocab.txt").is_file():
        return _from_wordpiece(directory / "vocab.txt", config)
    raise FileNotFoundError(f"{directory}: no tokenizer files; expected one of: {_LAYOUTS}")


def _from_file(path: Path, config: dict[str, Any]) -> Tokenizer:
    name = path.name
    if path.suffix == ".model":
        return _from_sentencepiece(path, _dict_beside(path.parent), config)
    if name in ("vocab.json", "encoder.json", "merges.txt", "vocab.bpe"):
        return _from_directory(path.parent, config)
    if name == "vocab.txt":
        return _from_wordpiece(path, config)
    if path.suffix == ".json":
        return _from_tokenizer_json(path, config)
    raise ValueError(f"{path}: not a tokenizer file; expected one of: {_LAYOUTS}")


def _dict_beside(directory: Path) -> Path | None:
    return directory / "dict.txt" if (directory / "dict.txt").is_file() else None


def _family_of(pipeline: dict[str, Any], config: dict[str, Any], path: Path) -> str:
    declared = config.get("berta_family")
    if declared in FAMILIES:
        return declared
    class_name = str(config.get("tokenizer_class") or "").lower()
    if "xlmroberta" in class_name or "camembert" in class_name:  # SentencePiece with RoBERTa's template
        return "xlm-roberta"
    if "roberta" in class_name:
        return "roberta"
    if "bert" in class_name:
        return "bert"
    model_type = (pipeline.get("model") or {}).get("type")
    families = {"WordPiece": "bert", "BPE": "roberta", "Unigram": "xlm-roberta"}
    if model_type not in families:
        raise ValueError(f"{path}: model type {model_type!r} is none of WordPiece, BPE, Unigram")
    return families[model_type]


def _from_tokenizer_json(path: Path, config: dict[str, Any]) -> Tokenizer:
    pipeline = _read_json(path)
    if not isinstance(pipeline, dict) or "model" not in pipeline:
        raise ValueError(f"{path}: not a tokenizers file (no 'model' field)")
    try:
        backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as error:  # the engine raises plain Exceptions
        raise ValueError(f"{path}: cannot load: {error}") from error
    family = _family_of(pipeline, config, path)
    special = _config_tokens(config, family)
    if backend.post_processor is None:
        backend.post_processor = _post_processor(family, backend, special)
    return Tokenizer(backend, family, special, _max_length(config))


def _post_processor(family: str, backend: tokenizers.Tokenizer, special: SpecialTokens) -> Any:
    cls, sep = (special.cls, backend.token_to_id(special.cls)), (special.sep, backend.token_to_id(special.sep))
    if family == "bert":
        return processors.TemplateProcessing(single=f"{cls[0]}:0 $A:0 {sep[0]}:0",
                                             pair=f"{cls[0]}:0 $A:0 {sep[0]}:0 $B:1 {sep[0]}:1",
                                             special_tokens=[cls, sep])
    if family == "roberta":
        # RobertaProcessing also trims the leading space of each token's offsets (after byte-level BPE's "Ġ")
        return processors.RobertaProcessing(sep, cls, trim_offsets=True, add_prefix_space=False)
    return processors.TemplateProcessing(single=f"{cls[0]} $A {sep[0]}",
                                         pair=f"{cls[0]} $A {sep[0]} {sep[0]} $B {sep[0]}",
                                         special_tokens=[cls, sep])


def _finish(backend: tokenizers.Tokenizer, family: str, config: dict[str, Any]) -> Tokenizer:
    return Tokenizer.from_backend(backend, family, _config_tokens(config, family), _max_length(config))


def _read_lines(path: Path) -> list[str]:
    """The lines of a vocabulary file without their "\n" (a "\r" stays, as transformers keeps it)."""
    return [text.removesuffix("\n") for _, text in io.lines(path)]


def _from_wordpiece(path: Path, config: dict[str, Any]) -> Tokenizer:
    lines = _read_lines(path)
    vocab: dict[str, int] = {}
    for index, token in enumerate(lines):
        vocab[token.rstrip("\r")] = index  # a repeated token keeps its last id, as transformers' load_vocab does
    if not vocab:
        raise ValueError(f"{path}: empty vocabulary")
    special = _config_tokens(config, "bert")
    backend = tokenizers.Tokenizer(WordPiece(vocab, unk_token=special.unk, max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),
        lowercase=config.get("do_lower_case", True),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return _finish(backend, "bert", config)


def read_fairseq_dict(path: Path) -> list[str]:
    """The symbols of a fairseq `dict.txt`, in order (the tokenizer's ids and the fairseq converter's rows).

    Example: `read_fairseq_dict(Path("roberta.base/dict.txt"))[:3]` (RoBERTa's: GPT-2 ids, most frequent first).
    """
    symbols = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.rstrip().split(" ")
        # fairseq's format: "<symbol> <count>" with an optional "#fairseq:overwrite" flag
        if len(fields) < 2 or not fields[1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected '<token> <count>', got {line!r}")
        symbols.append(fields[0])
    return symbols


def _from_byte_level_bpe(vocab_path: Path, merges_path: Path, dict_path: Path | None,
                         config: dict[str, Any], fairseq_layout: bool = False) -> Tokenizer:
    vocab = _read_json(vocab_path)
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise ValueError(f"{vocab_path}: expected a JSON object token -> id")
    merges = []
    for number, line in enumerate(_read_lines(merges_path), start=1):
        if line.startswith("#version") or not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{merges_path}:{number}: expected two tokens separated by one space, got {line!r}")
        merges.append((parts[0], parts[1]))
    # fairseq's encoder.json is GPT-2's numbering; dict.txt maps it to the model's. A vocab.json that already
    # holds <s>/<pad> (the Hugging Face roberta layout) is the model's numbering itself.
    if dict_path is not None and "<pad>" not in vocab:
        symbols = read_fairseq_dict(dict_path)
        vocab = _renumber_by_fairseq_dict(vocab, merges, symbols, dict_path, vocab_path)
    elif fairseq_layout:
        # No dict.txt: keep GPT-2's order (a dict.txt listing ids 0, 1, 2, ...), so ids are GPT-2's + 4.
        symbols = [str(i) for i in sorted(vocab.values())]
        vocab = _renumber_by_fairseq_dict(vocab, merges, symbols, vocab_path, vocab_path)
    for number, (left, right) in enumerate(merges, start=1):
        if left not in vocab or right not in vocab or left + right not in vocab:
            missing = next(t for t in (left, right, left + right) if t not in vocab)
            raise ValueError(f"{merges_path}: merge {number} ({left} {right}) makes or uses {missing!r}, "
                             f"which is not in {vocab_path.name}: the two files do not belong together")
    backend = tokenizers.Tokenizer(BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="",
                                       fuse_unk=False, dropout=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return _finish(backend, "roberta", config)


def _renumber_by_fairseq_dict(gpt2_vocab: dict[str, int], merges: list[tuple[str, str]], symbols: list[str],
                              dict_path: Path, vocab_path: Path) -> dict[str, int]:
    by_gpt2_id = {i: token for token, i in gpt2_vocab.items()}
    vocab = {token: i for i, token in enumerate(_FAIRSEQ_SPECIALS)}
    for number, symbol in enumerate(symbols, start=1):
        # fairseq's GPT-2 dict lists GPT-2 ids as numbers; other symbols (madeupword0000) are kept as they are
        token = by_gpt2_id.get(int(symbol)) if symbol.isdigit() else symbol
        if token is None:
            raise ValueError(f"{dict_path}:{number}: GPT-2 id {symbol} is not in {vocab_path} "
                             f"({len(gpt2_vocab)} ids): dict.txt does not match the BPE files")
        vocab.setdefault(token, len(vocab))
    vocab.setdefault("<mask>", len(vocab))  # fairseq's masked LM task adds <mask> after the dictionary
    # Every token the merges can produce must have an id, or fairseq's <unk> would silently replace it.
    reachable = {t for t, i in gpt2_vocab.items() if len(t) == 1} | {a + b for a, b in merges}
    missing = sorted(reachable - vocab.keys())
    if missing:
        raise ValueError(f"{dict_path}: {len(missing)} BPE tokens of {vocab_path.name} are not listed "
                         f"(first: {missing[:3]}): dict.txt does not match the BPE files")
    return vocab


def _from_sentencepiece(path: Path, dict_path: Path | None, config: dict[str, Any]) -> Tokenizer:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as error:  # protobuf's DecodeError and friends
        raise ValueError(f"{path}: not a SentencePiece model: {error}") from error
    pieces = [(p.piece, p.score) for p in proto.pieces]
    if [p for p, _ in pieces[:3]] != ["<unk>", "<s>", "</s>"]:
        raise ValueError(f"{path}: expected pieces 0-2 to be <unk>, <s>, </s> (XLM-R's layout), "
                         f"got {[p for p, _ in pieces[:3]]}")
    if proto.trainer_spec.model_type != 1:  # 1 = UNIGRAM in sentencepiece_model.proto
        raise ValueError(f"{path}: SentencePiece model type {proto.trainer_spec.model_type} is not Unigram "
                         "(XLM-R's type); BPE SentencePiece models are not supported")
    # fairseq's layout: its four specials, then the pieces after SentencePiece's own three (so id = piece + 1),
    # then <mask>; a dict.txt gives the order of the pieces instead.
    if dict_path is None:
        ordered = pieces[3:]
    else:
        scores = dict(pieces[3:])
        ordered = []
        for number, symbol in enumerate(read_fairseq_dict(dict_path), start=1):
            if symbol not in scores:
                raise ValueError(f"{dict_path}:{number}: {symbol!r} is not a piece of {path.name}: "
                                 "dict.txt does not match the SentencePiece model")
            ordered.append((symbol, scores[symbol]))
        missing = scores.keys() - {s for s, _ in ordered}
        if missing:
            raise ValueError(f"{dict_path}: {len(missing)} pieces of {path.name} are not listed "
                             f"(first: {sorted(missing)[:3]}): dict.txt does not match the SentencePiece model")
    vocab = [(token, 0.0) for token in _FAIRSEQ_SPECIALS] + ordered + [("<mask>", 0.0)]
    backend = tokenizers.Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=False))
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if charsmap:
        backend.normalizer = normalizers.Precompiled(charsmap)
    # the pipeline transformers' XLMRobertaTokenizer builds, so both give the same ids and offsets
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
    ])
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return _finish(backend, "xlm-roberta", config)


def _transformers_class(pipeline: dict[str, Any], family: str) -> str:
    """The `transformers` class that loads this pipeline unchanged.

    transformers 5's BertTokenizer / RobertaTokenizer / XLMRobertaTokenizer rebuild the normalizer and
    pre-tokenizer from their own arguments, keeping only vocabulary, merges and post-processor from
    tokenizer.json; a pipeline they would not rebuild identically is written as the generic TokenizersBackend,
    which loads tokenizer.json verbatim.
    """
    model = pipeline.get("model") or {}
    normalizer = pipeline.get("normalizer") or {}
    pre_tokenizer = pipeline.get("pre_tokenizer") or {}
    if family == "bert":
        same = (model.get("type") == "WordPiece" and normalizer.get("type") == "BertNormalizer"
                and normalizer.get("clean_text") and pre_tokenizer.get("type") == "BertPreTokenizer")
    elif family == "roberta":
        same = (model.get("type") == "BPE" and not normalizer and pre_tokenizer.get("type") == "ByteLevel"
                and not pre_tokenizer.get("add_prefix_space") and pre_tokenizer.get("use_regex", True))
    else:
        steps = [p.get("type") for p in pre_tokenizer.get("pretokenizers", [])]
        same = (model.get("type") == "Unigram" and model.get("unk_id") == 3
                and normalizer.get("type") in (None, "Precompiled") and steps == ["WhitespaceSplit", "Metaspace"])
    return _TRANSFORMERS_CLASSES[family] if same else "TokenizersBackend"


__all__ = ["FAMILIES", "PRESETS", "Batch", "SpecialTokens", "Tokenizer"]
