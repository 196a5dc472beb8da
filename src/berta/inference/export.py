"""ONNX export of a berta model, checked against berta itself.

The graph takes `input_ids` and `attention_mask` (plus `token_type_ids` for models with two or more token
types), int64 (batch, seq), with both axes dynamic, and returns the tensors the model computes at inference:
`last_hidden_state` (+ `pooler_output`) for an encoder, `logits` for the classification, token and masked-LM
models, `start_logits` and `end_logits` for QA.

How the padding-free path survives the export: the TorchScript exporter traces one forward pass, so the
Python-level branch "does this batch have padding?" is decided by the example batch. The example built here
always has a padded row, so the traced graph keeps the general path (gather real tokens with NonZero, attend
with a key mask), which is also exact for a batch without padding. The model runs padding-free by default, so
onnxruntime gets the same no-work-on-padding graph as berta.

    berta export onnx runs/sst2/model runs/sst2/model.onnx
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

# Outputs per task, in graph order, with their dynamic axes. Loss and attentions are training/inspection
# outputs, not exported.
_OUTPUTS: dict[str, dict[str, dict[int, str]]] = {
    "encoder": {"last_hidden_state": {0: "batch", 1: "seq"}},
    "masked-lm": {"logits": {0: "batch", 1: "seq"}},
    "classification": {"logits": {0: "batch"}},
    "tokens": {"logits": {0: "batch", 1: "seq"}},
    "qa": {"start_logits": {0: "batch", 1: "seq"}, "end_logits": {0: "batch", 1: "seq"}},
}
# The opset where LayerNormalization is one operator (17) rather than a chain of reductions.
DEFAULT_OPSET = 17


@dataclass
class ExportSettings:
    """Settings of `berta export onnx`."""

    model: Path | None = field(default=None, metadata={
        "help": "model directory (config.json + model.safetensors) [required]"})
    output: Path | None = field(default=None, metadata={"help": "ONNX file to write [required]"})
    opset: int = field(default=DEFAULT_OPSET, metadata={"min": 1, "help": "ONNX opset version"})
    tolerance: float = field(
        default=1e-4, metadata={"above": 0, "help": "largest allowed difference to berta on the check batch (fp32)"}
    )
    # The older form `berta export onnx MODEL OUTPUT`, kept: --model and --output are what every job takes.
    paths: list[Path] = field(default_factory=list, metadata={
        "positional": True, "optional_positional": True, "help": "MODEL OUTPUT: the same as --model MODEL "
                                                                 "--output OUTPUT"})

    def __post_init__(self) -> None:
        if self.paths:
            if len(self.paths) != 2 or self.model is not None or self.output is not None:
                raise ValueError("export onnx takes --model MODEL --output OUTPUT, or the two paths MODEL OUTPUT, "
                                 f"not both; got paths {[str(p) for p in self.paths]}")
            self.model, self.output = self.paths
            self.paths = []


class _GraphOutputs(nn.Module):
    """Wraps a berta model so the traced forward returns a tuple of tensors instead of an EncoderOutput."""

    def __init__(self, model: nn.Module, names: list[str], with_token_types: bool):
        super().__init__()
        self.model = model
        self.names = names
        self.with_token_types = with_token_types

    def forward(self, input_ids: Tensor, attention_mask: Tensor, *token_type_ids: Tensor) -> tuple[Tensor, ...]:
        output = self.model(input_ids, attention_mask, token_type_ids[0] if token_type_ids else None)
        return tuple(getattr(output, name) for name in self.names)


def _task(model: nn.Module) -> str:
    # The bare Encoder has no `task` attribute; task models carry theirs.
    return getattr(model, "task", "") or "encoder"


def output_names(model: nn.Module) -> list[str]:
    """The graph outputs `export_onnx` writes for `model`.

    Example:
        >>> output_names(berta.create(berta.EncoderConfig.preset("tiny"), "qa"))  # doctest: +SKIP
        ['start_logits', 'end_logits']
    """
    names = list(_OUTPUTS[_task(model)])
    if _task(model) == "encoder" and getattr(model, "pooler", None) is not None:
        names.append("pooler_output")
    return names


def input_names(model: nn.Module) -> list[str]:
    """`input_ids`, `attention_mask`, and `token_type_ids` when the model has two or more token types."""
    names = ["input_ids", "attention_mask"]
    if model.config.type_vocab_size >= 2:
        names.append("token_type_ids")
    return names


def example_batch(model: nn.Module, batch: int = 3, seq: int = 9, seed: int = 0) -> dict[str, Tensor]:
    """A deterministic batch of random ids with right padding in every row but the first (int64 tensors).

    Example:
        >>> example_batch(model)["attention_mask"].sum(dim=1).tolist()  # doctest: +SKIP
        [9, 6, 3]
    """
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    # Ids above the special tokens (every family keeps them below 4), and never the padding id.
    low = max(4, config.pad_token_id + 1)
    input_ids = torch.randint(low, config.vocab_size, (batch, seq), generator=generator)
    lengths = torch.tensor([max(1, seq - 3 * row) for row in range(batch)])
    attention_mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()  # (batch, seq)
    input_ids = input_ids.masked_fill(attention_mask == 0, config.pad_token_id)
    features = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "token_type_ids" in input_names(model):
        # A sentence pair: second segment over the last third of each row's real tokens.
        features["token_type_ids"] = ((torch.arange(seq)[None, :] >= (2 * lengths[:, None]) // 3).long()
                                      * attention_mask)
    return features


def export_onnx(model: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write `model` (an fp32 berta model) as an ONNX graph with dynamic batch and sequence axes.

    Example:
        >>> model = berta.load("runs/sst2/model")  # doctest: +SKIP
        >>> export_onnx(model, "runs/sst2/model.onnx")  # doctest: +SKIP
    """
    path = Path(path)
    parameter = next(model.parameters())
    if parameter.dtype != torch.float32:
        raise ValueError(f"export_onnx expects an fp32 model, got parameters of dtype {parameter.dtype}")
    names_in, names_out = input_names(model), output_names(model)
    features = example_batch(model)
    wrapper = _GraphOutputs(model, names_out, "token_type_ids" in names_in).eval()
    dynamic_axes = {name: {0: "batch", 1: "seq"} for name in names_in}
    dynamic_axes.update({name: _OUTPUTS.get(_task(model), {}).get(name, {0: "batch"}) for name in names_out})
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    with warnings.catch_warnings():
        # The tracer warns at every Python-level check of a tensor (input validation, "any padding?"); the
        # example batch is built so that each of them takes the general branch, see the module docstring.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
        # dynamo=False: the TorchScript exporter needs no onnxscript and traces the packed path as described.
        torch.onnx.export(
            wrapper,
            tuple(features[name] for name in names_in),
            str(path),
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
        )
    model.train(was_training)  # the exporter restores the wrapper's mode onto the model; put ours back
    return path


