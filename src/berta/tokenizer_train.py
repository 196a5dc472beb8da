"""`berta tokenizer train`: train a byte-level BPE (RoBERTa), Unigram (XLM-R) or WordPiece (BERT) vocabulary.

Text streams (through `berta.io.texts`) from plain text or JSON Lines (one field), compressed or not, one line
at a time, so memory depends on the
vocabulary's word counts, not on the corpus size. With several files, each file is one language and lines are
resampled with XLM-R's exponent (Conneau et al. 2020, section 3.1: q_i ∝ p_i^α, α = 0.3) so small languages are
not drowned by large ones. The saved directory holds the family's special tokens and template and loads in both
`berta.Tokenizer` and `transformers.AutoTokenizer`.
"""

from __future__ import annotations

import io
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from berta.data.masking import language_sampling_probabilities
from berta.io import check_file, texts
from berta.tokenizer import SpecialTokens, Tokenizer

SENTENCEPIECE_MAX_BYTES = 4192  # SentencePiece's max_sentence_length: longer lines are skipped, not cut
FAMILY_OF_TYPE = {"bpe": "roberta", "unigram": "xlm-roberta", "wordpiece": "bert"}


@dataclass
class TokenizerTrainSettings:
    """Settings of `berta tokenizer train`; defaults follow RoBERTa / XLM-R / BERT where they apply."""

    files: list[Path] = field(metadata={"help": "text, JSONL or .gz files; with several, each file is a language",
                                        "positional": True})
    output: Path = field(metadata={"help": "directory to write tokenizer.json and its config files into"})
    type: Literal["bpe", "unigram", "wordpiece"] = field(
        default="bpe", metadata={"help": "bpe: byte-level BPE (RoBERTa); unigram: SentencePiece (XLM-R); "
                                         "wordpiece: BERT"})
    vocab_size: int = field(default=50265, metadata={"min": 100,
        "help": "vocabulary size, special tokens included (roberta-base: 50265, xlm-roberta: 250002, bert: 30522)"})
    text_field: str = field(default="text", metadata={"help": "the field holding the text in JSONL files"})
    encoding: str = field(default="utf-8", metadata={"help": "text encoding of the input files"})
    min_frequency: int = field(default=2, metadata={"min": 1, "help": "BPE / WordPiece: least count of a merged pair"})
    alpha: float = field(default=0.3, metadata={"min": 0, "max": 1,
                                                "help": "language sampling exponent (XLM-R: 0.3; 1.0 = as is)"})
    lowercase: bool = field(default=True, metadata={"help": "WordPiece: lower-case and strip accents (uncased)"})
    max_sentences: int = field(default=10_000_000, metadata={"min": 1,
        "help": "Unigram: sentences SentencePiece samples into memory (its input_sentence_size)"})
    seed: int = field(default=0, metadata={"min": 0, "help": "seed of the language sampling"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    verbose: bool = field(default=False, metadata={"help": "show SentencePiece's own log (unigram)"})


def read_lines(path: Path, text_field: str = "text", encoding: str = "utf-8") -> Iterator[str]:
    """Stream the non-empty lines of a text file, or the `text_field` of each JSON Lines object (`berta.io.texts`:
    `.jsonl` / `.ndjson`, any compression).

    Invalid text, invalid JSON or a missing field raise ValueError naming the file and line.
    Example: `for line in read_lines(Path("corpus.jsonl.gz"), "text"): ...`.
    """
    for _, text in texts(path, text_field, encoding):
        if text.strip():
            yield text


def sampling_rates(line_counts: dict[Path, int], alpha: float) -> dict[Path, float]:
    """How many times each language's lines are used, so language i makes up q_i ∝ p_i^α of the total
    (`berta.data.masking.language_sampling_probabilities`, the one α-sampling function).

    The total stays the corpus size: large languages are subsampled (rate < 1), small ones repeated (rate > 1).
    Example: `sampling_rates({en: 900, sw: 100}, 0.3)` -> {en: ~0.72, sw: ~3.5}.
    """
    total = sum(line_counts.values())
    if total == 0:
        raise ValueError("the input files hold no text")
    shares = language_sampling_probabilities(line_counts, alpha)
    return {p: shares[p] * total / n if n else 0.0 for p, n in line_counts.items()}


def sampled_lines(settings: TokenizerTrainSettings) -> tuple[Iterator[str], int]:
    """The training lines (resampled per language when there are several files) and their expected count.

    Example: `lines, count = sampled_lines(TokenizerTrainSettings(files=[...], output=Path("out")))`.
    """
    files = list(settings.files)
    for path in files:
        check_file(path, "input file")
    if len(files) == 1 or settings.alpha == 1.0:
        counts = {p: 1 for p in files}
        rates = {p: 1.0 for p in files}
        expected = 0
    else:
        # a first streaming pass
        counts = {p: sum(1 for _ in read_lines(p, settings.text_field, settings.encoding)) for p in files}
        rates = sampling_rates(counts, settings.alpha)
        expected = round(sum(counts[p] * rates[p] for p in files))
    generator = random.Random(settings.seed)

    def lines() -> Iterator[str]:
        for path in files:
            rate = rates[path]
            whole, fraction = int(rate), rate - int(rate)
            for line in read_lines(path, settings.text_field, settings.encoding):
                for _ in range(whole + (generator.random() < fraction)):
                    yield line

    return lines(), expected


def train_tokenizer(settings: TokenizerTrainSettings) -> Tokenizer:
    """Train a tokenizer on `settings.files` and save it to `settings.output`.

    Example: `berta tokenizer train --type unigram --vocab-size 32000 --output tok/ en.txt.gz sw.txt.gz`.
    """
    if settings.vocab_size < 100:
        raise ValueError(f"--vocab-size {settings.vocab_size}: expected at least 100")
    lines, expected = sampled_lines(settings)
    if settings.type == "unigram":
        tokenizer = _train_unigram(settings, lines)
    else:
        tokenizer = _train_with_tokenizers(settings, lines, expected)
    tokenizer.save(settings.output)
    print(f"berta: {settings.type} tokenizer, {len(tokenizer)} tokens, fingerprint {tokenizer.fingerprint} "
          f"-> {settings.output}")
    return tokenizer


def _train_with_tokenizers(settings: TokenizerTrainSettings, lines: Iterator[str], expected: int) -> Tokenizer:
    import tokenizers
    from tokenizers import decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE, WordPiece

    family = FAMILY_OF_TYPE[settings.type]
    bars = settings.progress and sys.stderr.isatty()  # the trainers' bars only on a terminal
    special = SpecialTokens.of(family)
    if settings.type == "bpe":
        # fairseq's order for the first ids: <s>=0, <pad>=1, </s>=2, <unk>=3; then <mask>
        special_tokens = [special.cls, special.pad, special.sep, special.unk, special.mask]
        backend = tokenizers.Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=settings.vocab_size, min_frequency=settings.min_frequency,
                                      special_tokens=special_tokens, show_progress=bars,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        # BERT's order: [PAD]=0 ... so padding rows are zeros; the rest follow
        special_tokens = [special.pad, special.unk, special.cls, special.sep, special.mask]
        backend = tokenizers.Tokenizer(WordPiece(unk_token=special.unk, max_input_chars_per_word=100))
        backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                        strip_accents=None, lowercase=settings.lowercase)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(vocab_size=settings.vocab_size, min_frequency=settings.min_frequency,
                                            special_tokens=special_tokens, show_progress=bars,
                                            continuing_subword_prefix="##")
    backend.train_from_iterator(lines, trainer=trainer, length=expected or None)
    return Tokenizer.from_backend(backend, family, special)


def _train_unigram(settings: TokenizerTrainSettings, lines: Iterator[str]) -> Tokenizer:
    # SentencePiece itself, as XLM-R: its nmt_nfkc normalizer becomes the Precompiled normalizer transformers'
    # XLMRobertaTokenizer rebuilds, and input_sentence_size bounds memory by reservoir sampling.
    import sentencepiece

    model = io.BytesIO()
    long_lines = 0

    def counted(lines: Iterator[str]) -> Iterator[str]:
        nonlocal long_lines
        for line in lines:
            long_lines += len(line.encode("utf-8")) > SENTENCEPIECE_MAX_BYTES
            yield line

    sentencepiece.SetRandomGeneratorSeed(settings.seed)  # its sentence sampling and shuffling
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=counted(lines), model_writer=model, model_type="unigram",
            vocab_size=settings.vocab_size - 2,  # fairseq's layout adds <pad> and <mask> to SentencePiece's
            character_coverage=0.9995, input_sentence_size=settings.max_sentences, shuffle_input_sentence=True,
            minloglevel=0 if settings.verbose else 2,  # its C++ log; skipped lines are summarised below
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        )
    except RuntimeError as error:  # e.g. "Vocabulary size too high" for a small corpus
        raise ValueError(f"SentencePiece training failed: {error}") from error
    if long_lines:
        print(f"berta: SentencePiece skipped {long_lines:,} lines longer than {SENTENCEPIECE_MAX_BYTES} bytes "
              "(its max_sentence_length)")
    settings.output.mkdir(parents=True, exist_ok=True)
    path = settings.output / "sentencepiece.bpe.model"
    path.write_bytes(model.getvalue())
    return Tokenizer.from_pretrained(path)
