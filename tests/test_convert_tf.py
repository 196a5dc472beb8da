"""berta convert --to tf / --from tf: Google BERT TF checkpoints. The exported checkpoint is read back with
TensorFlow's own `tf.train.load_checkpoint` and run through a TF forward pass written here (the reference); a
checkpoint saved by TensorFlow's TF1 `Saver` (optimizer slots included) imports exactly."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_sentencepiece
from safetensors.torch import load_file

import berta
from berta.checkpoints.convert import ConvertSettings, convert

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="module")
def tf():
    import tensorflow

    return tensorflow


def random_berta(config: berta.EncoderConfig, task: str, seed: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = berta.create(config, task, **kwargs).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


@pytest.fixture(scope="module")
def bert_directory(bert, tmp_path_factory) -> Path:
    """A random tiny BERT masked LM with MiniLM's WordPiece vocabulary, as a berta directory."""
    config = berta.EncoderConfig(family="bert", vocab_size=len(bert), hidden_size=32, num_layers=2, num_heads=4,
                                 intermediate_size=64, max_positions=40)
    directory = tmp_path_factory.mktemp("bert")
    random_berta(config, "masked-lm", seed=0).save(directory)
    bert.save(directory)
    return directory


@pytest.fixture(scope="module")
def roberta_directory(roberta, tmp_path_factory) -> Path:
    config = berta.EncoderConfig.preset("tiny").replace(hidden_size=32, intermediate_size=64, max_positions=34)
    directory = tmp_path_factory.mktemp("roberta")
    random_berta(config, "masked-lm", seed=1).save(directory)
    roberta.save(directory)
    return directory


@pytest.fixture(scope="module")
def xlmr_directory(tmp_path_factory) -> Path:
    """A random tiny XLM-R masked LM over a SentencePiece model trained here (fairseq's ids: pieces + 1)."""


    directory = tmp_path_factory.mktemp("xlmr")
    train_sentencepiece(directory)
    tokenizer = berta.Tokenizer.from_pretrained(directory)
    config = berta.EncoderConfig.preset("tiny").replace(family="xlm-roberta", vocab_size=len(tokenizer),
                                                        hidden_size=32, intermediate_size=64, max_positions=34)
    random_berta(config, "masked-lm", seed=2).save(directory)
    tokenizer.save(directory)
    return directory


def tf_forward(tf, prefix: str, config: dict, input_ids: np.ndarray, attention_mask: np.ndarray,
               token_type_ids: np.ndarray) -> np.ndarray:
    """BERT's encoder in TensorFlow ops over the checkpoint's variables, as Google's modeling.py computes it."""
    reader = tf.train.load_checkpoint(prefix)

    def v(name):
        return tf.constant(reader.get_tensor(name), dtype=tf.float64)

    eps = config.get("layer_norm_eps", 1e-12)

    def norm(x, name):
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) / tf.sqrt(variance + eps) * v(f"{name}/gamma") + v(f"{name}/beta")

    def dense(x, name):
        return tf.matmul(x, v(f"{name}/kernel")) + v(f"{name}/bias")

    batch, seq = input_ids.shape
    heads = config["num_attention_heads"]
    size = config["hidden_size"] // heads
    x = (tf.gather(v("bert/embeddings/word_embeddings"), input_ids) + v("bert/embeddings/position_embeddings")[:seq]
         + tf.gather(v("bert/embeddings/token_type_embeddings"), token_type_ids))
    x = norm(x, "bert/embeddings/LayerNorm")
    blocked = (1.0 - tf.constant(attention_mask, tf.float64))[:, None, None, :] * -1e9

    def split(t):
        return tf.transpose(tf.reshape(t, [batch, seq, heads, size]), [0, 2, 1, 3])

    for i in range(config["num_hidden_layers"]):
        layer = f"bert/encoder/layer_{i}/"
        q, k, value = (split(dense(x, layer + f"attention/self/{n}")) for n in ("query", "key", "value"))
        probabilities = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) / math.sqrt(size) + blocked)
        context = tf.reshape(tf.transpose(tf.matmul(probabilities, value), [0, 2, 1, 3]), [batch, seq, -1])
        x = norm(x + dense(context, layer + "attention/output/dense"), layer + "attention/output/LayerNorm")
        inner = dense(x, layer + "intermediate/dense")
        inner = 0.5 * inner * (1.0 + tf.math.erf(inner / math.sqrt(2.0)))  # exact GELU
        x = norm(x + dense(inner, layer + "output/dense"), layer + "output/LayerNorm")
    return x.numpy()


