"""A second, plain forward pass of the encoder, for the converters' parity checks.

Each converter (fairseq, TF) reads the *source* file's tensors by the source's own names into `ReferenceWeights`
and runs this forward in float64; the converted berta model must match it. It shares no code with
`berta.model`, so a wrong name table, a transposed kernel or a lost position offset shows up as a difference
instead of being reproduced on both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class ReferenceLayer:
    """One post-LayerNorm transformer layer; every matrix is (out_features, in_features)."""

    query: tuple[Tensor, Tensor]  # (weight, bias)
    key: tuple[Tensor, Tensor]
    value: tuple[Tensor, Tensor]
    attention_output: tuple[Tensor, Tensor]
    attention_norm: tuple[Tensor, Tensor]  # (gamma, beta)
    intermediate: tuple[Tensor, Tensor]
    output: tuple[Tensor, Tensor]
    output_norm: tuple[Tensor, Tensor]


@dataclass
class ReferenceWeights:
    """An encoder as read from a source checkpoint, plus the conventions its format implies."""

    words: Tensor  # (vocab, hidden)
    positions: Tensor  # (rows, hidden)
    token_types: Tensor | None  # (types, hidden), or None when the format has no segment table
    embedding_norm: tuple[Tensor, Tensor]
    layers: list[ReferenceLayer]
    num_heads: int
    layer_norm_eps: float
    activation: str  # "gelu" (exact) | "gelu_new" (tanh) | "relu"
    position_offset: int  # 0: BERT positions 0, 1, ...; pad + 1: fairseq make_positions
    lm_head: dict[str, tuple[Tensor, Tensor] | Tensor] = field(default_factory=dict)  # dense, norm, bias
    classifier: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # dense + out_proj, or linear
    pooler: tuple[Tensor, Tensor] | None = None


def _linear(x: Tensor, weights: tuple[Tensor, Tensor]) -> Tensor:
    return x @ weights[0].double().T + weights[1].double()


def _norm(x: Tensor, weights: tuple[Tensor, Tensor], eps: float) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + eps) * weights[0].double() + weights[1].double()


def _activate(x: Tensor, name: str) -> Tensor:
    if name == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name == "relu":
        return x.clamp(min=0)
    raise ValueError(f"activation {name!r} has no reference implementation")


def reference_forward(
    weights: ReferenceWeights, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
) -> dict[str, Tensor]:
    """float64 `last_hidden_state` (batch, seq, hidden) and, when the weights have them, `lm_logits` and
    `classifier_logits`, for a right-padded batch.

    Example: `reference_forward(weights, torch.tensor([[0, 31414, 2]]), torch.tensor([[1, 1, 1]]))`.
    """
    mask = attention_mask.bool()
    if weights.position_offset:
        # fairseq make_positions: cumulative count of real tokens + padding_idx; padding keeps padding_idx.
        positions = torch.cumsum(mask.long(), dim=1) * mask.long() + (weights.position_offset - 1)
    else:
        positions = torch.arange(input_ids.shape[1])[None, :].expand_as(input_ids)
    hidden = weights.words.double()[input_ids] + weights.positions.double()[positions]
    if weights.token_types is not None:
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        hidden = hidden + weights.token_types.double()[types]
    hidden = _norm(hidden, weights.embedding_norm, weights.layer_norm_eps)  # (batch, seq, hidden)
    batch, seq, size = hidden.shape
    heads, head_size = weights.num_heads, size // weights.num_heads
    blocked = torch.zeros(batch, 1, 1, seq, dtype=torch.float64).masked_fill(~mask[:, None, None, :], -math.inf)
    for layer in weights.layers:

        def split(x: Tensor) -> Tensor:
            return x.view(batch, seq, heads, head_size).transpose(1, 2)  # (batch, heads, seq, head_size)

        query, key, value = (split(_linear(hidden, w)) for w in (layer.query, layer.key, layer.value))
        scores = query @ key.transpose(-1, -2) / math.sqrt(head_size) + blocked  # (batch, heads, seq, seq)
        context = (scores.softmax(-1) @ value).transpose(1, 2).reshape(batch, seq, size)
        hidden = _norm(hidden + _linear(context, layer.attention_output), layer.attention_norm, weights.layer_norm_eps)
        inner = _activate(_linear(hidden, layer.intermediate), weights.activation)
        hidden = _norm(hidden + _linear(inner, layer.output), layer.output_norm, weights.layer_norm_eps)
    result = {"last_hidden_state": hidden * mask[..., None]}
    if weights.lm_head:
        transformed = _activate(_linear(hidden, weights.lm_head["dense"]), weights.activation)  # type: ignore[arg-type]
        transformed = _norm(transformed, weights.lm_head["norm"], weights.layer_norm_eps)  # type: ignore[arg-type]
        result["lm_logits"] = transformed @ weights.words.double().T + weights.lm_head["bias"].double()  # type: ignore[union-attr]
    if weights.classifier:
        first = hidden[:, 0]  # <s> / [CLS]: right padding keeps it in column 0
        if "out_proj" in weights.classifier:  # RoBERTa / fairseq: dense -> tanh -> out_proj
            result["classifier_logits"] = _linear(torch.tanh(_linear(first, weights.classifier["dense"])),
                                                  weights.classifier["out_proj"])
        else:  # BERT: pooler (tanh dense) -> linear
            assert weights.pooler is not None
            result["classifier_logits"] = _linear(torch.tanh(_linear(first, weights.pooler)),
                                                  weights.classifier["linear"])
    return result


# Sentences for the converters' parity checks: English, French, German, and a pair of repeated tokens.
SAMPLE_SENTENCES = (
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "Un petit chat dort sur le canapé.",
    "Das ist gut, das ist sehr gut.",
)


def parity(model: torch.nn.Module, weights: ReferenceWeights, features: dict[str, Tensor]) -> dict[str, float]:
    """Largest absolute difference, on real tokens, between `model` (a berta model) and `reference_forward`,
    per output: `last_hidden_state` and, when both have it, `logits`.

    Example: `parity(berta.load("out"), weights, {"input_ids": ids, "attention_mask": mask})` -> `{...: 2e-06}`.
    """
    mask = features["attention_mask"].bool()
    expected = reference_forward(weights, features["input_ids"], features["attention_mask"],
                                 features.get("token_type_ids"))
    model.eval()
    with torch.inference_mode():
        output = model(**features)
    hidden = output.last_hidden_state
    if hidden is None:  # a classifier returns the encoder output too; keep the guard for other heads
        raise ValueError("the model returned no last_hidden_state to compare")
    differences = {"last_hidden_state": float((hidden.double() - expected["last_hidden_state"])[mask].abs().max())}
    logits = output.logits
    if logits is not None and logits.dim() == 3 and "lm_logits" in expected:
        differences["logits"] = float((logits.double() - expected["lm_logits"])[mask].abs().max())
    elif logits is not None and logits.dim() == 2 and "classifier_logits" in expected:
        differences["logits"] = float((logits.double() - expected["classifier_logits"]).abs().max())
    elif logits is not None:
        raise ValueError(f"the source checkpoint has no head to compare berta's {tuple(logits.shape)} logits with")
    return differences
