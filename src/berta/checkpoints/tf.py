"""Google BERT TensorFlow checkpoints, read and written: `bert_config.json`, `bert_model.ckpt.{index,data-*}`,
`vocab.txt` — the layout of Google's BERT releases, of the original BERT code's name-based
`init_from_checkpoint`, and of bert4keras's `build_transformer_model`.

Variables are keyed by name (`bert/encoder/layer_3/attention/self/query/kernel`), not by TF2 object-graph
paths; dense kernels are stored (in, out), the transpose of PyTorch's weights. Reading goes through
`tf.train.load_checkpoint`; optimizer slots (`adam_m`, `adam_v`), `global_step` and other training state are
skipped and reported, as is BERT's next-sentence head (`cls/seq_relationship`), which berta has no model for.

RoBERTa / XLM-R are written the RoBERTa4Keras way, so that a plain BERT loader computes RoBERTa:
- positions: the two rows before fairseq's first position (`padding_idx + 1` = 2) are dropped, so BERT's
  positions 0, 1, 2, ... read RoBERTa's rows 2, 3, 4, ... and `max_position_embeddings` is 512 for
  roberta-base. This is exact for right-padded input; left padding needs the loader's own position ids.
  The dropped rows are kept under `berta/embeddings/position_offset_rows` (loaders ignore unknown names) so
  that berta -> TF -> berta gives back identical tensors.
- segments: one row (`type_vocab_size` 1), zero unless a `transformers` fine-tune trained it. The original
  BERT code creates and loads the table; bert4keras loads it, or skips it with `segment_vocab_size=0`
  (exact only while the row is zero).
- LayerNorm: RoBERTa's eps is 1e-5 (`layer_norm_eps` in bert_config.json); the original BERT code and
  bert4keras use a fixed 1e-12 (README: what that changes, measured).
- ids: `<s>` and `<pad>` trade places (`<pad>` = 0, `<s>` = 1: rows 0 and 1 of the word embeddings and
  of the MLM bias, and the written tokenizer), because loaders take id 0 for padding — bert4keras's token
  embedding has `mask_zero=True`, and with RoBERTa's `<s>` = 0 every token would stop attending to `<s>`.
  `bert_config.json` records it as `"berta_exchanged_ids": [0, 1]`; berta exchanges them back on import.
- `bert_config.json` also carries `model_type`, `pad_token_id` and `layer_norm_eps`, which BERT loaders
  ignore and berta reads back; the tokenizer is written as `tokenizer.json` (in the checkpoint's ids) beside a
  `vocab.txt` listing every token by id.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from berta.checkpoints.hf import architecture_name
from berta.checkpoints.reference import ReferenceLayer, ReferenceWeights
from berta.config import EncoderConfig
from berta.io import atomic_write_json, atomic_write_text, lines, read_json

log = logging.getLogger(__name__)

CONFIG_NAME = "bert_config.json"
CHECKPOINT_NAME = "bert_model.ckpt"
VOCAB_NAME = "vocab.txt"
OFFSET_ROWS = "berta/embeddings/position_offset_rows"
EXCHANGED = "berta_exchanged_ids"  # bert_config.json: the two ids whose rows trade places (RoBERTa's <s>, <pad>)
_VOCAB_ROWS = ("bert/embeddings/word_embeddings", "cls/predictions/output_bias")

# TF variable -> HF name under the encoder prefix (bert. / roberta.). "{i}" is the layer. Kernels are transposed.
_ENCODER_TABLE = {
    "bert/embeddings/word_embeddings": "embeddings.word_embeddings.weight",
    "bert/embeddings/token_type_embeddings": "embeddings.token_type_embeddings.weight",
    "bert/embeddings/position_embeddings": "embeddings.position_embeddings.weight",
    "bert/embeddings/LayerNorm/gamma": "embeddings.LayerNorm.weight",
    "bert/embeddings/LayerNorm/beta": "embeddings.LayerNorm.bias",
    "bert/encoder/layer_{i}/attention/self/query/kernel": "encoder.layer.{i}.attention.self.query.weight",
    "bert/encoder/layer_{i}/attention/self/query/bias": "encoder.layer.{i}.attention.self.query.bias",
    "bert/encoder/layer_{i}/attention/self/key/kernel": "encoder.layer.{i}.attention.self.key.weight",
    "bert/encoder/layer_{i}/attention/self/key/bias": "encoder.layer.{i}.attention.self.key.bias",
    "bert/encoder/layer_{i}/attention/self/value/kernel": "encoder.layer.{i}.attention.self.value.weight",
    "bert/encoder/layer_{i}/attention/self/value/bias": "encoder.layer.{i}.attention.self.value.bias",
    "bert/encoder/layer_{i}/attention/output/dense/kernel": "encoder.layer.{i}.attention.output.dense.weight",
    "bert/encoder/layer_{i}/attention/output/dense/bias": "encoder.layer.{i}.attention.output.dense.bias",
    "bert/encoder/layer_{i}/attention/output/LayerNorm/gamma": "encoder.layer.{i}.attention.output.LayerNorm.weight",
    "bert/encoder/layer_{i}/attention/output/LayerNorm/beta": "encoder.layer.{i}.attention.output.LayerNorm.bias",
    "bert/encoder/layer_{i}/intermediate/dense/kernel": "encoder.layer.{i}.intermediate.dense.weight",
    "bert/encoder/layer_{i}/intermediate/dense/bias": "encoder.layer.{i}.intermediate.dense.bias",
    "bert/encoder/layer_{i}/output/dense/kernel": "encoder.layer.{i}.output.dense.weight",
    "bert/encoder/layer_{i}/output/dense/bias": "encoder.layer.{i}.output.dense.bias",
    "bert/encoder/layer_{i}/output/LayerNorm/gamma": "encoder.layer.{i}.output.LayerNorm.weight",
    "bert/encoder/layer_{i}/output/LayerNorm/beta": "encoder.layer.{i}.output.LayerNorm.bias",
}
_POOLER_TABLE = {"bert/pooler/dense/kernel": "pooler.dense.weight", "bert/pooler/dense/bias": "pooler.dense.bias"}
# TF variable -> (BERT's HF name, RoBERTa's HF name); outside the encoder prefix.
_MLM_TABLE = {
    "cls/predictions/transform/dense/kernel": ("cls.predictions.transform.dense.weight", "lm_head.dense.weight"),
    "cls/predictions/transform/dense/bias": ("cls.predictions.transform.dense.bias", "lm_head.dense.bias"),
    "cls/predictions/transform/LayerNorm/gamma": ("cls.predictions.transform.LayerNorm.weight",
                                                  "lm_head.layer_norm.weight"),
    "cls/predictions/transform/LayerNorm/beta": ("cls.predictions.transform.LayerNorm.bias", "lm_head.layer_norm.bias"),
    "cls/predictions/output_bias": ("cls.predictions.bias", "lm_head.bias"),
}
# run_classifier.py's head: output_weights is (num_labels, hidden) already, used with transpose_b.
_CLASSIFIER_TABLE = {"output_weights": "classifier.weight", "output_bias": "classifier.bias"}
# Training state that checkpoints carry and berta skips (and reports).
_TRAINING_STATE = re.compile(r"(/adam_[mv]$|/Adam(_1)?$|^global_step$|^bad_steps$|^good_steps$|^loss_scale$)")
_NEXT_SENTENCE = re.compile(r"^cls/seq_relationship/")
# The tasks a Google BERT checkpoint can hold (bert/..., cls/predictions/..., run_classifier's output_weights).
_TASKS = ("encoder", "masked-lm", "classification")


def _tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow
    except ImportError:
        raise ImportError("TF checkpoints need TensorFlow: pip install 'berta[tf]' (tensorflow-cpu)") from None
    return tensorflow


def _transposed(name: str) -> bool:
    return name.endswith("/kernel")


def _exchange_rows(array: np.ndarray, ids: tuple[int, int]) -> np.ndarray:
    array = np.array(array, copy=True)
    array[[ids[0], ids[1]]] = array[[ids[1], ids[0]]]
    return array


def _exchange_tokenizer_ids(directory: Path, ids: tuple[int, int]) -> None:
    """Exchange two ids in tokenizer.json and tokenizer_config.json, in place (doing it twice undoes it)."""
    a, b = ids

    def other(value: int) -> int:
        return b if value == a else a if value == b else value

    def processor(node: Any) -> None:  # RobertaProcessing's [token, id] pairs, TemplateProcessing's "ids"
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("cls", "sep") and isinstance(value, list) and len(value) == 2:
                    value[1] = other(value[1])
                elif key == "ids" and isinstance(value, list):
                    node[key] = [other(i) for i in value]
                else:
                    processor(value)
        elif isinstance(node, list):
            for item in node:
                processor(item)

    path = directory / "tokenizer.json"
    pipeline = read_json(path)
    for token in pipeline.get("added_tokens", []):
        token["id"] = other(token["id"])
    vocab = pipeline["model"]["vocab"]
    if isinstance(vocab, dict):  # BPE / WordPiece: token -> id
        pipeline["model"]["vocab"] = {token: other(i) for token, i in vocab.items()}
    else:  # Unigram: [piece, score] by id
        vocab[a], vocab[b] = vocab[b], vocab[a]
    processor(pipeline.get("post_processor"))
    atomic_write_text(path, json.dumps(pipeline, ensure_ascii=False))
    config_path = directory / "tokenizer_config.json"
    if config_path.is_file():
        config = read_json(config_path)
        decoder = config.get("added_tokens_decoder", {})
        config["added_tokens_decoder"] = {str(other(int(i))): token for i, token in decoder.items()}
        atomic_write_json(config_path, config)


@dataclass
class TFCheckpoint:
    """A Google-BERT-format checkpoint, read: variables by name (numpy), bert_config.json, the prefix read."""

    directory: Path
    prefix: Path
    variables: dict[str, np.ndarray]
    bert_config: dict[str, Any]
    skipped: list[str] = field(default_factory=list)

    @property
    def family(self) -> str:
        return str(self.bert_config.get("model_type", "bert"))

    @property
    def task(self) -> str:
        if "cls/predictions/output_bias" in self.variables:
            return "masked-lm"
        if "output_weights" in self.variables:
            return "classification"
        return "encoder"

    @property
    def exchanged(self) -> tuple[int, int] | None:
        ids = self.bert_config.get(EXCHANGED)
        return (int(ids[0]), int(ids[1])) if ids else None

    def get(self, name: str) -> np.ndarray:
        if name not in self.variables:
            raise ValueError(f"{self.prefix}: variable {name} is missing from the checkpoint")
        return self.variables[name]


def _checkpoint_prefix(directory: Path) -> Path:
    """The checkpoint in `directory`: the `checkpoint` file's latest, else the only (or highest-step) *.index."""
    tensorflow = _tensorflow()
    latest = tensorflow.train.latest_checkpoint(str(directory)) if (directory / "checkpoint").is_file() else None
    if latest and Path(f"{latest}.index").is_file():  # a `checkpoint` file may name the training machine's paths
        return Path(latest)
    indexes = sorted(directory.glob("*.index"))
    if not indexes:
        raise FileNotFoundError(f"{directory}: no TF checkpoint (*.index + *.data-*) found")

    def step(path: Path) -> int:
        match = re.search(r"-(\d+)\.index$", path.name)
        return int(match.group(1)) if match else -1

    return indexes[-1].with_suffix("") if len(indexes) == 1 else max(indexes, key=step).with_suffix("")


