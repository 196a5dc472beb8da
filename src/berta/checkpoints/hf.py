"""Hugging Face layout, berta's native format: `config.json` + `model.safetensors` (or `pytorch_model.bin`).

The mapping between berta's parameter names and the checkpoint's is an explicit table, written out per family
and task below — no fuzzy matching. Loading reports, by name, every tensor it had to initialise (a new task
head) and every tensor of the file it did not use (another task's head); a missing encoder tensor or a shape
mismatch is an error that names the tensor and both shapes.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from berta import io, tasks
from berta.config import EncoderConfig
from berta.model import Encoder, init_weights, register_checkpoint_writer
from berta.tasks.masked_lm import MaskedLMTask

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
PICKLE_WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"

# berta name -> HF name inside the encoder; "{i}" is the layer index. A tuple of names means the berta tensor is
# those checkpoint tensors stacked along the first dimension.
_ENCODER_TABLE: dict[str, str | tuple[str, ...]] = {
    "embeddings.words.weight": "embeddings.word_embeddings.weight",
    "embeddings.positions.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_types.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.norm.weight": "embeddings.LayerNorm.weight",
    "embeddings.norm.bias": "embeddings.LayerNorm.bias",
    # berta stacks query, key and value in one projection; checkpoints keep three (stacked in this order).
    "layers.{i}.attention.qkv.weight": (
        "encoder.layer.{i}.attention.self.query.weight",
        "encoder.layer.{i}.attention.self.key.weight",
        "encoder.layer.{i}.attention.self.value.weight",
    ),
    "layers.{i}.attention.qkv.bias": (
        "encoder.layer.{i}.attention.self.query.bias",
        "encoder.layer.{i}.attention.self.key.bias",
        "encoder.layer.{i}.attention.self.value.bias",
    ),
    "layers.{i}.attention.output.weight": "encoder.layer.{i}.attention.output.dense.weight",
    "layers.{i}.attention.output.bias": "encoder.layer.{i}.attention.output.dense.bias",
    "layers.{i}.attention.norm.weight": "encoder.layer.{i}.attention.output.LayerNorm.weight",
    "layers.{i}.attention.norm.bias": "encoder.layer.{i}.attention.output.LayerNorm.bias",
    "layers.{i}.feed_forward.intermediate.weight": "encoder.layer.{i}.intermediate.dense.weight",
    "layers.{i}.feed_forward.intermediate.bias": "encoder.layer.{i}.intermediate.dense.bias",
    "layers.{i}.feed_forward.output.weight": "encoder.layer.{i}.output.dense.weight",
    "layers.{i}.feed_forward.output.bias": "encoder.layer.{i}.output.dense.bias",
    "layers.{i}.feed_forward.norm.weight": "encoder.layer.{i}.output.LayerNorm.weight",
    "layers.{i}.feed_forward.norm.bias": "encoder.layer.{i}.output.LayerNorm.bias",
    "pooler.dense.weight": "pooler.dense.weight",
    "pooler.dense.bias": "pooler.dense.bias",
}

# Tensors that checkpoints may carry but that are copies of others (tied decoder) or buffers, not weights.
_DERIVED = {
    *MaskedLMTask.derived,
    "{p}embeddings.position_ids",
    "{p}embeddings.token_type_ids",
}
_FAMILY_CLASS_PREFIXES = ("Bert", "Roberta", "XLMRoberta", "Camembert")
@dataclass
class LoadReport:
    """What loading did beyond copying tensors: names of initialised and of unused checkpoint tensors."""

    initialised: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


def name_table(config: EncoderConfig, task: str, encoder_prefix: str) -> dict[str, tuple[str, ...]]:
    """berta parameter name -> the checkpoint tensor names it is made of (stacked along dim 0), layers expanded.

    `encoder_prefix` is "" for a bare encoder checkpoint (BertModel) and "bert." / "roberta." inside task models.

    Example:
        >>> name_table(EncoderConfig.preset("tiny"), "masked-lm", "roberta.")["head.bias"]
        ('lm_head.bias',)
    """
    inner = "" if task == "encoder" else "encoder."
    table = {}
    for ours, theirs in _ENCODER_TABLE.items():
        names = (theirs,) if isinstance(theirs, str) else theirs
        for i in range(config.num_layers) if "{i}" in ours else [None]:
            table[inner + ours.format(i=i)] = tuple(encoder_prefix + name.format(i=i) for name in names)
    table.update({ours: (theirs,) for ours, theirs in tasks.get(task).head_table(config).items()})
    return table


def architecture_name(config: EncoderConfig, task: str) -> str:
    """The `transformers` class of a task model of this family: (roberta, "qa") -> RobertaForQuestionAnswering."""
    return config.hf_class_prefix + tasks.get(task).architecture_suffix


def architectures() -> dict[str, str]:
    """Every `transformers` architecture berta builds -> its task: an explicit table, never a suffix match (so
    `BertLMHeadModel`, a decoder, is refused rather than loaded as a bare encoder).

    Example:
        >>> architectures()["XLMRobertaForTokenClassification"]
        'tokens'
    """
    return {prefix + task.architecture_suffix: name for name, task in tasks.TASKS.items()
            for prefix in _FAMILY_CLASS_PREFIXES}


def task_of_architecture(architecture: str) -> str:
    """'XLMRobertaForTokenClassification' -> 'tokens'; an architecture berta does not build raises ValueError."""
    table = architectures()
    if architecture not in table:
        raise ValueError(
            f"architecture {architecture!r} is not one berta builds; berta builds {sorted(table)}"
        )
    return table[architecture]


def read_weights(directory: Path) -> dict[str, Tensor]:
    """The tensors of `model.safetensors` (preferred) or `pytorch_model.bin` (weights only, never pickled code)."""
    safetensors_path = directory / WEIGHTS_NAME
    pickle_path = directory / PICKLE_WEIGHTS_NAME
    if safetensors_path.exists():
        try:
            return load_file(str(safetensors_path))
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(
                f"{safetensors_path}: cannot read weights, the file is truncated or corrupt ({error})"
            ) from None
    if pickle_path.exists():
        try:
            state = torch.load(pickle_path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
            raise ValueError(f"{pickle_path}: cannot read weights ({type(error).__name__}: {error})") from None
        if not isinstance(state, dict):
            raise ValueError(f"{pickle_path}: expected a dict of tensors, got {type(state).__name__}")
        return state
    raise FileNotFoundError(f"{directory}: no {WEIGHTS_NAME} or {PICKLE_WEIGHTS_NAME} found")


def _encoder_prefix(config: EncoderConfig, tensors: dict[str, Tensor]) -> str:
    prefix = config.hf_prefix + "."
    return prefix if any(name.startswith(prefix) for name in tensors) else ""


def load_state(model: nn.Module, tensors: dict[str, Tensor], source: str) -> LoadReport:
    """Copy checkpoint tensors into `model` through the name table; see the module docstring."""
    config: EncoderConfig = model.config  # type: ignore[assignment]
    prefix = _encoder_prefix(config, tensors)
    table = name_table(config, model.task, prefix)  # type: ignore[arg-type]
    ours = dict(model.state_dict())
    report = LoadReport()
    missing_encoder = []
    state = {}
    for our_name, parameter in ours.items():
        their_names = table.get(our_name)
        if their_names is None:
            raise KeyError(f"berta parameter {our_name} has no entry in the name table")  # a bug in berta
        if any(name not in tensors for name in their_names):
            is_head = not our_name.startswith(("encoder.", "embeddings.", "layers.")) or ".pooler." in f".{our_name}"
            (report.initialised if is_head else missing_encoder).append(our_name)
            continue
        parts = [tensors[name] for name in their_names]
        expected = (parameter.shape[0] // len(parts), *parameter.shape[1:])
        for name, tensor in zip(their_names, parts, strict=True):
            if tuple(tensor.shape) != tuple(expected):
                hint = ""
                if "word_embeddings" in name:
                    hint = f" (config.json says vocab_size={config.vocab_size}; the tensor has {tensor.shape[0]} rows)"
                raise ValueError(
                    f"{source}: tensor {name} has shape {tuple(tensor.shape)}, but berta's {our_name} needs "
                    f"{tuple(expected)}{hint}"
                )
        state[our_name] = parts[0] if len(parts) == 1 else torch.cat(parts)
    if missing_encoder:
        raise ValueError(f"{source}: encoder tensors missing from the checkpoint: {_names(missing_encoder, table)}")
    derived = {name.format(p=prefix) for name in _DERIVED}
    used = {name for ours in state for name in table[ours]}
    report.unused = sorted(name for name in tensors if name not in used and name not in derived)
    model.load_state_dict(state, strict=False)
    return report


def _names(names: list[str], table: dict[str, tuple[str, ...]]) -> str:
    shown = [theirs for name in names for theirs in table[name] if theirs]
    return ", ".join(shown[:8]) + (f" and {len(shown) - 8} more" if len(shown) > 8 else "")


def load(
    path: str | Path,
    task: str | None = None,
    id2label: dict[int, str] | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    quantize: str | None = None,
    new_head: Literal["error", "init"] = "error",
) -> nn.Module:
    """Load a model directory in the Hugging Face layout.

    The task model is the one `config.json`'s `architectures` names, unless `task` asks for another
    (a name in `berta.tasks.TASKS`). A head the checkpoint does not hold is an error naming the checkpoint's
    architecture, unless `new_head="init"` (what fine-tuning and pretraining do): then it is initialised and
    reported. `id2label` sets the labels of a new classification or token-classification head. `dtype` ("bfloat16",
    torch.bfloat16, ...) casts the model (bfloat16 also puts `PackedLinear`s, weights packed for oneDNN, in the
    encoder layers); `quantize="int8"` runs its encoder layers in int8 (`berta.inference.quantize`).

    Example:
        >>> import tempfile
        >>> directory = tempfile.mkdtemp()
        >>> tasks.create(EncoderConfig.preset("tiny"), "masked-lm").save(directory)
        >>> type(load(directory)).__name__, type(load(directory, task="encoder")).__name__
        ('MaskedLM', 'Encoder')
        >>> load(directory, task="qa")
        Traceback (most recent call last):
        ...
        ValueError: ...: a RobertaForMaskedLM checkpoint has no trained qa head (...); ... trains one
    """
    directory = model_directory(path)
    config = EncoderConfig.from_file(directory / CONFIG_NAME)
    architectures = config.extra.get("architectures") or []
    saved_task = task_of_architecture(architectures[0]) if architectures else "encoder"
    task = task or saved_task
    needs_labels = tasks.get(task).needs_labels  # raises on an unknown task name
    if id2label:
        config.id2label = {int(k): str(v) for k, v in id2label.items()}
    elif task == saved_task and needs_labels and not config.id2label:
        config.id2label = {0: "LABEL_0", 1: "LABEL_1"}  # transformers leaves its default two labels unsaved
    elif needs_labels and not config.id2label:
        if new_head != "init":
            raise ValueError(_missing_head(directory, architectures, config, task, "and no labels"))
        raise ValueError(f"{directory}: the checkpoint has no labels; pass id2label to put a {task} head on it")
    tensors = read_weights(directory)
    if task == "encoder" and not any(name.endswith("pooler.dense.weight") for name in tensors):
        # The encoder of a checkpoint without BERT's pooler (RoBERTa's MLM, a token classifier) has no pooler
        # either, rather than a random one: `pooler_output` is None, the hidden states are the checkpoint's.
        model = init_weights(Encoder(config, add_pooler=False), config)
    else:
        model = tasks.create(config, task)
    report = load_state(model, tensors, str(directory))
    if report.initialised and new_head != "init":
        raise ValueError(_missing_head(directory, architectures, config, task, f"({', '.join(report.initialised)})"))
    if report.initialised:
        log.warning("%s: new %s head initialised: %s", directory, task, ", ".join(report.initialised))
    if report.unused:
        log.info("%s: checkpoint tensors not used by a %s model: %s", directory, task, ", ".join(report.unused))
    model.load_report = report  # type: ignore[assignment]
    model.source_directory = directory  # type: ignore[assignment]  # `save` copies its tokenizer from here
    model.eval()
    if quantize is not None:
        from berta.inference.quantize import quantize as quantize_model

        quantize_model(model, quantize)  # from the float32 weights, before any cast
    if dtype is not None or device is not None:
        from berta.inference.quantize import pack_bfloat16, resolve_dtype

        torch_dtype = resolve_dtype(dtype)
        model.to(device=device, dtype=torch_dtype)
        if torch_dtype is torch.bfloat16:
            pack_bfloat16(model)  # oneDNN's matmul on packed weights for CPU inference
    return model


def _missing_head(directory: Path, architectures: list[str], config: EncoderConfig, task: str, detail: str) -> str:
    saved = architectures[0] if architectures else architecture_name(config, "encoder")
    how = "train one with `berta pretrain`" if task == "masked-lm" else f"`berta finetune --task {task}` trains one"
    return f"{directory}: a {saved} checkpoint has no trained {task} head {detail}; {how}"


def model_directory(path: str | Path) -> Path:
    """The model directory `path` names: itself, or the `model/` inside a run directory (`--model runs/x`), or a
    hub id's download. A file, or a directory without `config.json`, is an error that says so.

    Example:
        >>> model_directory("/no/such/model")
        Traceback (most recent call last):
        ...
        FileNotFoundError: /no/such/model: no such model directory
    """
    directory = Path(path)
    if directory.is_dir():
        if (directory / CONFIG_NAME).is_file():
            return directory
        if (directory / "model" / CONFIG_NAME).is_file():  # a run directory: its final model
            log.info("%s is a run directory; using its model %s", directory, directory / "model")
            return directory / "model"
        raise FileNotFoundError(f"{directory}: a directory without {CONFIG_NAME}, so not a model directory (a "
                                "model directory holds config.json and model.safetensors; a run directory, model/)")
    if directory.exists():
        raise ValueError(f"{directory}: is a file, expected a model directory (config.json + model.safetensors)")
    if str(path).count("/") == 1 and not str(path).startswith((".", "/")):
        # Looks like a hub id ("FacebookAI/roberta-base"): fetch it when huggingface_hub is installed and online.
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise FileNotFoundError(
                f"{path}: no such directory (and huggingface_hub is not installed to fetch it from the hub)"
            ) from None
        try:
            patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
            return Path(snapshot_download(str(path), allow_patterns=patterns))
        except Exception as error:  # offline, unknown repository, no access: say both things that were tried
            raise FileNotFoundError(
                f"{path}: no such model directory, and fetching it from the hub failed ({type(error).__name__})"
            ) from None
    raise FileNotFoundError(f"{path}: no such model directory")


def state_for_saving(model: nn.Module) -> dict[str, Tensor]:
    """The model's tensors under their Hugging Face names (tied decoder left out, as `transformers` saves)."""
    config: EncoderConfig = model.config  # type: ignore[assignment]
    prefix = "" if model.task == "encoder" else config.hf_prefix + "."  # type: ignore[attr-defined]
    table = name_table(config, model.task, prefix)  # type: ignore[arg-type]
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name not in table:
            raise ValueError(
                f"berta parameter {name} has no Hugging Face name: an int8-quantized model is a runtime form and "
                "is not saved; save the float model (load without quantize), or export one with `berta export onnx "
                "--quantize int8`"
            )
        their_names = table[name]
        for their_name, part in zip(their_names, tensor.detach().chunk(len(their_names)), strict=True):
            tensors[their_name] = part.contiguous()
    return tensors


