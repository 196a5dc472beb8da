"""berta's encoder as Keras 3 layers (TensorFlow backend), built from a berta directory.

    >>> model = berta.keras.load("runs/sst2/model")  # doctest: +SKIP
    >>> model({"input_ids": ids, "attention_mask": mask})["logits"]

The PyTorch model (`berta.model`) is the reference; this is the same computation for Keras users, with outputs
equal within 1e-5 in fp32 (tests/test_keras.py): embeddings -> N x post-LayerNorm layers -> heads, positions by
berta's rule (numbered from each row's first real token, so left padding works), exact GELU (Keras' `gelu`
defaults to the tanh approximation), padding rows of `last_hidden_state` zero. Needs `pip install 'berta[tf]'`.
"""

from __future__ import annotations

from berta.keras.model import build, load

__all__ = ["build", "load"]
