"""Masked language modelling: the model `berta pretrain` trains and `fill-mask` uses.

A model-only task here: its data half is the pretraining pipeline (`berta.data.corpus` shards and
`berta.data.masking`'s dynamic masking), run by `berta.train.pretrain`. The decoder is tied to the word
embeddings, so checkpoints carry it (`cls.predictions.decoder`, `lm_head.decoder`) as a copy that loading skips.
"""

from __future__ import annotations

from berta.model import MaskedLM
from berta.tasks.base import Task, register


@register
class MaskedLMTask(Task):
    name = "masked-lm"
    model_class = MaskedLM
    heads = {
        "bert": {
            "head.dense.weight": "cls.predictions.transform.dense.weight",
            "head.dense.bias": "cls.predictions.transform.dense.bias",
            "head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
            "head.norm.bias": "cls.predictions.transform.LayerNorm.bias",
            "head.bias": "cls.predictions.bias",
        },
        "roberta": {
            "head.dense.weight": "lm_head.dense.weight",
            "head.dense.bias": "lm_head.dense.bias",
            "head.norm.weight": "lm_head.layer_norm.weight",
            "head.norm.bias": "lm_head.layer_norm.bias",
            "head.bias": "lm_head.bias",
        },
    }
    architecture_suffix = "ForMaskedLM"
    methods = ("fill_mask",)
    fine_tunable = False
    output_axes = {"logits": {0: "batch", 1: "seq"}}
    # Copies of the tied word embeddings that checkpoints carry; never loaded, never saved (as transformers saves).
    derived = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
               "lm_head.decoder.weight", "lm_head.decoder.bias")
