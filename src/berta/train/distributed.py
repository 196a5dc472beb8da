"""Processes under `torchrun`: the process group, the rank's device, DDP / FSDP wrapping, and the few collective
calls the loop makes (barriers, "did any rank get an interrupt?", gathering random states). Outside torchrun
everything here is a no-op for one process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from berta.device import resolve_device


@dataclass
class Distributed:
    """This process's place among the training processes (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` is true on any rank (the same answer on every rank)."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on the main rank (an empty list elsewhere)."""
        if not self.active:
            return [value]
        gathered: list[Any] = [None] * self.world_size if self.main else []
        dist.gather_object(value, gathered if self.main else None, dst=0)
        return gathered

    def broadcast(self, value: Any) -> Any:
        """The main rank's `value`, on every rank."""
        if not self.active:
            return value
        shared = [value]
        dist.broadcast_object_list(shared, src=0)
        return shared[0]

    def close(self) -> None:
        if self.created_group:
            dist.destroy_process_group()


def setup_distributed(device_setting: str) -> tuple[Distributed, torch.device]:
    """Join torchrun's process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPUs) and pick this rank's device.

    Example:
        >>> setup_distributed("cpu")
        (Distributed(rank=0, world_size=1, local_rank=0, created_group=False), device(type='cpu'))
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_setting, local_rank)
    created = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    state = Distributed(
        rank=dist.get_rank() if dist.is_initialized() else 0,
        world_size=dist.get_world_size() if dist.is_initialized() else 1,
        local_rank=local_rank,
        created_group=created,
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return state, device


def fsdp_class() -> type:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel


def is_fsdp(model: nn.Module) -> bool:
    return isinstance(model, fsdp_class())


def wrap(model: nn.Module, strategy: str, distributed: Distributed, device: torch.device) -> nn.Module:
    """`model` in DDP or FSDP (`strategy`) under torchrun; the model itself for one process."""
    if not distributed.active:
        return model
    if strategy == "fsdp":
        return fsdp_class()(model, device_id=device, use_orig_params=True, sync_module_states=device.type == "cuda")
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / FSDP / torch.compile wrappers."""
    inner = getattr(model, "module", model)  # DDP and FSDP keep the wrapped model as `.module`
    return getattr(inner, "_orig_mod", inner)


def clean_name(name: str) -> str:
    """A parameter name without the wrappers' prefixes (`module.`, `_fsdp_wrapped_module.`, `_orig_mod.`)."""
    for marker in ("_fsdp_wrapped_module.", "_orig_mod.", "_checkpoint_wrapped_module."):
        name = name.replace(marker, "")
    return name.removeprefix("module.")
