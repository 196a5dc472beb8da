"""`berta fill-mask`: the most likely tokens for each mask token of a text, with their probabilities.

    berta fill-mask --model runs/tiny/model "The capital of France is <mask>."
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class FillMaskSettings:
    """Settings of `berta fill-mask`."""

    texts: list[str] = field(metadata={"positional": True, "help": "texts holding the mask token (<mask>, [MASK])"})
    model: str = field(metadata={"help": "model directory with its tokenizer (a pretraining run's model/)"})
    top_k: int = field(default=5, metadata={"help": "fillers shown per mask"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:1, ..."})


@dataclass
class Filler:
    """One candidate for one mask: the token's text, its id and its probability."""

    token: str
    token_id: int
    probability: float


def top_fillers(model: nn.Module, tokenizer: Any, texts: list[str], top_k: int = 5) -> list[list[list[Filler]]]:
    """For each text, for each of its mask tokens (left to right), the `top_k` most probable fillers.

    Example:
        >>> top_fillers(berta.load("runs/tiny/model"), tok, ["Paris is the <mask> of France."])[0][0][0]
        Filler(token='capital', token_id=3139, probability=0.41)
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    input_ids = batch["input_ids"]  # (batch, seq)
    masked_positions = input_ids.eq(tokenizer.mask_id)  # (batch, seq)
    for row, text in enumerate(texts):
        if not bool(masked_positions[row].any()):
            raise ValueError(f"text {row + 1} ({text!r}) holds no mask token; write {tokenizer.mask_token} where "
                             "a word should be predicted")
    device = next(model.parameters()).device
    inputs = {"input_ids": input_ids, "attention_mask": batch["attention_mask"], "masked_positions": masked_positions}
    if "token_type_ids" in batch and model.config.type_vocab_size > 0:
        inputs["token_type_ids"] = batch["token_type_ids"]
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits  # (masked, vocab), row-major
    probabilities, ids = logits.float().softmax(dim=-1).topk(min(top_k, logits.shape[-1]), dim=-1)
    rows = masked_positions.nonzero()[:, 0].tolist()
    results: list[list[list[Filler]]] = [[] for _ in texts]
    for mask, row in enumerate(rows):
        results[row].append([
            Filler(tokenizer.decode([token_id]).strip(), token_id, probability)
            for token_id, probability in zip(ids[mask].tolist(), probabilities[mask].tolist(), strict=True)
        ])
    return results


def fill_mask(settings: FillMaskSettings) -> list[list[list[Filler]]]:
    """Print the most likely fillers of each mask token in the texts, with probabilities.

    Example:
        >>> fill_mask(FillMaskSettings(texts=["The capital of France is <mask>."], model="runs/tiny/model"))
    """
    import berta
    from berta.tokenizer import Tokenizer

    model = berta.load(settings.model, task="masked-lm", device=settings.device)
    tokenizer = Tokenizer.from_pretrained(settings.model)
    results = top_fillers(model, tokenizer, list(settings.texts), settings.top_k)
    for text, masks in zip(settings.texts, results, strict=True):
        print(text)
        for number, fillers in enumerate(masks, start=1):
            if len(masks) > 1:
                print(f"  mask {number}:")
            for rank, filler in enumerate(fillers, start=1):
                print(f"  {rank:>3}. {filler.token!r:<20} {filler.probability:.4f}")
    return results
