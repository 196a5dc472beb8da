"""Every random choice berta makes from a seed: one generator function for data orders and masks, and the
process-wide random states (python, numpy, torch, CUDA) that dropout and initialisation draw from.

A draw is a pure function of its keys, e.g. (seed, epoch) for an epoch's order and (seed, epoch, index) for a
sample's mask, so it is the same in any process, on any machine, after any resume.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seeded_generator(seed: int, *keys: int) -> np.random.Generator:
    """A numpy generator that is a pure function of (seed, *keys): the one source of data orders and masks.

    Example:
        >>> float(seeded_generator(1, 0).random()) == float(seeded_generator(1, 0).random())
        True
        >>> seeded_generator(1, 0).permutation(5).tolist() != seeded_generator(1, 1).permutation(5).tolist()
        True
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *keys])))


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's process-wide generators (dropout, initialisation)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def random_states() -> dict[str, Any]:
    """The process-wide random states, as tensors and plain values only (loadable with `weights_only=True`).

    Example:
        >>> states = random_states(); _ = torch.rand(3); set_random_states(states)
    """
    version, internal, gauss = random.getstate()
    bit_generator, key, position, has_gauss, cached = np.random.get_state(legacy=True)
    states: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"bit_generator": bit_generator, "key": torch.from_numpy(key.astype(np.int64)),
                  "position": int(position), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict[str, Any]) -> None:
    """Restore what `random_states` returned."""
    python = states["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    numpy = states["numpy"]
    np.random.set_state((numpy["bit_generator"], numpy["key"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
