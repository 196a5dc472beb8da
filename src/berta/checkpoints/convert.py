"""`berta convert --from FORMAT SRC --to FORMAT OUT`: move weights between berta (`hf`), fairseq and Google TF.

Every conversion goes through a berta directory (the Hugging Face layout) and ends each step with a parity
check: the converted model's outputs on sample sentences against a forward pass read straight from the other
format's tensors (`berta.checkpoints.reference`). The output directory is written atomically: if a check
fails, nothing is written.

    berta convert --from fairseq roberta.base --to hf roberta-base
    berta convert --from hf roberta-base --to tf roberta-base-tf
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from berta.checkpoints.hf import load
from berta.checkpoints.reference import SAMPLE_SENTENCES, ReferenceWeights, parity
from berta.io import atomic_directory
from berta.tokenizer import Tokenizer

log = logging.getLogger(__name__)

Format = Literal["hf", "fairseq", "tf"]
FORMATS = ("hf", "fairseq", "tf")
# fairseq's default --classification-head-name
DEFAULT_HEAD_NAME = "sentence_classification_head"


@dataclass
class ConvertSettings:
    """Settings of `berta convert`."""

    from_format: Format = field(metadata={"help": "format of SRC: hf (berta's directory), fairseq, tf",
                                          "flag": "--from"})
    source: Path = field(metadata={"help": "directory to read", "positional": True})
    to_format: Format = field(metadata={"help": "format of OUT: hf, fairseq, tf", "flag": "--to"})
    output: Path = field(metadata={"help": "directory to write (replaced atomically)", "positional": True})
    head: str = field(default="auto", metadata={
        "help": "fairseq head to convert: 'auto' (the only classification head, else the LM head), 'lm', or a "
                "classification head's name; when writing fairseq, the classification head's name ('auto': "
                f"{DEFAULT_HEAD_NAME})"})
    labels: list[str] = field(default_factory=list, metadata={
        "help": "label names of a fairseq classification head, in output order (mnli's are known)"})
    fairseq_naming: Literal["current", "2019"] = field(default="current", metadata={
        "help": "fairseq layout to write: 'current' (encoder.sentence_encoder.*, zip) or '2019' "
                "(decoder.sentence_encoder.*, fused attention, legacy serialization)"})
    sentences: list[str] = field(default_factory=lambda: list(SAMPLE_SENTENCES), metadata={
        "help": "sentences of the parity check"})
    tolerance: float = field(default=1e-4, metadata={
        "help": "largest allowed difference to the source's own forward pass (fp32)"})


def check(model: torch.nn.Module, weights: ReferenceWeights, tokenizer, settings: ConvertSettings,
          what: str) -> dict[str, float]:
    """Run the parity check and raise ValueError (so nothing is written) when an output differs."""
    batch = tokenizer(settings.sentences, truncation=True, max_length=model.config.max_length, return_tensors="pt")
    features = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if model.config.type_vocab_size >= 2:
        features["token_type_ids"] = torch.zeros_like(features["input_ids"])
    differences = parity(model, weights, features)
    worst = max(differences.values())
    if worst > settings.tolerance:
        raise ValueError(f"{what}: parity check failed, the converted model differs from the source by "
                         f"{differences} (> tolerance {settings.tolerance:.0e}); nothing was written")
    log.info("%s: parity %s", what, differences)
    return differences


def _fairseq_to_berta(settings: ConvertSettings, output: Path) -> dict[str, float]:
    from berta.checkpoints import fairseq

    checkpoint = fairseq.read(settings.source)
    head = fairseq.choose_head(checkpoint, settings.head)
    fairseq.write_berta(checkpoint, output, head, settings.labels)
    model = load(output)
    tokenizer = Tokenizer.from_pretrained(output)
    return check(model, fairseq.reference_weights(checkpoint, head), tokenizer, settings,
                 f"{settings.source} -> {settings.output}")


def _berta_to_fairseq(settings: ConvertSettings, source: Path, output: Path) -> dict[str, float]:
    from berta.checkpoints import fairseq
    from berta.checkpoints.hf import state_for_saving

    model = load(source)
    config = model.config
    if config.family == "bert":
        raise ValueError(f"{source}: a BERT model; fairseq releases hold RoBERTa-family encoders "
                         "(roberta, xlm-roberta, camembert)")
    task = getattr(model, "task", "encoder")
    if task not in ("encoder", "masked-lm", "classification"):
        raise ValueError(f"{source}: a {task} model; fairseq RoBERTa holds an LM head and classification heads")
    head = None
    tensors = state_for_saving(model)
    if task != "masked-lm":
        # fairseq's RobertaModel always has an LM head; a new one is initialised (and logged by berta.load).
        tensors = {**state_for_saving(load(source, task="masked-lm")), **tensors}
    if task == "classification":
        head = DEFAULT_HEAD_NAME if settings.head in ("auto", "lm") else settings.head
    tensors = {name if name.startswith(("roberta.", "lm_head.", "classifier.")) else f"roberta.{name}": tensor
               for name, tensor in tensors.items()}
    tokenizer = Tokenizer.from_pretrained(source)
    fairseq.write_release(tensors, config, tokenizer, source, output, settings.fairseq_naming, head)
    written = fairseq.read(output)
    reread = fairseq.tokenizer_of(written)
    for sentence in settings.sentences:
        if reread.encode(sentence).ids != tokenizer.encode(sentence).ids:
            raise ValueError(f"{output}: the written dict.txt and BPE files tokenize {sentence!r} differently from "
                             f"{source}'s tokenizer; nothing was written")
    if task == "encoder":
        model = load(source, task="masked-lm")  # compare the LM head that was written too
    return check(model, fairseq.reference_weights(written, head), tokenizer, settings, f"{source} -> {output}")


def _tf_to_berta(settings: ConvertSettings, output: Path) -> dict[str, float]:
    from berta.checkpoints import tf

    checkpoint = tf.read(settings.source)
    tf.write_berta(checkpoint, output)
    model = load(output)
    tokenizer = Tokenizer.from_pretrained(output)
    return check(model, tf.reference_weights(checkpoint), tokenizer, settings, f"{settings.source} -> {output}")


def _berta_to_tf(settings: ConvertSettings, source: Path, output: Path) -> dict[str, float]:
    from berta.checkpoints import tf

    model = load(source)
    tokenizer = Tokenizer.from_pretrained(source)
    tf.write_checkpoint(model, tokenizer, output)
    written = tf.read(output)
    return check(model, tf.reference_weights(written), tokenizer, settings, f"{source} -> {output}")


def convert(settings: ConvertSettings) -> dict[str, float]:
    """Convert a checkpoint directory between berta (hf), fairseq and Google TF formats, with a parity check.

    Returns the largest differences of the last step's check.

    Example:
        >>> convert(ConvertSettings(from_format="fairseq", source=Path("roberta.base"),
        ...                         to_format="hf", output=Path("roberta-base")))  # doctest: +SKIP
        {'last_hidden_state': 2.1e-06, 'logits': 9.5e-06}
    """
    if settings.from_format not in FORMATS or settings.to_format not in FORMATS:
        raise ValueError(f"formats are {FORMATS}; got --from {settings.from_format} --to {settings.to_format}")
    if settings.from_format == settings.to_format:
        raise ValueError(f"--from and --to are both {settings.from_format}: nothing to convert")
    if not Path(settings.source).is_dir():
        raise FileNotFoundError(f"{settings.source}: no such directory")
    with tempfile.TemporaryDirectory() as staging:
        if settings.from_format == "hf":
            berta_directory = Path(settings.source)
        elif settings.to_format == "hf":
            with atomic_directory(settings.output) as output:
                differences = _read(settings, output)
            print(f"wrote {settings.output}; parity {_shown(differences)}")
            return differences
        else:
            berta_directory = Path(staging) / "berta"
            _read(settings, berta_directory)
        with atomic_directory(settings.output) as output:
            if settings.to_format == "fairseq":
                differences = _berta_to_fairseq(settings, berta_directory, output)
            else:
                differences = _berta_to_tf(settings, berta_directory, output)
    print(f"wrote {settings.output}; parity {_shown(differences)}")
    return differences


def _read(settings: ConvertSettings, output: Path) -> dict[str, float]:
    if settings.from_format == "fairseq":
        return _fairseq_to_berta(settings, output)
    return _tf_to_berta(settings, output)


def _shown(differences: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.1e}" for name, value in differences.items())


__all__ = ["ConvertSettings", "convert"]
