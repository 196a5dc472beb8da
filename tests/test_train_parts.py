"""The parts the loop is made of, on their own: a model factory trains as the model does, one device resolution,
and one seeded generator behind epoch orders, language sampling and masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_loop import assert_same_weights, quiet, toy_collate, toy_data, toy_model, weights

from berta.data.masking import LanguageSampler, sample_generator
from berta.device import resolve_device
from berta.seeding import seeded_generator
from berta.train import train
from berta.train.batches import epoch_order


def test_a_model_factory_trains_exactly_as_the_model(tmp_path: Path) -> None:
    settings = quiet(batch_size=4, max_steps=3)
    model = toy_model()
    train(model, settings, toy_data(), toy_collate, tmp_path / "module")
    result = train(toy_model, settings, toy_data(), toy_collate, tmp_path / "factory")
    assert result.model is not None
    assert_same_weights(weights(result.model), weights(model), 0.0)


def test_one_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto", local_rank=0) == expected
    with pytest.raises(ValueError, match=r"--device 'tpu': expected auto, cpu, cuda, cuda:N or mps"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"--device cuda:1: CUDA is not available on this machine"):
            resolve_device("cuda:1")


def test_orders_and_masks_come_from_one_seeded_generator() -> None:
    assert epoch_order(10, seed=3, epoch=2, shuffle=True) == seeded_generator(3, 2).permutation(10).tolist()
    assert epoch_order(4, seed=3, epoch=2, shuffle=False) == [0, 1, 2, 3]
    assert sample_generator(3, 2, 7).random() == seeded_generator(3, 2, 7).random()
    languages = ["en"] * 6 + ["fr"] * 2
    sampler = LanguageSampler(languages, alpha=0.3, seed=3)
    drawn = seeded_generator(3, 1).choice(2, size=8, p=[sampler.probabilities[c] for c in sampler.languages])
    indices = sampler.indices(1)
    assert np.array_equal([languages[i] == "fr" for i in indices], [sampler.languages[k] == "fr" for k in drawn])