def verify_onnx(model: nn.Module, path: str | Path, features: dict[str, Tensor] | None = None) -> float:
    """Largest absolute difference between onnxruntime on `path` and `model` over every output, real tokens only.

    `features` defaults to a padded batch of a different shape than the export's example, so a graph that
    had baked in the example's shape or padding would fail here.

    Example:
        >>> verify_onnx(model, "runs/sst2/model.onnx") < 1e-4  # doctest: +SKIP
        True
    """
    import onnxruntime

    if features is None:
        features = example_batch(model, batch=4, seq=13, seed=1)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {item.name: features[item.name].numpy().astype(np.int64) for item in session.get_inputs()}
    got = session.run(None, feeds)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        output = model(**{name: features[name] for name in input_names(model) if name in features})
    model.train(was_training)
    mask = features["attention_mask"].bool().numpy()
    largest = 0.0
    for name, value in zip(output_names(model), got, strict=True):
        expected = getattr(output, name).float().numpy()
        if value.shape != expected.shape:
            raise ValueError(f"{path}: output {name} has shape {value.shape}, berta's has {expected.shape}")
        # Per-token outputs are compared on real tokens: padding rows are unspecified in other engines.
        if expected.ndim >= 2 and expected.shape[:2] == mask.shape:
            value, expected = value[mask], expected[mask]
        largest = max(largest, float(np.abs(value - expected).max()))
    return largest


def export(settings: ExportSettings) -> Path:
    """Export a model directory to ONNX and check the graph against berta on a padded batch.

    Example:
        >>> export(ExportSettings(model=Path("runs/sst2/model"), output=Path("model.onnx")))  # doctest: +SKIP
    """
    from berta.checkpoints.hf import load

    if settings.model is None or settings.output is None:
        raise ValueError("export onnx needs --model MODEL and --output OUTPUT")
    model = load(settings.model, dtype=torch.float32)
    path = export_onnx(model, settings.output, opset=settings.opset)
    difference = verify_onnx(model, path)
    if difference > settings.tolerance:
        raise ValueError(
            f"{path}: onnxruntime differs from berta by {difference:.2e} (> tolerance {settings.tolerance:.0e})"
        )
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); max difference to berta {difference:.2e}")
    return path
