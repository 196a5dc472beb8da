"""ONNX export of every berta task model, checked against berta itself, ready to serve.

`berta export onnx MODEL_DIR OUT_DIR` writes a directory that `berta.inference.onnx_backend.OnnxModel` (and so
`berta.pipeline(OUT_DIR, backend="onnx")`) serves without PyTorch's runtime cost:

    OUT_DIR/model.onnx        the graph (+ model.onnx.data: the weights, for models over ~2 GB)
    OUT_DIR/config.json       the model's config, naming its task like a Hugging Face checkpoint
    OUT_DIR/tokenizer.json    + tokenizer_config.json, special_tokens_map.json (and sentence-transformers'
                              pooling files when the model has them)

The directory appears in one rename once onnxruntime agrees with PyTorch on a padded check batch: within
`--tolerance` for fp32; for `--quantize int8` (`berta.inference.quantize`'s scheme, onnxruntime's
MatMulInteger) with a mean cosine to fp32 of at least `--int8-cosine`, the measure the int8 path is judged by.
Otherwise nothing is written.

The graph takes `input_ids` and `attention_mask` (plus `token_type_ids` for models with two or more token
types), int64, with every axis dynamic, and returns the tensors the model computes at inference (`GRAPHS`).
A task is one entry there: its outputs with their axes, and its input axes — (batch, seq) for every task so
far, (batch, choices, seq) for multiple choice.

How the padding-free path survives the export: the TorchScript exporter traces one forward pass, so the
Python-level branch "does this batch have padding?" is decided by the example batch. The example built here
always has a padded row, so the traced graph keeps the general path (gather real tokens with NonZero, attend
with a key mask), which is also exact for a batch without padding. The model runs padding-free by default, so
onnxruntime gets the same no-work-on-padding graph as berta.

    berta export onnx runs/sst2/model runs/sst2/onnx [--quantize int8]
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from berta import tasks


@dataclass(frozen=True)
class TaskGraph:
    """What the graph of one task looks like: its outputs (in order) with their dynamic axes, its input axes."""

    outputs: dict[str, dict[int, str]]
    inputs: tuple[str, ...] = ("batch", "seq")


# Each task declares its graph (`output_axes`, `input_axes`). Loss and attentions are training/inspection outputs,
# not exported. The encoder also returns `pooler_output` when the model has a pooler (BERT checkpoints).
GRAPHS: dict[str, TaskGraph] = {
    name: TaskGraph(dict(task.output_axes), task.input_axes) for name, task in tasks.TASKS.items()
}
# The opset where LayerNormalization is one operator (17) rather than a chain of reductions.
DEFAULT_OPSET = 17
GRAPH_NAME = "model.onnx"
# protobuf cannot write one message over 2 GiB; weights past this size go to `model.onnx.data` beside the graph.
EXTERNAL_DATA_BYTES = 1_800_000_000
# sentence-transformers' files that say how to pool token vectors into sentence embeddings.
POOLING_FILES = ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json")


@dataclass
class ExportSettings:
    """Settings of `berta export onnx`."""

    model: Path | None = field(default=None, metadata={
        "help": "model directory (config.json + model.safetensors) [required]"})
    output: Path | None = field(default=None, metadata={
        "help": "directory to write: model.onnx, config.json, tokenizer files [required]"})
    task: str | None = field(default=None, metadata={"help": "task model to export (default: config.json's)",
                                                     "choices": sorted(GRAPHS)})
    quantize: str | None = field(default=None, metadata={"help": "int8: per-channel weights, per-token activations",
                                                         "choices": ["int8"]})
    opset: int = field(default=DEFAULT_OPSET, metadata={"min": 1, "help": "ONNX opset version"})
    tolerance: float = field(
        default=1e-4, metadata={"above": 0, "help": "largest allowed difference to berta (fp32)"})
    int8_cosine: float = field(default=0.99, metadata={"above": 0, "max": 1,
                                                       "help": "smallest allowed mean cosine of int8 to fp32"})
    external_data_bytes: int = field(
        default=EXTERNAL_DATA_BYTES, metadata={"min": 1, "help": "weights over this many bytes go to model.onnx.data"}
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


@dataclass
class Agreement:
    """How closely onnxruntime's outputs follow a PyTorch model's on one batch (real tokens only)."""

    max_difference: float  # largest absolute difference over every output
    cosine: float  # mean over examples of the cosine between the two outputs of an example, worst output


class _GraphOutputs(nn.Module):
    """Wraps a berta model so the traced forward returns a tuple of tensors instead of an EncoderOutput."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, input_ids: Tensor, attention_mask: Tensor, *token_type_ids: Tensor) -> tuple[Tensor, ...]:
        output = self.model(input_ids, attention_mask, token_type_ids[0] if token_type_ids else None)
        return tuple(getattr(output, name) for name in self.names)


