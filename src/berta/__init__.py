"""berta: the BERT family of encoders (BERT, RoBERTa, XLM-R) on PyTorch.

Example:
    >>> import berta
    >>> model = berta.load("path/to/model")  # doctest: +SKIP
"""

from berta.checkpoints.hf import load
from berta.config import PRESETS, EncoderConfig
from berta.inference.onnx_backend import OnnxModel
from berta.inference.pipeline import Pipeline, pipeline
from berta.model import (
    Encoder,
    EncoderOutput,
    MaskedLM,
    MultipleChoice,
    QuestionAnswering,
    SequenceClassifier,
    TokenClassifier,
)
from berta.tasks import create
from berta.tokenizer import Tokenizer

__all__ = [
    "PRESETS",
    "Encoder",
    "EncoderConfig",
    "EncoderOutput",
    "MaskedLM",
    "MultipleChoice",
    "OnnxModel",
    "Pipeline",
    "QuestionAnswering",
    "SequenceClassifier",
    "TokenClassifier",
    "Tokenizer",
    "create",
    "load",
    "pipeline",
]
