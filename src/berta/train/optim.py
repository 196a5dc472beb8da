"""The optimizer and its schedule: AdamW with RoBERTa's settings over parameter groups (no weight decay on biases
and LayerNorm weights, optional layer-wise learning-rate decay), linear warm-up then linear, polynomial or
constant decay."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from berta.train.distributed import clean_name, unwrap
from berta.train.settings import TrainSettings


def layer_depth(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise lr decay: embeddings 0, layer i -> i + 1, heads num_layers + 1.

    Example:
        >>> layer_depth("encoder.layers.3.attention.qkv.weight", 12)
        4
    """
    parts = name.split(".")
    if "embeddings" in parts:
        return 0
    if "layers" in parts:
        index = parts.index("layers")
        if index + 1 < len(parts) and parts[index + 1].isdigit():
            return int(parts[index + 1]) + 1
    return num_layers + 1


def parameter_groups(model: nn.Module, settings: TrainSettings) -> list[dict[str, Any]]:
    """AdamW parameter groups: no weight decay on biases and LayerNorm weights (as BERT and RoBERTa), and with
    `layer_decay` < 1 one group per depth with lr x decay^(num_layers + 1 - depth) (ELECTRA, BEiT).

    Example:
        >>> groups = parameter_groups(model, TrainSettings())  # doctest: +SKIP
        >>> torch.optim.AdamW(groups)  # doctest: +SKIP
    """
    no_decay = set()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm | nn.GroupNorm):
            no_decay.update(id(parameter) for parameter in module.parameters(recurse=False))
    config = getattr(unwrap(model), "config", None)
    num_layers = int(getattr(config, "num_layers", 0))
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        clean = clean_name(name)
        decay = not (id(parameter) in no_decay or clean.endswith("bias") or clean.split(".")[-1] == "bias")
        depth = layer_depth(clean, num_layers) if settings.layer_decay < 1.0 else 0
        scale = settings.layer_decay ** (num_layers + 1 - depth) if settings.layer_decay < 1.0 else 1.0
        weight_decay = settings.weight_decay if decay else 0.0
        group = groups.setdefault(
            (depth, decay), {"params": [], "names": [], "lr": settings.lr * scale, "weight_decay": weight_decay}
        )
        group["params"].append(parameter)
        group["names"].append(clean)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW over `parameter_groups`, with RoBERTa's betas and epsilon from `settings`."""
    groups = parameter_groups(model, settings)
    for group in groups:
        group.pop("names")
    betas = (settings.adam_beta1, settings.adam_beta2)
    parameters = [p for group in groups for p in group["params"]]
    # The fused kernel updates each tensor in one pass instead of ~8 elementwise passes: on CPU, where the
    # optimizer step over the embedding matrix is a large share of a small model's step, it is much faster.
    fused = bool(parameters) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters)
    return torch.optim.AdamW(groups, lr=settings.lr, betas=betas, eps=settings.adam_eps, fused=fused or None)


def lr_factor(step: int, total_steps: int, warmup_steps: int, settings: TrainSettings) -> float:
    """The learning rate at `step` (optimizer steps done so far) as a fraction of the peak.

    Linear warm-up from 0, then linear, polynomial (fairseq `polynomial_decay`, `transformers`
    `get_polynomial_decay_schedule_with_warmup`) or constant.

    Example:
        >>> lr_factor(5, 100, 10, TrainSettings())
        0.5
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if settings.schedule == "constant":
        return 1.0
    end = settings.end_lr / settings.lr if settings.schedule == "polynomial" else 0.0
    power = settings.power if settings.schedule == "polynomial" else 1.0
    if step >= total_steps:
        return end
    remaining = 1.0 - (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return (1.0 - end) * remaining**power + end


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, settings: TrainSettings
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying `lr_factor` to every parameter group's own peak learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, settings)
    )


def resolve_warmup(settings: TrainSettings, total_steps: int) -> int:
    """Warm-up steps: `warmup_steps` when set, else `warmup_ratio` of the total."""
    return settings.warmup_steps if settings.warmup_steps > 0 else int(round(settings.warmup_ratio * total_steps))
