"""fairseq RoBERTa / XLM-R release directories, read and written without fairseq installed.

A release directory holds `model.pt`, `dict.txt` and the BPE files: `encoder.json` + `vocab.bpe` (GPT-2's, for
RoBERTa; berta's vendored copies are used when they are absent, as fairseq downloads them) or
`sentencepiece.bpe.model` (XLM-R).

`model.pt` is a pickle, and unpickling runs whatever the file names. It is read here by a restricted unpickler
that resolves only tensors and storages, containers, and the argument records checkpoints hold
(`argparse.Namespace` under `args`, omegaconf `DictConfig` / `ListConfig` / nodes under `cfg`), each turned into
a plain dict without importing argparse's or omegaconf's code paths. Classes of fairseq itself (the enums of a
`cfg`, the training meters some `extra_state`s keep) become stand-ins that record their state or value; fairseq is
never imported. Any other global is refused with an `UnsafeCheckpointError` naming it, before anything is called.

Both on-disk layouts are read: torch's zip archive (`archive/data.pkl` + one record per storage) and the legacy
stream of the 2019 releases (magic number, protocol, system info, the pickle, its storage keys, then each
storage's bytes).

The state dict comes in two namings, told apart by the tensors themselves:

    2019 (fairseq 0.8)                                  newer (fairseq >= 0.10)
    decoder.sentence_encoder.*                          encoder.sentence_encoder.*
    ... .emb_layer_norm                                 ... .layernorm_embedding
    ... .self_attn.in_proj_weight (q, k, v stacked)     ... .self_attn.{q,k,v}_proj
    decoder.lm_head.*                                   encoder.lm_head.*

and `classification_heads.NAME.{dense,out_proj}` in both. The table below maps them to the Hugging Face names
(berta's native layout); conversion ends with a parity check against `berta.checkpoints.reference`, a forward
pass read straight from the fairseq tensors.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import logging
import pickle
import re
import shutil
import struct
import tempfile
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import Tensor

from berta.checkpoints.hf import architecture_name
from berta.checkpoints.reference import ReferenceLayer, ReferenceWeights
from berta.config import EncoderConfig
from berta.io import atomic_write_text, check_file, read_json
from berta.tokenizer import Tokenizer, read_fairseq_dict

log = logging.getLogger(__name__)

MODEL_NAME = "model.pt"
DICT_NAME = "dict.txt"
SENTENCEPIECE_NAME = "sentencepiece.bpe.model"
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq Dictionary's first four symbols
# The labels fairseq's README gives for roberta.large.mnli's head (its label dictionary is not in model.pt).
MNLI_LABELS = ("contradiction", "neutral", "entailment")
# fairseq activation_fn -> berta/HF hidden_act. fairseq's "gelu_accurate" is the tanh approximation.
_ACTIVATIONS = {"gelu": "gelu", "gelu_accurate": "gelu_new", "gelu_fast": "gelu_new", "relu": "relu"}


class UnsafeCheckpointError(ValueError):
    """model.pt names a global outside the allow-list; nothing from it was called."""


# ----------------------------------------------------------------------------------------- restricted unpickling

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch's legacy serialization header
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


class _Storage:
    """A storage named by the pickle; its bytes are filled in after the pickle is read (legacy layout)."""

    def __init__(self, dtype: torch.dtype, numel: int, root: _Storage | None = None, offset: int = 0):
        self.dtype, self.numel, self.root, self.offset = dtype, numel, root, offset
        self.data: bytes | None = None

    def tensor(self) -> Tensor:
        if self.root is not None:
            return self.root.tensor()[self.offset : self.offset + self.numel]
        if self.data is None:
            raise ValueError("a storage the pickle refers to has no data in the file (truncated model.pt?)")
        if not self.numel:
            return torch.empty(0, dtype=self.dtype)
        return torch.frombuffer(bytearray(self.data), dtype=self.dtype)


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _PendingTensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def tensor(self) -> Tensor:
        return torch.as_strided(self.storage.tensor(), self.size, self.stride, self.offset).clone()


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> _PendingTensor:
    if not isinstance(storage, _Storage):
        raise UnsafeCheckpointError(f"a tensor is rebuilt from a {type(storage).__name__}, not a storage")
    return _PendingTensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data  # a Parameter is its tensor here


class _Record:
    """Stand-in for an argument object (Namespace, DictConfig, nodes): keeps the pickled state, runs nothing."""

    kind = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Record:
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        self.state = state[0] if isinstance(state, tuple) and len(state) == 2 and state[1] is None else state
        if isinstance(self.state, tuple) and len(self.state) == 2 and isinstance(self.state[1], dict):
            self.state = {**(self.state[0] or {}), **self.state[1]}  # (dict state, slot state)


def _record(kind: str) -> type[_Record]:
    return type(f"_{kind}", (_Record,), {"kind": kind})


_NAMESPACE = _record("Namespace")
_DICT_CONFIG = _record("DictConfig")
_LIST_CONFIG = _record("ListConfig")
_NODE = _record("Node")
_METADATA = _record("Metadata")
_OMEGACONF = {
    ("omegaconf.dictconfig", "DictConfig"): _DICT_CONFIG,
    ("omegaconf.listconfig", "ListConfig"): _LIST_CONFIG,
    ("omegaconf.base", "Metadata"): _METADATA,
    ("omegaconf.base", "ContainerMetadata"): _METADATA,
    **{("omegaconf.nodes", name): _NODE for name in (
        "AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "EnumNode", "BytesNode", "PathNode",
        "ValueNode",
    )},
}


class _FairseqObject(_Record):
    """Stand-in for a fairseq class named in the pickle (a cfg enum, a dataclass type, the meters of
    `extra_state`): never imported. Built with NEWOBJ it keeps its state; called (an enum member is pickled as
    `EnumClass(value)`) it keeps the arguments."""

    kind = "fairseq"
    name = ""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args = args


def _fairseq_class(module: str, name: str, cache: dict[str, type] = {}) -> type:  # noqa: B006 - the cache
    key = f"{module}.{name}"
    if key not in cache:
        cache[key] = type(f"_fairseq_{name}", (_FairseqObject,), {"name": key})
    return cache[key]


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    # copyreg._reconstructor is how protocol 0/1 pickles build objects; only our stand-ins may be built.
    if not (isinstance(cls, type) and issubclass(cls, _Record)) or base is not object:
        raise UnsafeCheckpointError(f"copyreg._reconstructor is asked to build {cls!r} from {base!r}")
    return cls.__new__(cls)


def _numpy_scalar(dtype: Any, data: bytes = b"") -> Any:
    import numpy

    if not isinstance(dtype, numpy.dtype) or dtype.kind not in "biuf":
        raise UnsafeCheckpointError(f"numpy scalar of dtype {dtype!r} is not a plain number")
    return numpy.frombuffer(data, dtype)[0].item()


def _numpy_dtype(spec: Any, *_: Any) -> Any:
    import numpy

    if not isinstance(spec, str) or not re.fullmatch(r"[<>|=]?[biuf]\d{1,2}", spec):
        raise UnsafeCheckpointError(f"numpy dtype {spec!r} is not a plain number type")
    return numpy.dtype(spec)


_BUILTINS = {name: value for name, value in (
    ("dict", dict), ("list", list), ("tuple", tuple), ("set", set), ("frozenset", frozenset), ("int", int),
    ("long", int), ("float", float), ("str", str), ("unicode", str), ("bool", bool), ("bytes", bytes),
    ("object", object),
)}
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("argparse", "Namespace"): _NAMESPACE,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("typing", "Any"): "typing.Any",
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    **_OMEGACONF,
    # torch.cuda.*Storage: tensors saved from a GPU; their bytes are the same and are read to the CPU
    **{(module, name): _StorageType(dtype) for module in ("torch", "torch.cuda")
       for name, dtype in _STORAGE_DTYPES.items()},
    **{(module, name): value for module in ("builtins", "__builtin__") for name, value in _BUILTINS.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, source: Path, storages: dict[str, _Storage]):
        super().__init__(file, encoding="utf-8")
        self.source, self.storages = source, storages

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is not None:
            return allowed
        if module == "fairseq" or module.startswith("fairseq."):
            return _fairseq_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.source}: refused to load global {module}.{name}: a fairseq model.pt may only hold tensors, "
            "containers and argument records (argparse.Namespace, omegaconf configs); nothing was executed"
        )

    def persistent_load(self, saved_id: Any) -> _Storage:
        if not isinstance(saved_id, tuple) or not saved_id or saved_id[0] != "storage":
            raise UnsafeCheckpointError(f"{self.source}: unknown persistent id {saved_id!r:.80}")
        storage_type, key, _location, numel = saved_id[1:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"{self.source}: storage of type {storage_type!r} is not a tensor storage")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, int(numel))
        storage = self.storages[key]
        view = saved_id[5] if len(saved_id) > 5 else None
        if view is not None:  # legacy storage views: (view key, offset, size) into the root storage
            view_key, offset, size = view
            self.storages.setdefault(str(view_key), _Storage(storage.dtype, int(size), storage, int(offset)))
            return self.storages[str(view_key)]
        return storage


def _plain(value: Any, seen: dict[int, Any]) -> Any:
    """Tensors materialised, argument records turned into dicts and lists; cycles (omegaconf's parents) cut."""
    if id(value) in seen:
        return seen[id(value)]
    if isinstance(value, _PendingTensor):
        result: Any = value.tensor()
    elif isinstance(value, _Record):
        state = getattr(value, "state", None)
        args = getattr(value, "args", ())
        if value.kind == "fairseq":  # an enum member's value, else the object's state, else its class name
            result = _plain(args[0], seen) if len(args) == 1 else _plain(state, seen) if state else value.name
        elif value.kind == "Namespace":
            result = {str(k): _plain(v, seen) for k, v in (state or {}).items()}
        elif value.kind in ("DictConfig", "ListConfig", "Node"):
            content = (state or {}).get("_content" if value.kind != "Node" else "_val")
            result = _plain(content, seen)
        else:
            result = None
    elif isinstance(value, type) and issubclass(value, _FairseqObject):
        result = value.name  # a class named as a type (omegaconf metadata)
    elif isinstance(value, dict):
        result = OrderedDict() if isinstance(value, OrderedDict) else {}
        seen[id(value)] = result
        for k, v in value.items():
            result[_plain(k, seen)] = _plain(v, seen)
        return result
    elif isinstance(value, list):
        result = []
        seen[id(value)] = result
        result.extend(_plain(v, seen) for v in value)
        return result
    elif isinstance(value, tuple):
        result = tuple(_plain(v, seen) for v in value)
    else:
        result = value
    seen[id(value)] = result
    return result


def load_model_pt(path: str | Path) -> dict[str, Any]:
    """Read a fairseq `model.pt` (torch zip or legacy stream) without running code from it.

    Tensors come back as torch tensors (in their stored dtype), `args` and `cfg` as plain dicts. A global
    outside the allow-list raises `UnsafeCheckpointError` naming it.

    Example:
        >>> checkpoint = load_model_pt("roberta.base/model.pt")  # doctest: +SKIP
        >>> checkpoint["args"]["encoder_layers"], checkpoint["model"]["decoder.lm_head.bias"].shape  # doctest: +SKIP
        (12, torch.Size([50265]))
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a fairseq release directory holds {MODEL_NAME})")
    storages: dict[str, _Storage] = {}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise ValueError(f"{path}: a zip file but not a torch checkpoint (no single */data.pkl)")
            prefix = pickles[0][: -len("data.pkl")]
            if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
                raise ValueError(f"{path}: big-endian tensors are not supported")
            result = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path, storages).load()
            for key, storage in storages.items():
                if storage.root is None:
                    record = f"{prefix}data/{key}"
                    if record not in names:
                        raise ValueError(f"{path}: storage record {record} is missing (truncated file?)")
                    storage.data = archive.read(record)
    else:
        with open(path, "rb") as handle:
            try:
                header = [_RestrictedUnpickler(handle, path, storages).load() for _ in range(3)]
            except (pickle.UnpicklingError, EOFError, ValueError) as error:
                if isinstance(error, UnsafeCheckpointError):
                    raise
                raise ValueError(f"{path}: not a torch checkpoint ({error})") from None
            if header[0] != _MAGIC_NUMBER or header[1] != _LEGACY_PROTOCOL:
                raise ValueError(f"{path}: not a torch checkpoint (bad magic number / protocol {header[1]!r})")
            if isinstance(header[2], dict) and not header[2].get("little_endian", True):
                raise ValueError(f"{path}: big-endian tensors are not supported")
            result = _RestrictedUnpickler(handle, path, storages).load()
            keys = _RestrictedUnpickler(handle, path, storages).load()
            for key in keys:
                storage = storages[str(key)]
                (numel,) = struct.unpack("<q", handle.read(8))
                nbytes = numel * torch.empty(0, dtype=storage.dtype).element_size()
                storage.data = handle.read(nbytes)
                if len(storage.data) != nbytes:
                    raise ValueError(f"{path}: storage {key} is cut short ({len(storage.data)} of {nbytes} bytes)")
    try:
        checkpoint = _plain(result, {})
    except RuntimeError as error:  # torch.as_strided: a size/stride that does not fit the storage
        raise ValueError(f"{path}: a tensor does not fit its storage, the file is corrupt ({error})") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    return checkpoint


# ----------------------------------------------------------------------------------------- the name table

# fairseq name under `{encoder}.layers.{i}.` -> HF name under `encoder.layer.{i}.`. A tuple: the fairseq tensor
# is those HF tensors stacked along dim 0 (2019's fused in_proj).
_LAYER_TABLE: dict[str, str | tuple[str, ...]] = {
    "self_attn.q_proj.weight": "attention.self.query.weight",
    "self_attn.q_proj.bias": "attention.self.query.bias",
    "self_attn.k_proj.weight": "attention.self.key.weight",
    "self_attn.k_proj.bias": "attention.self.key.bias",
    "self_attn.v_proj.weight": "attention.self.value.weight",
    "self_attn.v_proj.bias": "attention.self.value.bias",
    "self_attn.out_proj.weight": "attention.output.dense.weight",
    "self_attn.out_proj.bias": "attention.output.dense.bias",
    "self_attn_layer_norm.weight": "attention.output.LayerNorm.weight",
    "self_attn_layer_norm.bias": "attention.output.LayerNorm.bias",
    "fc1.weight": "intermediate.dense.weight",
    "fc1.bias": "intermediate.dense.bias",
    "fc2.weight": "output.dense.weight",
    "fc2.bias": "output.dense.bias",
    "final_layer_norm.weight": "output.LayerNorm.weight",
    "final_layer_norm.bias": "output.LayerNorm.bias",
}
_FUSED_ATTENTION: dict[str, tuple[str, ...]] = {
    "self_attn.in_proj_weight": tuple(f"attention.self.{p}.weight" for p in ("query", "key", "value")),
    "self_attn.in_proj_bias": tuple(f"attention.self.{p}.bias" for p in ("query", "key", "value")),
}
_EMBEDDING_TABLE = {
    "embed_tokens.weight": "embeddings.word_embeddings.weight",
    "embed_positions.weight": "embeddings.position_embeddings.weight",
}
_EMBEDDING_NORMS = {"2019": "emb_layer_norm", "current": "layernorm_embedding"}
_LM_HEAD_TABLE = {
    "dense.weight": "lm_head.dense.weight",
    "dense.bias": "lm_head.dense.bias",
    "layer_norm.weight": "lm_head.layer_norm.weight",
    "layer_norm.bias": "lm_head.layer_norm.bias",
    "bias": "lm_head.bias",
}
_CLASSIFICATION_TABLE = {
    "dense.weight": "classifier.dense.weight",
    "dense.bias": "classifier.dense.bias",
    "out_proj.weight": "classifier.out_proj.weight",
    "out_proj.bias": "classifier.out_proj.bias",
}
_PREFIXES = {"2019": "decoder", "current": "encoder"}  # where fairseq keeps the sentence encoder and LM head
_IGNORED = re.compile(r"(^|\.)(version|_float_tensor)$")  # fairseq bookkeeping buffers, not weights
Naming = Literal["2019", "current"]


@dataclass
class FairseqCheckpoint:
    """A fairseq release directory, read: its tensors (fairseq names), model args, family and vocabulary."""

    directory: Path
    state: dict[str, Tensor]
    args: dict[str, Any]
    family: str  # "roberta" | "xlm-roberta"
    naming: Naming
    fused_attention: bool
    symbols: list[str]  # dict.txt's symbols, in order
    heads: list[str] = field(default_factory=list)  # classification head names

    @property
    def prefix(self) -> str:
        return f"{_PREFIXES[self.naming]}.sentence_encoder."

    @property
    def lm_prefix(self) -> str:
        return f"{_PREFIXES[self.naming]}.lm_head."

    @property
    def num_layers(self) -> int:
        pattern = re.compile(re.escape(self.prefix) + r"layers\.(\d+)\.")
        found = {int(m.group(1)) for name in self.state if (m := pattern.match(name))}
        if found != set(range(len(found))):
            raise ValueError(f"{self.directory / MODEL_NAME}: layers {sorted(found)} are not numbered 0..n-1")
        return len(found)


def _model_args(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    args = checkpoint.get("args")
    if not args:
        cfg = checkpoint.get("cfg") or {}
        args = cfg.get("model") if isinstance(cfg, dict) else None
        if isinstance(args, dict) and isinstance(cfg.get("bpe"), dict) and "bpe" not in args:
            args = {**args, "bpe": cfg["bpe"].get("_name")}
    if not isinstance(args, dict):
        raise ValueError(f"{path}: no model arguments (neither 'args' nor 'cfg.model' is present)")
    return args


def read_dict(path: Path) -> list[str]:
    """The symbols of a fairseq `dict.txt` ("<symbol> <count>" lines, optional "#fairseq:overwrite").

    Example: `read_dict(Path("roberta.base/dict.txt"))[:3]` (RoBERTa's: GPT-2 ids as text, most frequent first).
    """
    return read_fairseq_dict(check_file(path, "dict.txt"))


def read(directory: str | Path) -> FairseqCheckpoint:
    """Read a fairseq RoBERTa / XLM-R release directory (model.pt, dict.txt, BPE files), checking that they fit.

    Example:
        >>> checkpoint = read("roberta.base")  # doctest: +SKIP
        >>> checkpoint.family, checkpoint.naming, checkpoint.num_layers  # doctest: +SKIP
        ('roberta', '2019', 12)
    """
    directory = Path(directory)
    model_path, dict_path = directory / MODEL_NAME, directory / DICT_NAME
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory (a fairseq release holds {MODEL_NAME}, {DICT_NAME})")
    if not dict_path.is_file():
        raise FileNotFoundError(f"{dict_path}: no such file; a fairseq release directory needs {DICT_NAME} beside "
                                f"{MODEL_NAME} (its vocabulary)")
    checkpoint = load_model_pt(model_path)
    state = checkpoint.get("model")
    if not isinstance(state, dict) or not all(isinstance(t, Tensor) for t in state.values()):
        raise ValueError(f"{model_path}: 'model' is not a dict of tensors")
    args = _model_args(checkpoint, model_path)
    naming: Naming
    if any(name.startswith("decoder.sentence_encoder.") for name in state):
        naming = "2019"
    elif any(name.startswith("encoder.sentence_encoder.") for name in state):
        naming = "current"
    else:
        raise ValueError(f"{model_path}: no decoder.sentence_encoder.* or encoder.sentence_encoder.* tensors; "
                         "not a RoBERTa / XLM-R checkpoint")
    fused = any(name.endswith("self_attn.in_proj_weight") for name in state)
    if (directory / SENTENCEPIECE_NAME).is_file() or args.get("bpe") == "sentencepiece":
        family = "xlm-roberta"
    else:
        family = "roberta"
    heads = sorted({name.split(".")[1] for name in state if name.startswith("classification_heads.")})
    result = FairseqCheckpoint(directory, state, args, family, naming, fused, read_dict(dict_path), heads)
    embeddings = result.prefix + "embed_tokens.weight"
    if embeddings not in state:
        raise ValueError(f"{model_path}: tensor {embeddings} is missing")
    rows, expected = state[embeddings].shape[0], len(SPECIALS) + len(result.symbols) + 1
    if rows != expected:
        raise ValueError(
            f"{dict_path}: {len(result.symbols)} symbols make a vocabulary of {expected} (fairseq's 4 specials, "
            f"the file's symbols, <mask>), but {model_path} tensor {embeddings} has {rows} rows: "
            "dict.txt does not belong to this model"
        )
    if args.get("encoder_normalize_before"):
        raise ValueError(f"{model_path}: encoder_normalize_before=True (pre-LayerNorm) is not a RoBERTa encoder")
    return result


def _tensor(checkpoint: FairseqCheckpoint, name: str) -> Tensor:
    if name not in checkpoint.state:
        raise ValueError(f"{checkpoint.directory / MODEL_NAME}: tensor {name} is missing")
    return checkpoint.state[name].float()


def _hf_tensors(checkpoint: FairseqCheckpoint, head: str | None) -> dict[str, Tensor]:
    """The checkpoint's tensors under Hugging Face names for a RoBERTa task model (`roberta.` prefix).

    `head` is None (LM head), or a classification head's name. Tensors berta has no place for are an error.
    """
    prefix, used = checkpoint.prefix, set()

    def take(name: str) -> Tensor:
        used.add(name)
        return _tensor(checkpoint, name)

    tensors = {f"roberta.{ours}": take(prefix + theirs) for theirs, ours in _EMBEDDING_TABLE.items()}
    norm = prefix + _EMBEDDING_NORMS["2019" if f"{prefix}emb_layer_norm.weight" in checkpoint.state else "current"]
    tensors["roberta.embeddings.LayerNorm.weight"] = take(norm + ".weight")
    tensors["roberta.embeddings.LayerNorm.bias"] = take(norm + ".bias")
    hidden = tensors["roberta.embeddings.word_embeddings.weight"].shape[1]
    # fairseq has no segment table; the HF layout keeps one zero row (what transformers' converter wrote).
    tensors["roberta.embeddings.token_type_embeddings.weight"] = torch.zeros(1, hidden)
    table = {**_LAYER_TABLE, **_FUSED_ATTENTION} if checkpoint.fused_attention else _LAYER_TABLE
    for i in range(checkpoint.num_layers):
        for theirs, ours in table.items():
            if checkpoint.fused_attention and theirs.startswith(("self_attn.q_proj", "self_attn.k_proj",
                                                                 "self_attn.v_proj")):
                continue
            tensor = take(f"{prefix}layers.{i}.{theirs}")
            names = (ours,) if isinstance(ours, str) else ours
            if tensor.shape[0] % len(names):
                raise ValueError(f"{checkpoint.directory / MODEL_NAME}: tensor {prefix}layers.{i}.{theirs} has "
                                 f"{tensor.shape[0]} rows, not a multiple of {len(names)} (q, k, v)")
            for name, part in zip(names, tensor.chunk(len(names)), strict=True):
                tensors[f"roberta.encoder.layer.{i}.{name}"] = part.contiguous()
    if head is None:
        for theirs, ours in _LM_HEAD_TABLE.items():
            tensors[ours] = take(checkpoint.lm_prefix + theirs)
        tied = checkpoint.lm_prefix + "weight"
        if tied in checkpoint.state:
            used.add(tied)
            if not torch.equal(checkpoint.state[tied].float(), tensors["roberta.embeddings.word_embeddings.weight"]):
                raise ValueError(f"{checkpoint.directory / MODEL_NAME}: {tied} differs from the word embeddings; "
                                 "berta ties the LM decoder to them (untie_weights_roberta is not supported)")
    else:
        for theirs, ours in _CLASSIFICATION_TABLE.items():
            tensors[ours] = take(f"classification_heads.{head}.{theirs}")
    leftover = [n for n in checkpoint.state if n not in used and not _IGNORED.search(n)]
    other_heads = [n for n in leftover if n.startswith(("classification_heads.", checkpoint.lm_prefix))]
    if other_heads:
        log.info("%s: tensors of other heads not converted: %s", checkpoint.directory, ", ".join(other_heads))
    unknown = [n for n in leftover if n not in other_heads]
    if unknown:
        raise ValueError(f"{checkpoint.directory / MODEL_NAME}: tensors berta has no place for: "
                         f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
    return tensors


def _config_of(checkpoint: FairseqCheckpoint, head: str | None, labels: list[str]) -> EncoderConfig:
    """The EncoderConfig: shapes from the tensors, heads/activation/dropouts from `args`, fairseq's conventions."""
    args, source = checkpoint.args, checkpoint.directory / MODEL_NAME
    words = _tensor(checkpoint, checkpoint.prefix + "embed_tokens.weight")
    positions = _tensor(checkpoint, checkpoint.prefix + "embed_positions.weight")
    intermediate = _tensor(checkpoint, f"{checkpoint.prefix}layers.0.fc1.weight")
    if "encoder_attention_heads" not in args:
        raise ValueError(f"{source}: args has no encoder_attention_heads")
    activation = str(args.get("activation_fn", "gelu"))
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{source}: activation_fn {activation!r} is not one of {sorted(_ACTIVATIONS)}")
    if "max_positions" in args and positions.shape[0] != int(args["max_positions"]) + 2:
        raise ValueError(f"{source}: {checkpoint.prefix}embed_positions.weight has {positions.shape[0]} rows, "
                         f"expected max_positions {args['max_positions']} + 2 (padding_idx 1 + 1)")
    id2label: dict[int, str] = {}
    if head is not None:
        num_labels = _tensor(checkpoint, f"classification_heads.{head}.out_proj.weight").shape[0]
        if labels and len(labels) != num_labels:
            raise ValueError(f"--labels gives {len(labels)} labels but head {head!r} has {num_labels} outputs")
        if not labels and head == "mnli" and num_labels == len(MNLI_LABELS):
            labels = list(MNLI_LABELS)
        id2label = {i: (labels[i] if labels else f"LABEL_{i}") for i in range(num_labels)}
    return EncoderConfig(
        family=checkpoint.family,
        vocab_size=words.shape[0],
        hidden_size=words.shape[1],
        num_layers=checkpoint.num_layers,
        num_heads=int(args["encoder_attention_heads"]),
        intermediate_size=intermediate.shape[0],
        activation=_ACTIVATIONS[activation],
        max_positions=positions.shape[0],
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        position_offset=2,
        layer_norm_eps=1e-5,  # fairseq's LayerNorm default
        hidden_dropout=float(args.get("dropout", 0.1)),
        attention_dropout=float(args.get("attention_dropout", 0.1)),
        classifier_dropout=float(args["pooler_dropout"]) if "pooler_dropout" in args else None,
        id2label=id2label,
    )


def reference_weights(checkpoint: FairseqCheckpoint, head: str | None) -> ReferenceWeights:
    """The encoder read straight from the fairseq tensors (not through the name table), for the parity check.

    Example: `reference_forward(reference_weights(read("roberta.base"), None), ids, mask)["lm_logits"]`.
    """
    p, get = checkpoint.prefix, lambda name: _tensor(checkpoint, name)
    norm = "emb_layer_norm" if f"{p}emb_layer_norm.weight" in checkpoint.state else "layernorm_embedding"
    layers = []
    for i in range(checkpoint.num_layers):
        layer = f"{p}layers.{i}."
        if checkpoint.fused_attention:
            weights = get(layer + "self_attn.in_proj_weight").chunk(3)
            biases = get(layer + "self_attn.in_proj_bias").chunk(3)
            query, key, value = ((w, b) for w, b in zip(weights, biases, strict=True))
        else:
            query, key, value = ((get(f"{layer}self_attn.{x}_proj.weight"), get(f"{layer}self_attn.{x}_proj.bias"))
                                 for x in "qkv")

        def pair(name: str, layer: str = layer) -> tuple[Tensor, Tensor]:
            return get(f"{layer}{name}.weight"), get(f"{layer}{name}.bias")

        layers.append(ReferenceLayer(query, key, value, pair("self_attn.out_proj"), pair("self_attn_layer_norm"),
                                     pair("fc1"), pair("fc2"), pair("final_layer_norm")))
    weights = ReferenceWeights(
        words=get(p + "embed_tokens.weight"), positions=get(p + "embed_positions.weight"), token_types=None,
        embedding_norm=(get(f"{p}{norm}.weight"), get(f"{p}{norm}.bias")), layers=layers,
        num_heads=int(checkpoint.args["encoder_attention_heads"]), layer_norm_eps=1e-5,
        activation=_ACTIVATIONS[str(checkpoint.args.get("activation_fn", "gelu"))], position_offset=2,
    )
    if head is None:
        lm = checkpoint.lm_prefix
        weights.lm_head = {"dense": (get(lm + "dense.weight"), get(lm + "dense.bias")),
                           "norm": (get(lm + "layer_norm.weight"), get(lm + "layer_norm.bias")),
                           "bias": get(lm + "bias")}
    else:
        heads = f"classification_heads.{head}."
        weights.classifier = {name: (get(f"{heads}{name}.weight"), get(f"{heads}{name}.bias"))
                              for name in ("dense", "out_proj")}
    return weights


def choose_head(checkpoint: FairseqCheckpoint, head: str) -> str | None:
    """`head` setting -> None (LM head) or a classification head name. "auto": the only classification head if
    there is exactly one, else the LM head.

    Example: `choose_head(read("roberta.large.mnli"), "auto")` -> `'mnli'`.
    """
    lm_present = any(name.startswith(checkpoint.lm_prefix) for name in checkpoint.state)
    if head == "auto":
        if len(checkpoint.heads) == 1:
            return checkpoint.heads[0]
        if not lm_present:
            raise ValueError(f"{checkpoint.directory / MODEL_NAME}: no LM head; pick one of the classification "
                             f"heads {checkpoint.heads} with --head")
        return None
    if head == "lm":
        if not lm_present:
            raise ValueError(f"{checkpoint.directory / MODEL_NAME}: no {checkpoint.lm_prefix}* tensors (no LM head)")
        return None
    if head not in checkpoint.heads:
        raise ValueError(f"{checkpoint.directory / MODEL_NAME}: no classification head {head!r}; "
                         f"heads: {checkpoint.heads or 'none'} (or 'lm')")
    return head


def tokenizer_of(checkpoint: FairseqCheckpoint):
    """berta's Tokenizer for the release: fairseq's ids through dict.txt (GPT-2 BPE or SentencePiece).

    Example: `tokenizer_of(read("roberta.base")).encode("Hello world!").ids`.
    """

    directory = checkpoint.directory
    if checkpoint.family == "xlm-roberta":
        if not (directory / SENTENCEPIECE_NAME).is_file():
            raise FileNotFoundError(f"{directory / SENTENCEPIECE_NAME}: no such file (XLM-R's tokenizer)")
        with tempfile.TemporaryDirectory() as staging:
            for name in (SENTENCEPIECE_NAME, DICT_NAME):
                shutil.copy(directory / name, Path(staging) / name)
            return Tokenizer.from_pretrained(staging)
    with tempfile.TemporaryDirectory() as staging:
        gpt2 = Path(str(resources.files("berta") / "assets" / "gpt2-bpe"))
        for name, vendored in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
            if (directory / name).is_file():
                shutil.copy(directory / name, Path(staging) / name)
            else:  # fairseq itself downloads GPT-2's files; berta ships them
                log.info("%s: no %s, using GPT-2's (berta/assets/gpt2-bpe/%s)", directory, name, vendored)
                shutil.copy(gpt2 / vendored, Path(staging) / name)
        shutil.copy(directory / DICT_NAME, Path(staging) / DICT_NAME)
        return Tokenizer.from_pretrained(staging)


def _architecture(config: EncoderConfig, head: str | None) -> str:
    return architecture_name(config, "masked-lm" if head is None else "classification")


def write_berta(checkpoint: FairseqCheckpoint, output: Path, head: str | None, labels: list[str]) -> EncoderConfig:
    """Write the release as a berta (Hugging Face layout) directory into `output`: config, weights, tokenizer.

    Example: `write_berta(read("roberta.base"), Path("roberta-base"), head=None, labels=[])`.
    """
    config = _config_of(checkpoint, head, labels)
    tensors = _hf_tensors(checkpoint, head)
    tokenizer = tokenizer_of(checkpoint)
    if len(tokenizer) != config.vocab_size:
        raise ValueError(f"{checkpoint.directory}: the tokenizer has {len(tokenizer)} ids but the embeddings "
                         f"{config.vocab_size} rows")  # dict.txt was checked against the rows in `read`
    output.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(output / "model.safetensors"),
              metadata={"format": "pt"})
    hf_config = config.to_hf_dict(_architecture(config, head))
    hf_config["dtype"] = "float32"
    atomic_write_text(output / "config.json", json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    tokenizer.model_max_length = config.max_length
    tokenizer.save(output)
    if checkpoint.family == "xlm-roberta":
        shutil.copy(checkpoint.directory / SENTENCEPIECE_NAME, output / SENTENCEPIECE_NAME)
    return config


# ----------------------------------------------------------------------------------------- writing a release


def _fairseq_tensors(hf: dict[str, Tensor], config: EncoderConfig, naming: Naming, head: str | None) -> OrderedDict:
    """Hugging Face names (a RoBERTa task model's, `roberta.` prefix) -> fairseq names, the table read backwards.

    A trained segment row (transformers fine-tunes it) is folded into the position rows: every real token adds
    both, so outputs are unchanged.
    """
    prefix = f"{_PREFIXES[naming]}.sentence_encoder."
    hf = {name.removeprefix("roberta."): tensor for name, tensor in hf.items()}
    state: OrderedDict[str, Tensor] = OrderedDict()
    positions = hf["embeddings.position_embeddings.weight"].clone()
    segment = hf.get("embeddings.token_type_embeddings.weight")
    if segment is not None:
        if segment.shape[0] > 1:
            raise ValueError(f"type_vocab_size {segment.shape[0]}: fairseq RoBERTa has no segment embeddings")
        if segment.abs().max() > 0:
            log.info("folding the segment embedding row into the position rows (fairseq has no segment table)")
            keep = torch.arange(positions.shape[0]) != config.pad_token_id
            positions[keep] += segment[0]
    for theirs, ours in _EMBEDDING_TABLE.items():
        state[prefix + theirs] = positions if "position" in theirs else hf[ours]
    norm = prefix + _EMBEDDING_NORMS[naming]
    state[norm + ".weight"], state[norm + ".bias"] = hf["embeddings.LayerNorm.weight"], hf["embeddings.LayerNorm.bias"]
    for i in range(config.num_layers):
        for theirs, ours in _LAYER_TABLE.items():
            if naming == "2019" and theirs.startswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
                continue
            state[f"{prefix}layers.{i}.{theirs}"] = hf[f"encoder.layer.{i}.{ours}"]
        if naming == "2019":
            for theirs, names in _FUSED_ATTENTION.items():
                state[f"{prefix}layers.{i}.{theirs}"] = torch.cat([hf[f"encoder.layer.{i}.{n}"] for n in names])
    lm = f"{_PREFIXES[naming]}.lm_head."
    for theirs, ours in _LM_HEAD_TABLE.items():
        state[lm + theirs] = hf[ours]
    state[lm + "weight"] = hf["embeddings.word_embeddings.weight"]  # tied, stored as fairseq does
    if head is not None:
        for theirs, ours in _CLASSIFICATION_TABLE.items():
            state[f"classification_heads.{head}.{theirs}"] = hf[ours]
    return OrderedDict((name, tensor.detach().float().contiguous()) for name, tensor in state.items())


def _release_args(config: EncoderConfig, bpe: str, head: str | None) -> argparse.Namespace:
    """The `args` Namespace of a fairseq masked-LM RoBERTa checkpoint (roberta.base's fields, berta's values)."""
    args = argparse.Namespace(
        # the arch only fills in fields not given here; every size is given
        arch="roberta_large" if config.num_layers == 24 else "roberta_base", task="masked_lm", criterion="masked_lm",
        encoder_layers=config.num_layers, encoder_embed_dim=config.hidden_size,
        encoder_ffn_embed_dim=config.intermediate_size, encoder_attention_heads=config.num_heads,
        activation_fn={"gelu": "gelu", "gelu_new": "gelu_accurate", "gelu_pytorch_tanh": "gelu_accurate",
                       "relu": "relu"}[config.activation],
        pooler_activation_fn="tanh", dropout=config.hidden_dropout, attention_dropout=config.attention_dropout,
        activation_dropout=0.0, pooler_dropout=config.classifier_dropout if config.classifier_dropout is not None
        else config.hidden_dropout, max_positions=config.max_positions - config.position_offset,
        tokens_per_sample=config.max_positions - config.position_offset, encoder_normalize_before=False,
        encoder_layerdrop=0.0, untie_weights_roberta=False, bpe=bpe, sample_break_mode="complete", mask_prob=0.15,
        leave_unmasked_prob=0.1, random_token_prob=0.1, data=".", seed=1, fp16=False,
    )
    if head is not None:
        args.num_classes = config.num_labels
        args.classification_head_name = head
    return args


def _tokenizer_vocab(tokenizer) -> tuple[dict[str, int], list]:
    pipeline = json.loads(tokenizer.backend.to_str())
    model = pipeline["model"]
    return model["vocab"], model.get("merges", [])


def _write_release_files(tokenizer, config: EncoderConfig, model_dir: Path, output: Path) -> str:
    """dict.txt and the BPE files of the release; returns fairseq's `bpe` name."""
    if len(tokenizer) != config.vocab_size or tokenizer.mask_id != config.vocab_size - 1:
        raise ValueError(f"{model_dir}: the tokenizer has {len(tokenizer)} ids with <mask> at {tokenizer.mask_id}, "
                         f"but a fairseq dictionary numbers the model's {config.vocab_size} rows with <mask> last "
                         f"(id {config.vocab_size - 1})")
    ids = range(len(SPECIALS), config.vocab_size - 1)  # after the specials, before <mask>
    if config.family == "roberta":
        vocab, merges = _tokenizer_vocab(tokenizer)
        by_id = {i: token for token, i in vocab.items()}
        gpt2 = read_json(Path(str(resources.files("berta") / "assets" / "gpt2-bpe" / "vocab.json")))
        encoder: dict[str, int] = {}
        entries = []
        for i in ids:
            token = by_id[i]
            if re.fullmatch(r"madeupword\d{4}", token):  # fairseq's vocabulary padding, listed by name
                entries.append(f"{token} 0")
                continue
            encoder[token] = gpt2.get(token, len(gpt2) + len(encoder))
            entries.append(f"{encoder[token]} 1")
        atomic_write_text(output / "encoder.json", json.dumps(encoder, ensure_ascii=False))
        merge_lines = [m if isinstance(m, str) else " ".join(m) for m in merges]
        atomic_write_text(output / "vocab.bpe", "#version: 0.2\n" + "\n".join(merge_lines) + "\n")
        bpe = "gpt2"
    else:
        if not (model_dir / SENTENCEPIECE_NAME).is_file():
            raise FileNotFoundError(f"{model_dir / SENTENCEPIECE_NAME}: no such file; a fairseq XLM-R release needs "
                                    "the SentencePiece model, which the berta directory does not hold")
        shutil.copy(model_dir / SENTENCEPIECE_NAME, output / SENTENCEPIECE_NAME)
        entries = [f"{tokenizer.id_to_token(i)} 1" for i in ids]
        bpe = "sentencepiece"
    atomic_write_text(output / DICT_NAME, "\n".join(entries) + "\n")
    return bpe


def write_release(tensors: dict[str, Tensor], config: EncoderConfig, tokenizer, model_dir: Path, output: Path,
                  naming: Naming, head: str | None) -> None:
    """Write a RoBERTa-family model's tensors (Hugging Face names: encoder, LM head and, with `head`, the
    classifier) as a fairseq release into `output`: model.pt, dict.txt and the BPE files.

    `naming` "current" writes the newer names in torch's zip format; "2019" the 2019 names (fused attention)
    in the legacy stream, as the original releases were saved.

    Example: `write_release(state_for_saving(model), model.config, tokenizer, Path("m"), Path("out"), "2019", None)`.
    """
    output.mkdir(parents=True, exist_ok=True)
    bpe = _write_release_files(tokenizer, config, model_dir, output)
    state = _fairseq_tensors(tensors, config, naming, head)
    checkpoint = {
        "args": _release_args(config, bpe, head),
        "model": state,
        # what fairseq's checkpoint upgrade reads before it builds the model
        "optimizer_history": [{"criterion_name": "MaskedLmLoss", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}, "val_loss": None},
        "last_optimizer_state": None,
    }
    torch.save(checkpoint, output / MODEL_NAME, _use_new_zipfile_serialization=naming == "current")