def _task(model: nn.Module) -> str:
    task = getattr(model, "task", "") or "encoder"
    if task not in GRAPHS:
        raise ValueError(f"no ONNX graph for task {task!r}; tasks with one are {sorted(GRAPHS)}")
    return task


def output_names(model: nn.Module) -> list[str]:
    """The graph outputs `export_onnx` writes for `model`.

    Example:
        >>> import berta
        >>> output_names(berta.create(berta.EncoderConfig.preset("tiny"), "qa"))
        ['start_logits', 'end_logits']
    """
    names = list(GRAPHS[_task(model)].outputs)
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

    The shape follows the task's input axes: (batch, seq), or (batch, choices, seq) with 2 choices.

    Example:
        >>> import berta
        >>> example_batch(berta.create(berta.EncoderConfig.preset("tiny")))["attention_mask"].sum(dim=1).tolist()
        [9, 6, 3]
    """
    config = model.config
    sizes = {"batch": batch, "choices": 2, "seq": seq}
    shape = tuple(sizes[axis] for axis in GRAPHS[_task(model)].inputs)
    rows = int(np.prod(shape[:-1]))
    generator = torch.Generator().manual_seed(seed)
    # Ids above the special tokens (every family keeps them below 4), and never the padding id.
    low = max(4, config.pad_token_id + 1)
    input_ids = torch.randint(low, config.vocab_size, (rows, seq), generator=generator)
    lengths = torch.tensor([max(1, seq - 3 * row) for row in range(rows)])
    attention_mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()  # (rows, seq)
    input_ids = input_ids.masked_fill(attention_mask == 0, config.pad_token_id)
    features = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "token_type_ids" in input_names(model):
        # A sentence pair: second segment over the last third of each row's real tokens.
        features["token_type_ids"] = ((torch.arange(seq)[None, :] >= (2 * lengths[:, None]) // 3).long()
                                      * attention_mask)
    return {name: value.view(shape) for name, value in features.items()}


_INT32, _UINT8 = 6, 2  # onnx.TensorProto data types


def _int_mm_symbolic(g, a, b):  # type: ignore[no-untyped-def]
    # torch._int_mm (int8 x int8 -> int32) is ONNX's MatMulInteger. onnxruntime's fast int8 kernels take uint8
    # activations (int8 x int8 falls back to a reference loop, 70x slower here): shift by 128 and give 128 as
    # the activations' zero point, which is exact.
    shifted = g.op("Add", g.op("Cast", a, to_i=_INT32), g.op("Constant", value_t=torch.tensor(128, dtype=torch.int32)))
    zero_point = g.op("Constant", value_t=torch.tensor(128, dtype=torch.uint8))
    return g.op("MatMulInteger", g.op("Cast", shifted, to_i=_UINT8), b, zero_point)


def _register_int8_symbolic(opset: int) -> None:
    torch.onnx.register_custom_op_symbolic("aten::_int_mm", _int_mm_symbolic, opset)


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (what the graph stores as initializers)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
) -> Path:
    """Write `model` (fp32, or int8 from `berta.inference.quantize`) as an ONNX graph with dynamic axes.

    A model with more than `external_data_bytes` of weights keeps them in `<path>.data` beside the graph.

    Example:
        >>> model = berta.load("runs/sst2/model")  # doctest: +SKIP
        >>> export_onnx(model, "runs/sst2/onnx/model.onnx")  # doctest: +SKIP
    """
    path = Path(path)
    parameter = next(model.parameters())
    if parameter.dtype != torch.float32:
        raise ValueError(f"export_onnx expects an fp32 model, got parameters of dtype {parameter.dtype}")
    task = _task(model)
    names_in, names_out = input_names(model), output_names(model)
    features = example_batch(model)
    wrapper = _GraphOutputs(model, names_out).eval()
    input_axes = dict(enumerate(GRAPHS[task].inputs))
    dynamic_axes = {name: input_axes for name in names_in}
    dynamic_axes.update({name: GRAPHS[task].outputs.get(name, {0: "batch"}) for name in names_out})
    path.parent.mkdir(parents=True, exist_ok=True)
    external = parameter_bytes(model) > external_data_bytes
    # Past protobuf's limit the exporter scatters one file per tensor; export into a scratch directory and
    # gather them into one `.data` file beside the graph.
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=".export-")) if external else None
    traced = scratch / path.name if scratch else path
    _register_int8_symbolic(opset)
    was_training = model.training
    try:
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
                str(traced),
                input_names=names_in,
                output_names=names_out,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,
            )
        if scratch is not None:
            import onnx

            graph = onnx.load(str(traced))  # reads the scattered tensors too
            onnx.save_model(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=f"{path.name}.data", size_threshold=1024)
    finally:
        model.train(was_training)  # the exporter restores the wrapper's mode onto the model; put ours back
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return path


def compare_onnx(model: nn.Module, path: str | Path, features: dict[str, Tensor] | None = None) -> Agreement:
    """onnxruntime on `path` against `model` on `features`, over every output, real tokens only.

    `features` defaults to a padded batch of a different shape than the export's example, so a graph that
    had baked in the example's shape or padding would fail here.

    Example:
        >>> compare_onnx(model, "runs/sst2/onnx/model.onnx").max_difference < 1e-4  # doctest: +SKIP
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
    largest, cosine = 0.0, 1.0
    for name, value in zip(output_names(model), got, strict=True):
        expected = getattr(output, name).float().numpy()
        if value.shape != expected.shape:
            raise ValueError(f"{path}: output {name} has shape {value.shape}, berta's has {expected.shape}")
        # Per-token outputs are compared on real tokens: padding rows are unspecified in other engines.
        examples = range(expected.shape[0])
        if expected.shape[: mask.ndim] == mask.shape:
            pairs = [(value[i][mask[i]], expected[i][mask[i]]) for i in examples]
        else:
            pairs = [(value[i], expected[i]) for i in examples]
        largest = max(largest, max(float(np.abs(a - b).max(initial=0.0)) for a, b in pairs))
        cosine = min(cosine, float(np.mean([_cosine(a, b) for a, b in pairs])))
    return Agreement(largest, cosine)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms > 0 else float(np.array_equal(a, b))


