"""The bare encoder (`BertModel`, `RobertaModel`): hidden states and BERT's pooler, no task head.

A model-only task: what `berta.load` gives for sentence encoders such as all-MiniLM-L6-v2, and the base that
`finetune` puts a new head on.
"""

from __future__ import annotations

from berta.model import Encoder
from berta.tasks.base import Task, register


@register
class EncoderTask(Task):
    name = "encoder"
    model_class = Encoder
    heads = {"bert": {}, "roberta": {}}
    architecture_suffix = "Model"
    fine_tunable = False
    outputs = ("last_hidden_state",)
    output_axes = {"last_hidden_state": {0: "batch", 1: "seq"}}