def features(tokenizer, texts, pairs=None):
    batch = tokenizer(texts, pairs, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta"])
def test_export_runs_in_tensorflow_and_round_trips(tf, family, bert_directory, roberta_directory, xlmr_directory,
                                                   tmp_path):
    source = {"bert": bert_directory, "roberta": roberta_directory, "xlm-roberta": xlmr_directory}[family]
    exported, back = tmp_path / "tf", tmp_path / "back"
    convert(ConvertSettings(from_format="hf", source=source, to_format="tf", output=exported))
    config = json.loads((exported / "bert_config.json").read_text())
    reader = tf.train.load_checkpoint(str(exported / "bert_model.ckpt"))
    shapes = reader.get_variable_to_shape_map()
    # name-keyed, Google BERT's names; no TF2 object-graph keys
    assert "bert/encoder/layer_1/attention/self/query/kernel" in shapes
    assert not any("OBJECT_CONFIG_JSON" in name or name.startswith("_CHECKPOINTABLE") for name in shapes)
    assert "cls/predictions/output_bias" in shapes
    model = berta.load(source)
    tokenizer = berta.Tokenizer.from_pretrained(source)
    if family == "bert":
        ids, mask = features(tokenizer, ["hello world", "a longer sentence than the first"], ["yes", "no it is"])
        types = tokenizer(["hello world", "a longer sentence than the first"], ["yes", "no it is"],
                          return_tensors="pt")["token_type_ids"]
    else:
        # RoBERTa4Keras layout: BERT positions 0.. read RoBERTa's rows 2..; one segment row
        assert config["max_position_embeddings"] == 32 and config["type_vocab_size"] == 1
        assert shapes["bert/embeddings/position_embeddings"] == [32, 32]
        assert config["layer_norm_eps"] == 1e-5 and config["model_type"] == family
        texts = ["Hello world!", "The quick brown fox jumps over the lazy dog."]
        if family == "xlm-roberta":
            texts = ["the lazy dog", "le chien saute par-dessus le renard"]
        ids, mask = features(tokenizer, texts)
        types = torch.zeros_like(ids)
    # the tokenizer written beside the checkpoint speaks its ids: for RoBERTa <pad> = 0 and <s> = 1 (bert4keras
    # takes id 0 for padding), exchanged back by berta on import
    tf_ids, tf_mask = ids, mask
    if family != "bert":
        tf_ids, tf_mask = features(berta.Tokenizer.from_pretrained(exported), texts)
    exchanged = ids.clone()
    if family != "bert":
        exchanged[ids == 0], exchanged[ids == 1] = 1, 0
        assert config["pad_token_id"] == 0 and config["berta_exchanged_ids"] == [0, 1]
    assert torch.equal(tf_ids, exchanged) and torch.equal(tf_mask, mask)
    with torch.no_grad():
        expected = model.encoder(ids, mask, types if family == "bert" else None).last_hidden_state.numpy()
    got = tf_forward(tf, str(exported / "bert_model.ckpt"), config, tf_ids.numpy(), mask.numpy(), types.numpy())
    real = mask.bool().numpy()
    assert np.abs(got - expected)[real].max() < 1e-5
    convert(ConvertSettings(from_format="tf", source=exported, to_format="hf", output=back))
    a, b = load_file(source / "model.safetensors"), load_file(back / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)
    text = "the lazy dog says Hello"
    assert berta.Tokenizer.from_pretrained(back).encode(text).ids == tokenizer.encode(text).ids


def save_with_tf1_saver(tf, directory: Path, variables: dict[str, np.ndarray]) -> None:
    """What Google's run_pretraining.py leaves: a TF1 graph's variables saved by tf.compat.v1.train.Saver."""
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        made = {name: tf.compat.v1.get_variable(name, initializer=tf.constant(value)) for name, value in
                variables.items()}
        saver = tf.compat.v1.train.Saver(made)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(directory / "model.ckpt"), global_step=20)


def google_variables(rng: np.random.Generator, vocab: int, hidden: int = 16, layers: int = 2, inner: int = 32):
    def r(*shape):
        return rng.normal(0, 0.05, shape).astype(np.float32)

    variables = {
        "bert/embeddings/word_embeddings": r(vocab, hidden), "bert/embeddings/token_type_embeddings": r(2, hidden),
        "bert/embeddings/position_embeddings": r(24, hidden),
        "bert/embeddings/LayerNorm/gamma": 1 + r(hidden), "bert/embeddings/LayerNorm/beta": r(hidden),
        "bert/pooler/dense/kernel": r(hidden, hidden), "bert/pooler/dense/bias": r(hidden),
        "cls/predictions/transform/dense/kernel": r(hidden, hidden),
        "cls/predictions/transform/dense/bias": r(hidden),
        "cls/predictions/transform/LayerNorm/gamma": 1 + r(hidden),
        "cls/predictions/transform/LayerNorm/beta": r(hidden), "cls/predictions/output_bias": r(vocab),
        "cls/seq_relationship/output_weights": r(2, hidden), "cls/seq_relationship/output_bias": r(2),
        "global_step": np.array(20, dtype=np.int64),
    }
    for i in range(layers):
        p = f"bert/encoder/layer_{i}/"
        for name in ("attention/self/query", "attention/self/key", "attention/self/value", "attention/output/dense"):
            variables[f"{p}{name}/kernel"], variables[f"{p}{name}/bias"] = r(hidden, hidden), r(hidden)
        variables[f"{p}intermediate/dense/kernel"] = r(hidden, inner)
        variables[f"{p}intermediate/dense/bias"] = r(inner)
        variables[f"{p}output/dense/kernel"], variables[f"{p}output/dense/bias"] = r(inner, hidden), r(hidden)
        for name in ("attention/output/LayerNorm", "output/LayerNorm"):
            variables[f"{p}{name}/gamma"], variables[f"{p}{name}/beta"] = 1 + r(hidden), r(hidden)
    variables["bert/embeddings/word_embeddings/adam_m"] = r(vocab, hidden)  # an optimizer slot
    variables["bert/embeddings/word_embeddings/adam_v"] = r(vocab, hidden) ** 2
    return variables


