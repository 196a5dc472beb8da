"""Which device a job runs on, and which autocast precision that device takes: one answer for training and
inference alike.

    resolve_device("auto")   # the process's GPU (LOCAL_RANK under torchrun, else cuda:0), else the CPU
"""

from __future__ import annotations

import os

import torch

_KINDS = ("cpu", "cuda", "mps")


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """The torch device for a `--device` value: "auto", "cpu", "cuda", "cuda:1" or "mps".

    "auto" is the GPU of this process (`local_rank`, default the `LOCAL_RANK` that torchrun sets, else 0) when
    CUDA is available, else the CPU; Apple's MPS is used only when asked for. A device that is not there is
    an error naming what is.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("tpu")
        Traceback (most recent call last):
        ...
        ValueError: --device 'tpu': expected auto, cpu, cuda, cuda:N or mps
    """
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in _KINDS:
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` ("auto", "fp32", "bf16", "fp16") on `device`; None means fp32.

    Example:
        >>> autocast_dtype("auto", torch.device("cpu")) is None
        True
    """
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None  # CPU autocast exists but is slower than fp32 on most CPUs
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError(f"precision fp16 needs a CUDA device (loss scaling), got {device}; use bf16 or fp32")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use fp16")
    return torch.bfloat16
