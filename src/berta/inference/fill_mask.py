"""`berta fill-mask`: the most likely tokens for each mask token of a text, with their probabilities.

    berta fill-mask --model runs/tiny/model "The capital of France is <mask>."
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FillMaskSettings:
    """Settings of `berta fill-mask`."""

    texts: list[str] = field(metadata={"positional": True, "help": "texts holding the mask token (<mask>, [MASK])"})
    model: str = field(metadata={"help": "model directory with its tokenizer (a pretraining run's model/)"})
    top_k: int = field(default=5, metadata={"min": 1, "help": "fillers shown per mask"})
    device: str = field(default="auto", metadata={"help": "auto (GPU when there is one), cpu, cuda, cuda:1, ..."})


def fill_mask(settings: FillMaskSettings) -> list[list[list[dict[str, Any]]]]:
    """Print the most likely fillers of each mask token in the texts, with probabilities.

    The predictions are `berta.pipeline(model).fill_mask(texts, top_k)`'s (the semantics of `transformers`'
    fill-mask pipeline); this job prints them.

    Example:
        >>> settings = FillMaskSettings(texts=["The capital of France is <mask>."], model="runs/tiny/model")
        >>> fill_mask(settings)  # doctest: +SKIP
    """
    from berta.inference.pipeline import pipeline

    results = pipeline(settings.model, device=settings.device).fill_mask(list(settings.texts), settings.top_k)
    for text, masks in zip(settings.texts, results, strict=True):
        print(text)
        for number, fillers in enumerate(masks, start=1):
            if len(masks) > 1:
                print(f"  mask {number}:")
            for rank, filler in enumerate(fillers, start=1):
                # The token as text with its leading space (' the', as transformers shows it): stripping it would
                # show a word piece and a whole word alike, and a lone space token as ''.
                print(f"  {rank:>3}. {filler['token_str']!r:<20} {filler['score']:.4f}")
    return results