def read(directory: str | Path) -> TFCheckpoint:
    """Read a Google-BERT-format checkpoint directory through `tf.train.load_checkpoint`.

    Example:
        >>> checkpoint = read("uncased_L-12_H-768_A-12")  # doctest: +SKIP
        >>> checkpoint.get("bert/embeddings/word_embeddings").shape  # doctest: +SKIP
        (30522, 768)
    """
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no such file (a TF BERT checkpoint directory needs {CONFIG_NAME})")
    bert_config = read_json(config_path)
    prefix = _checkpoint_prefix(directory)
    tensorflow = _tensorflow()
    try:
        reader = tensorflow.train.load_checkpoint(str(prefix))
    except Exception as error:  # tf raises NotFoundError / DataLossError for missing or corrupt files
        raise ValueError(f"{prefix}: cannot read the TF checkpoint ({type(error).__name__}: {error})") from None
    variables, skipped = {}, []
    for name in sorted(reader.get_variable_to_shape_map()):
        if _TRAINING_STATE.search(name) or _NEXT_SENTENCE.search(name):
            skipped.append(name)
            continue
        variables[name] = reader.get_tensor(name)
    if skipped:
        log.warning("%s: skipped %d variables (optimizer slots, training state, next-sentence head): %s%s", prefix,
                    len(skipped), ", ".join(skipped[:6]), " ..." if len(skipped) > 6 else "")
    return TFCheckpoint(directory, prefix, variables, bert_config, skipped)