def verify_onnx(model: nn.Module, path: str | Path, features: dict[str, Tensor] | None = None) -> float:
    """Largest absolute difference between onnxruntime on `path` and `model`; see `compare_onnx`.

    Example:
        >>> verify_onnx(model, "runs/sst2/onnx/model.onnx") < 1e-4  # doctest: +SKIP
        True
    """
    return compare_onnx(model, path, features).max_difference


def export(settings: ExportSettings) -> Path:
    """Export a model directory to a servable ONNX directory, checked against berta on a padded batch.

    Example:
        >>> export(ExportSettings(model=Path("runs/sst2/model"), output=Path("runs/sst2/onnx")))  # doctest: +SKIP
    """
    from berta.checkpoints.hf import architecture_name, load
    from berta.inference.quantize import quantize
    from berta.io import atomic_directory, atomic_write_json, check_file
    from berta.tokenizer import Tokenizer

    if settings.model is None or settings.output is None:
        raise ValueError("export onnx needs --model MODEL and --output OUTPUT")
    model = load(settings.model, task=settings.task, dtype=torch.float32)
    try:
        tokenizer = Tokenizer.from_pretrained(settings.model)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"{settings.model}: no tokenizer to write beside the graph ({error})") from None
    exported = quantize(copy.deepcopy(model), settings.quantize) if settings.quantize else model
    with atomic_directory(settings.output) as directory:
        path = export_onnx(exported, directory / GRAPH_NAME, settings.opset, settings.external_data_bytes)
        agreement = compare_onnx(model, path)  # against fp32 berta
        if settings.quantize:
            # int8 is judged on accuracy against fp32: one rounding that lands on the other side of .5 in
            # onnxruntime and in PyTorch moves a value by a whole int8 step, so elementwise parity with berta's
            # int8 model is not a property to hold the graph to.
            if agreement.cosine < settings.int8_cosine:
                raise ValueError(
                    f"{settings.model}: {settings.quantize} outputs have mean cosine {agreement.cosine:.4f} to fp32 "
                    f"(< {settings.int8_cosine}); nothing written to {settings.output}"
                )
        elif agreement.max_difference > settings.tolerance:
            raise ValueError(
                f"{settings.model}: onnxruntime differs from berta by {agreement.max_difference:.2e} "
                f"(> tolerance {settings.tolerance:.0e}); nothing written to {settings.output}"
            )
        config = model.config
        atomic_write_json(directory / "config.json", config.to_hf_dict(architecture_name(config, model.task)))
        tokenizer.save(directory)
        for name in POOLING_FILES:
            source = settings.model / name
            if source.is_file():
                (directory / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(check_file(source), directory / name)
    size = sum(file.stat().st_size for file in settings.output.glob("model.onnx*")) / 2**20
    cosine = f", mean cosine to fp32 {agreement.cosine:.5f}" if settings.quantize else ""
    print(f"wrote {settings.output} ({GRAPH_NAME} {size:.1f} MiB{', int8' if settings.quantize else ''}); "
          f"max difference to berta {agreement.max_difference:.2e}{cosine}")
    return settings.output