# The files of a tokenizer (transformers' and SentencePiece's), and of a sentence-transformers model around the
# encoder: `save` copies them from the directory a model was loaded from, so the saved directory opens the same.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model")
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def _copy_companions(source: Path, directory: Path, sentence_transformers: bool) -> None:
    names = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    if sentence_transformers and (source / "modules.json").is_file():
        names += [name for name in SENTENCE_TRANSFORMERS_FILES if (source / name).is_file()]
        for module in io.read_json(source / "modules.json"):
            module_path = str(module.get("path", "")) if isinstance(module, dict) else ""
            if module_path and (source / module_path).is_dir():  # 1_Pooling/, 2_Normalize/
                names += [str(p.relative_to(source)) for p in sorted((source / module_path).rglob("*")) if p.is_file()]
    for name in names:
        if (directory / name).exists():  # a tokenizer saved there on purpose (a job saves its own first) wins
            continue
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        io.atomic_write_bytes(directory / name, (source / name).read_bytes())


def save(model: nn.Module, path: str | Path) -> None:
    """Write `config.json` and `model.safetensors`, each atomically; other files in the directory are kept.

    A model from `berta.load` carries its directory: its tokenizer files (and, for a bare encoder, the
    sentence-transformers files: modules.json, 1_Pooling/ ...) are copied along. A model without them, saved
    into a directory without a tokenizer, warns: `transformers` would build an empty-vocabulary tokenizer there.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    source = getattr(model, "source_directory", None)
    if source is not None and Path(source).resolve() != directory.resolve():
        _copy_companions(Path(source), directory, sentence_transformers=model.task == "encoder")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        warnings.warn(f"{directory}: saved a model without a tokenizer; save one beside it with "
                      f"`tokenizer.save({str(directory)!r})`", stacklevel=4)
    config: EncoderConfig = model.config  # type: ignore[assignment]
    tensors = {name: tensor.cpu() for name, tensor in state_for_saving(model).items()}
    io.atomic_write(directory / WEIGHTS_NAME, lambda file: save_file(tensors, str(file), metadata={"format": "pt"}))
    hf_config = config.to_hf_dict(architecture_name(config, model.task))  # type: ignore[arg-type]
    if tensors:
        hf_config["dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    io.atomic_write_text(directory / CONFIG_NAME, json.dumps(hf_config, indent=2, sort_keys=True) + "\n")


register_checkpoint_writer(save)
