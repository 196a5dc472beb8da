"""berta.keras: the Keras 3 encoder built from a berta directory equals the PyTorch model (the reference) within
1e-5 in fp32 for BERT, RoBERTa and XLM-R configurations, right and left padding, and trains with model.fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import berta


@pytest.fixture(scope="module")
def keras_module():
    import berta.keras

    return berta.keras


def random_directory(tmp_path, family: str, task: str, seed: int):
    base = dict(vocab_size=300, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                # a wide initialisation puts the feed-forward inputs where exact and tanh GELU differ by > 1e-5
                initializer_range=0.2, id2label={0: "no", 1: "yes", 2: "maybe"} if task == "classification" else {})
    if family == "bert":
        config = berta.EncoderConfig(family="bert", max_positions=40, **base)
    else:
        config = berta.EncoderConfig.preset("tiny").replace(family=family, max_positions=34, **base)
    torch.manual_seed(seed)
    model = berta.create(config, task).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    directory = tmp_path / f"{family}-{task}"
    model.save(directory)
    return model, directory


def batch(config, padding_side: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    lengths = [9, 6, 2]
    ids = torch.full((3, 9), config.pad_token_id)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for row, length in enumerate(lengths):
        span = slice(0, length) if padding_side == "right" else slice(9 - length, 9)
        ids[row, span] = torch.randint(4, config.vocab_size, (length,), generator=generator)
        mask[row, span] = 1
    features = {"input_ids": ids, "attention_mask": mask}
    if config.type_vocab_size >= 2:
        features["token_type_ids"] = (torch.arange(9)[None, :] >= 5).long() * mask
    return features


CASES = [("bert", "encoder"), ("bert", "classification"), ("bert", "masked-lm"), ("roberta", "masked-lm"),
         ("roberta", "classification"), ("xlm-roberta", "encoder")]


@pytest.mark.parametrize(("family", "task"), CASES)
def test_keras_equals_pytorch(keras_module, tmp_path, family, task):
    torch_model, directory = random_directory(tmp_path, family, task, seed=len(family) + len(task))
    model = keras_module.load(directory)
    for side in ("right", "left"):
        features = batch(torch_model.config, side)
        with torch.no_grad():
            expected = torch_model(**features)
        hidden = expected.last_hidden_state
        got = model({name: value.numpy().astype("int32") for name, value in features.items()})
        real = features["attention_mask"].bool().numpy()
        assert np.abs(np.asarray(got["last_hidden_state"]) - hidden.numpy())[real].max() < 1e-5, side
        if task == "masked-lm":
            assert np.abs(np.asarray(got["logits"]) - expected.logits.numpy())[real].max() < 1e-5, side
        elif task == "classification":
            assert np.abs(np.asarray(got["logits"]) - expected.logits.numpy()).max() < 1e-5, side
        else:
            assert np.abs(np.asarray(got["pooler_output"]) - expected.pooler_output.numpy()).max() < 1e-5, side


def test_keras_model_trains_with_fit(keras_module, tmp_path):
    import keras

    keras.utils.set_random_seed(0)  # dropout masks and Adam: the same run on every machine
    _, directory = random_directory(tmp_path, "roberta", "classification", seed=3)
    model = keras_module.load(directory)
    features = batch(model.berta_config, "right", seed=1)
    x = {name: value.numpy().astype("int32") for name, value in features.items()}
    y = {"logits": np.array([0, 1, 2], dtype="int32")}
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
                  run_eagerly=True)  # no graph tracing: seconds less on a CPU
    before = model.evaluate(x, y, batch_size=3, verbose=0)  # inference mode: no dropout noise in the comparison
    model.fit(x, y, epochs=10, batch_size=3, verbose=0)
    after = model.evaluate(x, y, batch_size=3, verbose=0)
    before, after = (value[0] if isinstance(value, list) else value for value in (before, after))
    assert after < 0.5 * before, (before, after)