def _config_of(checkpoint: TFCheckpoint) -> EncoderConfig:
    """EncoderConfig from bert_config.json (plus the RoBERTa fields berta writes there)."""
    data, source = checkpoint.bert_config, checkpoint.directory / CONFIG_NAME
    family = checkpoint.family
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [name for name in required if name not in data]
    if missing:
        raise ValueError(f"{source}: fields {missing} are missing")
    positions = checkpoint.get("bert/embeddings/position_embeddings").shape[0]
    pad = int(data.get("pad_token_id", 0 if family == "bert" else 1))
    if checkpoint.exchanged and pad in checkpoint.exchanged:  # the checkpoint's pad id -> berta's
        pad = checkpoint.exchanged[1] if pad == checkpoint.exchanged[0] else checkpoint.exchanged[0]
    offset = 0 if family == "bert" else pad + 1
    num_labels = checkpoint.variables["output_weights"].shape[0] if "output_weights" in checkpoint.variables else 0
    type_rows = checkpoint.get("bert/embeddings/token_type_embeddings").shape[0]
    labels = data.get("id2label") or {}
    try:
        return EncoderConfig(
            family=family, vocab_size=int(data["vocab_size"]), hidden_size=int(data["hidden_size"]),
            num_layers=int(data["num_hidden_layers"]), num_heads=int(data["num_attention_heads"]),
            intermediate_size=int(data["intermediate_size"]), activation=str(data.get("hidden_act", "gelu")),
            max_positions=positions + offset, type_vocab_size=type_rows, pad_token_id=pad,
            bos_token_id=None if family == "bert" else 0, eos_token_id=None if family == "bert" else 2,
            position_offset=offset, layer_norm_eps=float(data.get("layer_norm_eps", 1e-12)),
            hidden_dropout=float(data.get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(data.get("attention_probs_dropout_prob", 0.1)),
            initializer_range=float(data.get("initializer_range", 0.02)),
            id2label={i: str(labels.get(str(i), f"LABEL_{i}")) for i in range(num_labels)},
        )
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def _rows(checkpoint: TFCheckpoint, name: str) -> np.ndarray:
    """A variable in berta's ids: vocabulary rows exchanged back when the checkpoint says so."""
    value = np.asarray(checkpoint.get(name))
    return _exchange_rows(value, checkpoint.exchanged) if checkpoint.exchanged and name in _VOCAB_ROWS else value


def _hf_tensors(checkpoint: TFCheckpoint, config: EncoderConfig) -> dict[str, Tensor]:
    """The checkpoint's variables under Hugging Face names (kernels transposed, RoBERTa's offset rows restored)."""
    task = checkpoint.task
    prefix = "" if task == "encoder" else config.hf_prefix + "."
    tensors = {}
    for theirs, ours in _ENCODER_TABLE.items():
        for i in range(config.num_layers) if "{i}" in theirs else [None]:
            name = theirs.format(i=i)
            value = torch.from_numpy(_rows(checkpoint, name).astype(np.float32))
            tensors[prefix + ours.format(i=i)] = value.T.contiguous() if _transposed(name) else value
    if config.position_offset:
        rows = checkpoint.variables.get(OFFSET_ROWS)
        if rows is None:
            log.info("%s: no %s; the %d rows before the first position are zeros", checkpoint.prefix, OFFSET_ROWS,
                     config.position_offset)
            rows = np.zeros((config.position_offset, config.hidden_size), dtype=np.float32)
        name = prefix + "embeddings.position_embeddings.weight"
        tensors[name] = torch.cat([torch.from_numpy(np.array(rows, dtype=np.float32)), tensors[name]])
    # the pooler, when written (BERT, and RoBERTa's bare encoder), sits under the encoder prefix
    pooler = "bert/pooler/dense/kernel" in checkpoint.variables
    head_names = {k: prefix + v for k, v in _POOLER_TABLE.items()} if pooler else {}
    if task == "masked-lm":
        head_names.update({k: v[0 if config.family == "bert" else 1] for k, v in _MLM_TABLE.items()})
    if task == "classification":
        head_names.update(_CLASSIFIER_TABLE)
    for theirs, ours in head_names.items():
        value = torch.from_numpy(_rows(checkpoint, theirs).astype(np.float32))
        tensors[ours] = value.T.contiguous() if _transposed(theirs) else value
    return tensors


def reference_weights(checkpoint: TFCheckpoint) -> ReferenceWeights:
    """The encoder read straight from the TF variables (BERT's positions 0, 1, ...), for the parity check.

    Example: `reference_forward(reference_weights(read("uncased_L-12_H-768_A-12")), ids, mask, types)`.
    """
    config = _config_of(checkpoint)

    def get(name: str) -> Tensor:  # berta's ids, so that both sides read the same tokenization
        value = torch.from_numpy(_rows(checkpoint, name).astype(np.float64))
        return value.T if _transposed(name) else value

    def dense(name: str) -> tuple[Tensor, Tensor]:
        return get(f"{name}/kernel"), get(f"{name}/bias")

    def norm(name: str) -> tuple[Tensor, Tensor]:
        return get(f"{name}/gamma"), get(f"{name}/beta")

    layers = []
    for i in range(config.num_layers):
        layer = f"bert/encoder/layer_{i}/"
        layers.append(ReferenceLayer(
            dense(layer + "attention/self/query"), dense(layer + "attention/self/key"),
            dense(layer + "attention/self/value"), dense(layer + "attention/output/dense"),
            norm(layer + "attention/output/LayerNorm"), dense(layer + "intermediate/dense"),
            dense(layer + "output/dense"), norm(layer + "output/LayerNorm"),
        ))
    weights = ReferenceWeights(
        words=get("bert/embeddings/word_embeddings"), positions=get("bert/embeddings/position_embeddings"),
        token_types=get("bert/embeddings/token_type_embeddings"), embedding_norm=norm("bert/embeddings/LayerNorm"),
        layers=layers, num_heads=config.num_heads, layer_norm_eps=config.layer_norm_eps,
        activation=config.activation, position_offset=0,
    )
    if checkpoint.task == "masked-lm":
        weights.lm_head = {"dense": dense("cls/predictions/transform/dense"),
                           "norm": norm("cls/predictions/transform/LayerNorm"),
                           "bias": get("cls/predictions/output_bias")}
    if checkpoint.task == "classification":
        weights.pooler = dense("bert/pooler/dense")
        weights.classifier = {"linear": (get("output_weights"), get("output_bias"))}
    return weights


def _tokenizer(checkpoint: TFCheckpoint):
    """berta's Tokenizer: tokenizer.json when berta wrote the checkpoint, else vocab.txt (WordPiece)."""
    from berta.tokenizer import Tokenizer

    directory = checkpoint.directory
    if (directory / "tokenizer.json").is_file():
        if not checkpoint.exchanged:
            return Tokenizer.from_pretrained(directory)
        with tempfile.TemporaryDirectory() as staging:
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                if (directory / name).is_file():
                    shutil.copy(directory / name, Path(staging) / name)
            _exchange_tokenizer_ids(Path(staging), checkpoint.exchanged)
            return Tokenizer.from_pretrained(staging)
    vocab = directory / VOCAB_NAME
    if not vocab.is_file():
        raise FileNotFoundError(f"{vocab}: no such file (a TF BERT checkpoint directory needs its vocabulary)")
    tokens = [line.rstrip("\r\n") for _, line in lines(vocab)]
    # Google's releases do not record casing; an uncased vocabulary has no capitalised word pieces.
    cased = any(t[:1].isupper() for t in tokens if not t.startswith("["))
    with tempfile.TemporaryDirectory() as staging:
        shutil.copy(vocab, Path(staging) / VOCAB_NAME)
        atomic_write_json(Path(staging) / "tokenizer_config.json", {"do_lower_case": not cased})
        return Tokenizer.from_pretrained(staging)


def write_berta(checkpoint: TFCheckpoint, output: Path) -> EncoderConfig:
    """Write the checkpoint as a berta (Hugging Face layout) directory into `output`.

    Example: `write_berta(read("uncased_L-12_H-768_A-12"), Path("bert-base"))`.
    """
    config = _config_of(checkpoint)
    tensors = _hf_tensors(checkpoint, config)
    tokenizer = _tokenizer(checkpoint)
    if len(tokenizer) > config.vocab_size:  # fewer is fine: unused rows (RoBERTa pads its table to 50265)
        raise ValueError(f"{checkpoint.directory}: the vocabulary has {len(tokenizer)} tokens but "
                         f"bert/embeddings/word_embeddings has only {config.vocab_size} rows")
    output.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(output / "model.safetensors"), metadata={"format": "pt"})
    hf_config = config.to_hf_dict(architecture_name(config, checkpoint.task))
    hf_config["dtype"] = "float32"
    atomic_write_text(output / "config.json", json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    tokenizer.model_max_length = config.max_length
    tokenizer.save(output)
    return config


# ----------------------------------------------------------------------------------------- writing


def _exchange_of(config: EncoderConfig) -> tuple[int, int] | None:
    """RoBERTa-family models with <pad> != 0: (0, pad) trade places, so id 0 is padding (see the docstring)."""
    if config.family == "bert" or config.pad_token_id == 0:
        return None
    return (0, config.pad_token_id)


def _tf_variables(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """A berta model's tensors under Google BERT's variable names (kernels transposed; see the module docstring
    for RoBERTa's positions)."""
    from berta.checkpoints.hf import state_for_saving

    config: EncoderConfig = model.config
    task = getattr(model, "task", "encoder")
    if task not in _TASKS or (task == "classification" and config.family != "bert"):
        raise ValueError(f"a {config.family} {task} model: the TF BERT format names the encoder, the masked-LM "
                         "head and run_classifier's BERT head only")
    tensors = state_for_saving(model)
    prefix = "" if task == "encoder" else config.hf_prefix + "."
    variables: dict[str, np.ndarray] = {}

    def put(theirs: str, ours: str) -> None:
        value = tensors[ours].detach().float().numpy()
        variables[theirs] = np.ascontiguousarray(value.T if _transposed(theirs) else value)

    for theirs, ours in _ENCODER_TABLE.items():
        for i in range(config.num_layers) if "{i}" in theirs else [None]:
            if "token_type" in theirs and config.type_vocab_size == 0:
                continue
            put(theirs.format(i=i), prefix + ours.format(i=i))
    if config.type_vocab_size == 0:  # BERT loaders always build the table: one zero row changes nothing
        variables["bert/embeddings/token_type_embeddings"] = np.zeros((1, config.hidden_size), dtype=np.float32)
    if config.position_offset:
        positions = variables["bert/embeddings/position_embeddings"]
        variables[OFFSET_ROWS] = positions[: config.position_offset].copy()
        variables["bert/embeddings/position_embeddings"] = positions[config.position_offset :].copy()
    if prefix + "pooler.dense.weight" in tensors:
        for theirs, ours in _POOLER_TABLE.items():
            put(theirs, prefix + ours)
    if task == "masked-lm":
        for theirs, ours in _MLM_TABLE.items():
            put(theirs, ours[0 if config.family == "bert" else 1])
    if task == "classification":
        for theirs, ours in _CLASSIFIER_TABLE.items():
            put(theirs, ours)
    exchange = _exchange_of(config)
    if exchange:
        for name in _VOCAB_ROWS:
            if name in variables:
                variables[name] = _exchange_rows(variables[name], exchange)
    return variables


def _bert_config(config: EncoderConfig) -> dict[str, Any]:
    """bert_config.json: Google's fields, plus model_type / pad_token_id / layer_norm_eps for RoBERTa."""
    data: dict[str, Any] = {
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "intermediate_size": config.intermediate_size,
        "hidden_act": config.activation, "hidden_dropout_prob": config.hidden_dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "max_position_embeddings": config.max_positions - config.position_offset,
        "type_vocab_size": max(config.type_vocab_size, 1), "initializer_range": config.initializer_range,
    }
    if config.family != "bert" or config.layer_norm_eps != 1e-12:
        data.update(model_type=config.family, pad_token_id=config.pad_token_id, layer_norm_eps=config.layer_norm_eps)
    exchange = _exchange_of(config)
    if exchange:
        data.update(pad_token_id=exchange[0], bos_token_id=exchange[1], **{EXCHANGED: list(exchange)})
    if config.id2label:  # run_classifier.py keeps labels outside the checkpoint; berta reads them back from here
        data["id2label"] = {str(i): label for i, label in sorted(config.id2label.items())}
    return data


def write_checkpoint(model: torch.nn.Module, tokenizer, output: str | Path) -> Path:
    """Write `model` as a Google-BERT-format checkpoint directory: bert_config.json, bert_model.ckpt.*,
    vocab.txt (every token by id) and berta's tokenizer files.

    Example:
        >>> model, tokenizer = berta.load("bert-base"), berta.Tokenizer.from_pretrained("bert-base")  # doctest: +SKIP
        >>> write_checkpoint(model, tokenizer, "bert-base-tf")  # doctest: +SKIP
    """
    tensorflow = _tensorflow()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    variables = _tf_variables(model)
    names = sorted(variables)
    # SaveV2 writes exactly these names (a TF1-style, name-keyed checkpoint), with no object graph.
    tensorflow.raw_ops.SaveV2(prefix=str(output / CHECKPOINT_NAME), tensor_names=names,
                              shape_and_slices=[""] * len(names),
                              tensors=[tensorflow.constant(variables[name]) for name in names])
    atomic_write_text(output / "checkpoint", f'model_checkpoint_path: "{CHECKPOINT_NAME}"\n'
                                             f'all_model_checkpoint_paths: "{CHECKPOINT_NAME}"\n')
    atomic_write_json(output / CONFIG_NAME, _bert_config(model.config))
    tokenizer.save(output)
    tokens = [tokenizer.id_to_token(i) for i in range(len(tokenizer))]
    exchange = _exchange_of(model.config)
    if exchange:  # the written tokenizer speaks the checkpoint's ids
        _exchange_tokenizer_ids(output, exchange)
        tokens[exchange[0]], tokens[exchange[1]] = tokens[exchange[1]], tokens[exchange[0]]
    atomic_write_text(output / VOCAB_NAME, "\n".join(tokens) + "\n")
    return output
