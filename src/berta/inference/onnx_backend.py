"""A directory written by `berta export onnx`, run by onnxruntime behind the interface of a berta model.

`OnnxModel(directory)(input_ids, attention_mask)` returns the `EncoderOutput` the PyTorch model would (torch
tensors, the task's fields set), so code written for a berta model — the prediction pipeline, the server —
runs the exported graph unchanged.

    >>> model = OnnxModel("runs/sst2/onnx")  # doctest: +SKIP
    >>> model(batch["input_ids"], batch["attention_mask"]).logits.shape  # doctest: +SKIP
    torch.Size([8, 2])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from berta.config import EncoderConfig
from berta.inference.export import GRAPH_NAME
from berta.io import check_file
from berta.model import EncoderOutput


class OnnxModel:
    """An exported model on onnxruntime's CPU provider, called like a berta model.

    Example:
        >>> model = OnnxModel("runs/sst2/onnx")  # doctest: +SKIP
        >>> model.task, model.config.num_labels  # doctest: +SKIP
        ('classification', 2)
    """

    training = False  # inference only: callers that check or set the mode find a model in eval mode

    def __init__(self, directory: str | Path, threads: int | None = None):
        import onnxruntime

        from berta.checkpoints.hf import CONFIG_NAME, task_of_architecture

        self.directory = Path(directory)
        graph = check_file(self.directory / GRAPH_NAME, "ONNX graph")
        self.config = EncoderConfig.from_file(check_file(self.directory / CONFIG_NAME, "model config"))
        architectures = self.config.extra.get("architectures") or []
        self.task = task_of_architecture(architectures[0]) if architectures else "encoder"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or min(os.cpu_count() or 1, torch.get_num_threads())
        self.session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.input_names = [item.name for item in self.session.get_inputs()]
        self.output_names = [item.name for item in self.session.get_outputs()]
        self.device = torch.device("cpu")

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.directory)!r}, task={self.task!r})"

    def eval(self) -> OnnxModel:
        return self

    def __call__(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        **ignored: Any,
    ) -> EncoderOutput:
        """Run the graph on (batch, seq) int tensors; `attention_mask` defaults to `input_ids != pad_token_id`."""
        if attention_mask is None:
            attention_mask = input_ids.ne(self.config.pad_token_id)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids {tuple(input_ids.shape)}"
            )
        feeds = {"input_ids": _int64(input_ids), "attention_mask": _int64(attention_mask)}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"]) if token_type_ids is None else _int64(
                token_type_ids
            )
        elif token_type_ids is not None and bool(token_type_ids.ne(0).any()):
            raise ValueError(
                f"token_type_ids hold {int(token_type_ids.max())}, but this {self.config.family} model has "
                f"type_vocab_size {self.config.type_vocab_size}; RoBERTa and XLM-R take no segment ids"
            )
        outputs = self.session.run(self.output_names, feeds)
        return EncoderOutput(**{name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs,
                                                                                     strict=True)})


def _int64(tensor: Tensor | np.ndarray) -> np.ndarray:
    array = tensor.detach().cpu().numpy() if isinstance(tensor, Tensor) else np.asarray(tensor)
    return array.astype(np.int64, copy=False)