@pytest.fixture(scope="module")
def google_checkpoint(tf, tmp_path_factory):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "the", "cat", "sat", "##s", "on", "mat"]
    variables = google_variables(np.random.default_rng(0), len(vocab))
    directory = tmp_path_factory.mktemp("google")
    save_with_tf1_saver(tf, directory, variables)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = {"vocab_size": len(vocab), "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 32, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 24, "type_vocab_size": 2,
              "initializer_range": 0.02}
    (directory / "bert_config.json").write_text(json.dumps(config))
    return directory, variables


def test_checkpoint_saved_by_tensorflow_imports_exactly(google_checkpoint, tmp_path, caplog):
    directory, variables = google_checkpoint
    out = tmp_path / "berta"
    with caplog.at_level("WARNING"):
        convert(ConvertSettings(from_format="tf", source=directory, to_format="hf", output=out,
                                sentences=["hello world", "the cats sat on the mat"]))
    assert "skipped 5 variables" in caplog.text and "adam_m" in caplog.text and "global_step" in caplog.text
    tensors = load_file(out / "model.safetensors")
    assert np.array_equal(tensors["bert.encoder.layer.1.intermediate.dense.weight"].numpy(),
                          variables["bert/encoder/layer_1/intermediate/dense/kernel"].T)
    assert np.array_equal(tensors["cls.predictions.bias"].numpy(), variables["cls/predictions/output_bias"])
    assert np.array_equal(tensors["bert.embeddings.position_embeddings.weight"].numpy(),
                          variables["bert/embeddings/position_embeddings"])
    model = berta.load(out)
    assert model.task == "masked-lm" and model.config.layer_norm_eps == 1e-12
    assert berta.Tokenizer.from_pretrained(out).encode("hello cats").ids == [2, 5, 8, 10, 3]


def test_missing_variable_is_named_and_nothing_written(tf, google_checkpoint, tmp_path):
    directory, variables = google_checkpoint
    broken = tmp_path / "broken"
    kept = {k: v for k, v in variables.items() if k != "bert/encoder/layer_1/output/dense/kernel"}
    save_with_tf1_saver(tf, broken, kept)
    for name in ("vocab.txt", "bert_config.json"):
        (broken / name).write_bytes((directory / name).read_bytes())
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"broken/model\.ckpt-20: variable bert/encoder/layer_1/output/dense/kernel "
                                         r"is missing"):
        convert(ConvertSettings(from_format="tf", source=broken, to_format="hf", output=out))
    assert not out.exists()


def test_bert_classifier_round_trips_with_run_classifier_names(tf, bert, tmp_path):
    """BERT's classifier goes out as run_classifier.py's output_weights (num_labels, hidden) / output_bias."""
    config = berta.EncoderConfig(family="bert", vocab_size=len(bert), hidden_size=32, num_layers=2, num_heads=4,
                                 intermediate_size=64, max_positions=40, id2label={0: "neg", 1: "neutral", 2: "pos"})
    source, exported, back = tmp_path / "source", tmp_path / "tf", tmp_path / "back"
    model = random_berta(config, "classification", seed=4)
    model.save(source)
    bert.save(source)
    convert(ConvertSettings(from_format="hf", source=source, to_format="tf", output=exported))
    reader = tf.train.load_checkpoint(str(exported / "bert_model.ckpt"))
    weights = reader.get_tensor("output_weights")
    assert weights.shape == (3, 32)
    assert np.array_equal(weights, model.head.classifier.weight.detach().numpy())
    assert "bert/pooler/dense/kernel" in reader.get_variable_to_shape_map()
    convert(ConvertSettings(from_format="tf", source=exported, to_format="hf", output=back))
    a, b = load_file(source / "model.safetensors"), load_file(back / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert berta.load(back).task == "classification"
    assert berta.load(back).config.id2label == {0: "neg", 1: "neutral", 2: "pos"}
