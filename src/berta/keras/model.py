"""The Keras 3 encoder: Embeddings -> Layer x N -> heads, mirroring `berta.model` (see the package docstring).

Weights are copied from a berta model's Hugging Face-named tensors (`state_for_saving`) by each layer's `assign`,
which names the tensors it reads — the name table, written where the variables are made. Dense kernels are
(in, out) in Keras, the transpose of PyTorch's (out, in) weights.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from berta.config import EncoderConfig

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
try:
    import keras
    from keras import ops
except ImportError:  # pragma: no cover - the message is the point
    raise ImportError("berta.keras needs Keras 3 and TensorFlow: pip install 'berta[tf]'") from None

if keras.backend.backend() != "tensorflow":
    raise ImportError(f"berta.keras runs on Keras' TensorFlow backend; KERAS_BACKEND is {keras.backend.backend()!r}")

_TASKS = ("encoder", "masked-lm", "classification")


def _activation(name: str):
    if name == "gelu":  # BERT and RoBERTa were trained with the exact (erf) GELU; Keras' default is tanh
        return lambda x: keras.activations.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: keras.activations.gelu(x, approximate=True)
    if name == "relu":
        return keras.activations.relu
    if name == "silu":
        return keras.activations.silu
    raise ValueError(f"activation {name!r} is not supported")


def _dense(layer: keras.layers.Dense, tensors: dict[str, np.ndarray], name: str) -> None:
    layer.kernel.assign(tensors[f"{name}.weight"].T)
    layer.bias.assign(tensors[f"{name}.bias"])


def _norm(layer: keras.layers.LayerNormalization, tensors: dict[str, np.ndarray], name: str) -> None:
    layer.gamma.assign(tensors[f"{name}.weight"])
    layer.beta.assign(tensors[f"{name}.bias"])


class Embeddings(keras.layers.Layer):
    """words + positions (+ token types) -> LayerNorm -> dropout."""

    def __init__(self, config: EncoderConfig, **kwargs: Any):
        super().__init__(**kwargs)
        self.config = config
        self.words = keras.layers.Embedding(config.vocab_size, config.hidden_size, name="word_embeddings")
        self.positions = keras.layers.Embedding(config.max_positions, config.hidden_size, name="position_embeddings")
        self.token_types = (keras.layers.Embedding(config.type_vocab_size, config.hidden_size,
                                                   name="token_type_embeddings") if config.type_vocab_size else None)
        self.norm = keras.layers.LayerNormalization(epsilon=config.layer_norm_eps, name="LayerNorm")
        self.dropout = keras.layers.Dropout(config.hidden_dropout)

    def build(self, *shapes: Any) -> None:
        for table in (self.words, self.positions, self.token_types):
            if table is not None:
                table.build((None, None))
        self.norm.build((None, None, self.config.hidden_size))

    def call(self, input_ids, attention_mask, token_type_ids=None, training=False):
        mask = ops.cast(attention_mask, "int32")
        # berta's rule: real tokens numbered from position_offset at each row's first one, padding offset - 1
        positions = ops.maximum(ops.cumsum(mask, axis=1) * mask + (self.config.position_offset - 1), 0)
        hidden = self.words(input_ids) + self.positions(positions)  # (batch, seq, hidden)
        if self.token_types is not None:
            types = ops.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            hidden = hidden + self.token_types(types)
        return self.dropout(self.norm(hidden), training=training)

    def assign(self, tensors: dict[str, np.ndarray], prefix: str) -> None:
        self.words.embeddings.assign(tensors[f"{prefix}embeddings.word_embeddings.weight"])
        self.positions.embeddings.assign(tensors[f"{prefix}embeddings.position_embeddings.weight"])
        if self.token_types is not None:
            self.token_types.embeddings.assign(tensors[f"{prefix}embeddings.token_type_embeddings.weight"])
        _norm(self.norm, tensors, f"{prefix}embeddings.LayerNorm")


class TransformerLayer(keras.layers.Layer):
    """Self-attention and feed-forward, each `norm(x + dropout(sublayer(x)))` (post-LayerNorm)."""

    def __init__(self, config: EncoderConfig, **kwargs: Any):
        super().__init__(**kwargs)
        size = config.hidden_size
        self.num_heads, self.head_size = config.num_heads, config.head_size
        self.query, self.key, self.value = (keras.layers.Dense(size, name=n) for n in ("query", "key", "value"))
        self.attention_output = keras.layers.Dense(size, name="attention_output")
        self.attention_norm = keras.layers.LayerNormalization(epsilon=config.layer_norm_eps, name="attention_norm")
        self.intermediate = keras.layers.Dense(config.intermediate_size, name="intermediate")
        self.output_dense = keras.layers.Dense(size, name="output")
        self.output_norm = keras.layers.LayerNormalization(epsilon=config.layer_norm_eps, name="output_norm")
        self.activation = _activation(config.activation)
        self.attention_dropout = keras.layers.Dropout(config.attention_dropout)
        self.dropout = keras.layers.Dropout(config.hidden_dropout)
        self.sizes = (config.hidden_size, config.intermediate_size)

    def build(self, *shapes: Any) -> None:
        size, inner = self.sizes
        for layer in (self.query, self.key, self.value, self.attention_output, self.intermediate):
            layer.build((None, None, size))
        self.output_dense.build((None, None, inner))
        self.attention_norm.build((None, None, size))
        self.output_norm.build((None, None, size))

    def _heads(self, x):
        batch, seq = ops.shape(x)[0], ops.shape(x)[1]
        return ops.transpose(ops.reshape(x, (batch, seq, self.num_heads, self.head_size)), (0, 2, 1, 3))

    def call(self, hidden, attention_mask, training=False):
        # padding keys get a large negative score (berta masks them in scaled_dot_product_attention)
        blocked = (1.0 - ops.cast(attention_mask, hidden.dtype))[:, None, None, :] * -1e9
        query, key, value = (self._heads(projection(hidden)) for projection in (self.query, self.key, self.value))
        scores = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2))) / math.sqrt(self.head_size) + blocked
        probabilities = self.attention_dropout(ops.softmax(scores, axis=-1), training=training)
        context = ops.transpose(ops.matmul(probabilities, value), (0, 2, 1, 3))  # (batch, seq, heads, head_size)
        context = ops.reshape(context, ops.shape(hidden))
        hidden = self.attention_norm(hidden + self.dropout(self.attention_output(context), training=training))
        inner = self.output_dense(self.activation(self.intermediate(hidden)))
        return self.output_norm(hidden + self.dropout(inner, training=training))

    def assign(self, tensors: dict[str, np.ndarray], prefix: str) -> None:
        for layer, name in ((self.query, "query"), (self.key, "key"), (self.value, "value")):
            _dense(layer, tensors, f"{prefix}attention.self.{name}")
        _dense(self.attention_output, tensors, f"{prefix}attention.output.dense")
        _norm(self.attention_norm, tensors, f"{prefix}attention.output.LayerNorm")
        _dense(self.intermediate, tensors, f"{prefix}intermediate.dense")
        _dense(self.output_dense, tensors, f"{prefix}output.dense")
        _norm(self.output_norm, tensors, f"{prefix}output.LayerNorm")


class MaskedLMHead(keras.layers.Layer):
    """dense -> activation -> LayerNorm -> decoder tied to the word embeddings, plus its own bias."""

    def __init__(self, config: EncoderConfig, words: keras.layers.Embedding, **kwargs: Any):
        super().__init__(**kwargs)
        self.config, self.words = config, words
        self.dense = keras.layers.Dense(config.hidden_size, name="dense")
        self.norm = keras.layers.LayerNormalization(epsilon=config.layer_norm_eps, name="layer_norm")
        self.activation = _activation(config.activation)

    def build(self, *shapes: Any) -> None:
        self.dense.build((None, None, self.config.hidden_size))
        self.norm.build((None, None, self.config.hidden_size))
        self.bias = self.add_weight(shape=(self.config.vocab_size,), initializer="zeros", name="bias")

    def call(self, hidden):
        transformed = self.norm(self.activation(self.dense(hidden)))
        return ops.matmul(transformed, ops.transpose(self.words.embeddings)) + self.bias  # (batch, seq, vocab)

    def assign(self, tensors: dict[str, np.ndarray], names: dict[str, str]) -> None:
        _dense(self.dense, tensors, names["dense"])
        _norm(self.norm, tensors, names["norm"])
        self.bias.assign(tensors[names["bias"]])


def _first_tokens(hidden, attention_mask):
    """The first real token of each row, wherever padding puts it: (batch, hidden)."""
    first = ops.argmax(ops.cast(attention_mask, "int32"), axis=1)  # (batch,)
    return ops.take_along_axis(hidden, ops.reshape(first, (-1, 1, 1)), axis=1)[:, 0]


def build(config: EncoderConfig, task: str = "encoder") -> keras.Model:
    """A Keras model for `config` and `task` ("encoder", "masked-lm", "classification"), randomly initialised.

    Inputs: `input_ids`, `attention_mask` (and `token_type_ids` when type_vocab_size >= 2), int32 (batch, seq).
    Outputs: a dict with `last_hidden_state` (padding rows zero), `pooler_output` (BERT's encoder and
    classifier) and `logits` for the heads.

    Example:
        >>> model = build(EncoderConfig.preset("tiny"), "classification")  # doctest: +SKIP
    """
    if task not in _TASKS:
        raise ValueError(f"berta.keras builds {_TASKS}, not {task!r}")
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if config.type_vocab_size >= 2 else [])
    inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name) for name in names}
    embeddings = Embeddings(config, name="embeddings")
    layers = [TransformerLayer(config, name=f"layer_{i}") for i in range(config.num_layers)]
    mask = inputs["attention_mask"]
    hidden = embeddings(inputs["input_ids"], mask, inputs.get("token_type_ids"))
    for layer in layers:
        hidden = layer(hidden, mask)
    hidden = hidden * ops.cast(mask, "float32")[..., None]  # (batch, seq, hidden), padding rows zero
    outputs = {"last_hidden_state": hidden}
    bert_pooler = config.pooler_classifier and task in ("encoder", "classification")
    if bert_pooler or task == "encoder":
        pooler = keras.layers.Dense(config.hidden_size, activation="tanh", name="pooler")
        outputs["pooler_output"] = pooler(_first_tokens(hidden, mask))
    dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout
    if task == "masked-lm":
        outputs["logits"] = MaskedLMHead(config, embeddings.words, name="lm_head")(hidden)
    elif task == "classification":
        if config.num_labels < 1:
            raise ValueError("a classification model needs labels: set id2label in the config")
        if config.pooler_classifier:  # BERT: dropout(pooler output) -> linear
            pooled = keras.layers.Dropout(dropout)(outputs["pooler_output"])
            outputs["logits"] = keras.layers.Dense(config.num_labels, name="classifier")(pooled)
        else:  # RoBERTa: first token -> dropout -> dense -> tanh -> dropout -> out_proj
            first = keras.layers.Dropout(dropout)(_first_tokens(hidden, mask))
            first = keras.layers.Dense(config.hidden_size, activation="tanh", name="classifier_dense")(first)
            first = keras.layers.Dropout(dropout)(first)
            outputs["logits"] = keras.layers.Dense(config.num_labels, name="classifier_out_proj")(first)
    model = keras.Model(inputs=inputs, outputs=outputs, name=f"berta_{config.family}_{task}".replace("-", "_"))
    model.berta_config, model.berta_task = config, task
    return model


def _assign(model: keras.Model, tensors: dict[str, np.ndarray]) -> None:
    """Copy a berta model's Hugging Face-named tensors (`state_for_saving`) into a model from `build`."""
    config: EncoderConfig = model.berta_config
    task: str = model.berta_task
    prefix = "" if task == "encoder" else config.hf_prefix + "."
    model.get_layer("embeddings").assign(tensors, prefix)
    for i in range(config.num_layers):
        model.get_layer(f"layer_{i}").assign(tensors, f"{prefix}encoder.layer.{i}.")
    if any(layer.name == "pooler" for layer in model.layers):
        _dense(model.get_layer("pooler"), tensors, f"{prefix}pooler.dense")
    if task == "masked-lm":
        bert = config.family == "bert"
        names = {"dense": "cls.predictions.transform.dense" if bert else "lm_head.dense",
                 "norm": "cls.predictions.transform.LayerNorm" if bert else "lm_head.layer_norm",
                 "bias": "cls.predictions.bias" if bert else "lm_head.bias"}
        model.get_layer("lm_head").assign(tensors, names)
    elif task == "classification" and config.pooler_classifier:
        _dense(model.get_layer("classifier"), tensors, "classifier")
    elif task == "classification":
        _dense(model.get_layer("classifier_dense"), tensors, "classifier.dense")
        _dense(model.get_layer("classifier_out_proj"), tensors, "classifier.out_proj")


def load(path: str | Path, task: str | None = None) -> keras.Model:
    """A Keras model with the weights of a berta directory (the task its config names, or `task`).

    Example:
        >>> model = load("runs/sst2/model")  # doctest: +SKIP
        >>> model({"input_ids": ids, "attention_mask": mask})["logits"].shape
        TensorShape([2, 2])
    """
    from berta.checkpoints.hf import load as load_torch
    from berta.checkpoints.hf import state_for_saving

    torch_model = load_torch(path, task=task)
    task = getattr(torch_model, "task", "encoder")
    if task not in _TASKS:
        raise ValueError(f"{path}: a {task} model; berta.keras builds {_TASKS}")
    if task == "encoder" and torch_model.pooler is None:
        raise ValueError(f"{path}: an encoder without a pooler is not supported by berta.keras")
    model = build(torch_model.config, task)
    tensors = {name: tensor.detach().float().cpu().numpy() for name, tensor in state_for_saving(torch_model).items()}
    _assign(model, tensors)
    return model
