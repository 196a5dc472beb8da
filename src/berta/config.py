"""EncoderConfig: one dataclass for BERT, RoBERTa, XLM-R (and same-shape checkpoints such as CamemBERT).

The families differ only by values here — position offset, token types, LayerNorm eps, vocabulary — never by
subclasses. `config.json` in the Hugging Face layout is the on-disk form (`from_hf_dict` / `to_hf_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from berta import io

FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert")
ACTIVATIONS = ("gelu", "relu", "gelu_new", "gelu_pytorch_tanh", "silu")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
ProblemType = Literal["single_label_classification", "multi_label_classification", "regression"]
# The label of a token or example the loss skips: torch's cross_entropy default ignore_index.
IGNORE_INDEX = -100

assert get_args(ProblemType) == PROBLEM_TYPES  # one list, spelled twice only because Literal needs literals

# HF config.json field -> EncoderConfig field, for the fields whose names differ.
_HF_NAMES = {
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "hidden_act": "activation",
    "max_position_embeddings": "max_positions",
    "hidden_dropout_prob": "hidden_dropout",
    "attention_probs_dropout_prob": "attention_dropout",
    "model_type": "family",
}
# Fields of config.json that berta reads through other means or that only matter to `transformers`.
_HF_IGNORED = {"position_embedding_type", "transformers_version", "use_cache", "torch_dtype", "dtype"}


@dataclass
class EncoderConfig:
    """Shape and conventions of one encoder checkpoint.

    Example:
        >>> config = EncoderConfig.preset("roberta-base")
        >>> config.first_position, config.max_positions
        (2, 514)
    """

    family: str = "bert"  # HF model_type: bert | roberta | xlm-roberta | camembert
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    activation: str = "gelu"  # exact (erf) GELU, as BERT and RoBERTa were trained
    max_positions: int = 512  # rows of the position table (RoBERTa: max length + 2)
    type_vocab_size: int = 2  # BERT: 2 segments; RoBERTa/XLM-R: 1 (or 0 = no token-type table)
    pad_token_id: int = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # 0: positions are 0..seq-1 (BERT). > 0: fairseq `make_positions` — real tokens are numbered from
    # `position_offset` = pad_token_id + 1 upwards and padding keeps pad_token_id (RoBERTa, XLM-R).
    position_offset: int = 0
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    classifier_dropout: float | None = None
    initializer_range: float = 0.02
    id2label: dict[int, str] = field(default_factory=dict)
    problem_type: str | None = None
    # config.json fields berta does not interpret, kept so that a load/save round trip loses nothing.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        if self.family not in FAMILIES:
            raise ValueError(f"model_type {self.family!r} is not supported; expected one of {FAMILIES}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.activation!r} is not supported; expected one of {ACTIVATIONS}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_heads}")
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size must be >= 0, got {self.type_vocab_size}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id {self.pad_token_id} is outside the vocabulary (size {self.vocab_size})")
        if self.position_offset and self.position_offset != self.pad_token_id + 1:
            raise ValueError(
                f"position_offset {self.position_offset} must be pad_token_id + 1 = {self.pad_token_id + 1} "
                "(fairseq make_positions) or 0 (BERT)"
            )
        if self.position_offset >= self.max_positions:
            raise ValueError(f"max_position_embeddings {self.max_positions} leaves no room for positions")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type {self.problem_type!r} is not one of {PROBLEM_TYPES}")

    # -- derived values -------------------------------------------------------------------------------

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def first_position(self) -> int:
        return self.position_offset

    @property
    def max_length(self) -> int:
        """Longest sequence (special tokens included) the position table can hold."""
        return self.max_positions - self.position_offset

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {label: index for index, label in self.id2label.items()}

    @property
    def pooler_classifier(self) -> bool:
        """BERT classifies from the pooler (tanh dense on [CLS]); RoBERTa has its own two-layer head."""
        return self.family == "bert"

    @property
    def hf_prefix(self) -> str:
        """Name of the encoder inside HF task models: `bert.` or `roberta.` (XLM-R and CamemBERT too)."""
        return "bert" if self.family == "bert" else "roberta"

    @property
    def hf_class_prefix(self) -> str:
        return {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta", "camembert": "Camembert"}[
            self.family
        ]

    def replace(self, **changes: Any) -> EncoderConfig:
        return dataclasses.replace(self, **changes)

    # -- presets --------------------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str) -> EncoderConfig:
        """One of `PRESETS`: bert-base, bert-large, roberta-base, roberta-large, xlm-roberta-base/-large, tiny."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets are {sorted(PRESETS)}")
        return cls(**PRESETS[name])

    # -- config.json ----------------------------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], source: str = "config.json") -> EncoderConfig:
        """Read a Hugging Face `config.json` dictionary (BERT, RoBERTa, XLM-R, CamemBERT)."""
        if "model_type" not in data:
            raise ValueError(f"{source}: field 'model_type' is missing; expected one of {FAMILIES}")
        if data.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"{source}: position_embedding_type {data['position_embedding_type']!r} is not supported "
                "(berta implements 'absolute')"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            name = _HF_NAMES.get(key, key)
            if key in ("label2id", "num_labels") or key in _HF_IGNORED:
                continue
            if name in known and name != "extra":
                values[name] = value
            else:
                extra[key] = value
        if "id2label" not in data and "num_labels" in data:
            values["id2label"] = {i: f"LABEL_{i}" for i in range(int(data["num_labels"]))}
        family = values.get("family")
        defaults = PRESETS["roberta-base"] if family in ("roberta", "xlm-roberta", "camembert") else {}
        # RoBERTa-family checkpoints never store the offset: it follows from the padding index.
        if family != "bert":
            values["position_offset"] = int(values.get("pad_token_id", defaults.get("pad_token_id", 1))) + 1
        for name in ("pad_token_id", "layer_norm_eps", "type_vocab_size"):
            if name not in values and name in defaults:
                values[name] = defaults[name]
        try:
            return cls(**values, extra=extra)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from error

    def to_hf_dict(self, architecture: str | None = None) -> dict[str, Any]:
        """The `config.json` that `transformers` reads; `architecture` e.g. 'RobertaForMaskedLM'."""
        data: dict[str, Any] = dict(self.extra)
        data.update(
            model_type=self.family,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.activation,
            max_position_embeddings=self.max_positions,
            type_vocab_size=self.type_vocab_size,
            pad_token_id=self.pad_token_id,
            layer_norm_eps=self.layer_norm_eps,
            hidden_dropout_prob=self.hidden_dropout,
            attention_probs_dropout_prob=self.attention_dropout,
            classifier_dropout=self.classifier_dropout,
            initializer_range=self.initializer_range,
            position_embedding_type="absolute",
        )
        if self.bos_token_id is not None:
            data["bos_token_id"] = self.bos_token_id
        if self.eos_token_id is not None:
            data["eos_token_id"] = self.eos_token_id
        if self.id2label:
            data["id2label"] = {str(i): label for i, label in sorted(self.id2label.items())}
            data["label2id"] = {label: i for i, label in sorted(self.id2label.items())}
        if self.problem_type is not None:
            data["problem_type"] = self.problem_type
        if architecture is not None:
            data["architectures"] = [architecture]
        return data

    @classmethod
    def from_file(cls, path: str | Path) -> EncoderConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (a model directory needs config.json)")
        data = io.read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls.from_hf_dict(data, source=str(path))


_ROBERTA = dict(
    family="roberta",
    vocab_size=50265,
    max_positions=514,
    type_vocab_size=1,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    position_offset=2,
    layer_norm_eps=1e-5,
)
_LARGE = dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096)

# Presets are data: the published shapes (BERT paper table 1; fairseq roberta/xlmr model cards).
PRESETS: dict[str, dict[str, Any]] = {
    "bert-base": dict(family="bert"),
    "bert-large": dict(family="bert", **_LARGE),
    "roberta-base": dict(_ROBERTA),
    "roberta-large": dict(_ROBERTA, **_LARGE),
    "xlm-roberta-base": dict(_ROBERTA, family="xlm-roberta", vocab_size=250002),
    "xlm-roberta-large": dict(_ROBERTA, family="xlm-roberta", vocab_size=250002, **_LARGE),
    # A small RoBERTa for from-scratch runs on a CPU (the README's real pretraining run): 4 layers, hidden 256.
    "small": dict(_ROBERTA, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
    # Small enough for unit tests and from-scratch demos; RoBERTa conventions and GPT-2 BPE vocabulary.
    "tiny": dict(_ROBERTA, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256, max_positions=130),
}
