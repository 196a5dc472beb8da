"""`berta pretrain`: masked-language-model pretraining with RoBERTa's recipe, from scratch or from a checkpoint.

    berta prepare --tokenizer roberta --output data corpus.txt
    berta pretrain --data data --model tiny --output runs/tiny --max-steps 2000 --batch-size 32
    torchrun --nproc_per_node 8 -m berta.cli pretrain --data data --model roberta-base --output runs/base ...

The data is a prepared corpus (`berta.data.corpus`): packed blocks, no padding inside a block. Batches are masked
when they are drawn (`berta.data.masking.MaskingCollator`: dynamic masking, the mask of a sample a pure function of
(seed, epoch, index)), and the LM head scores only the masked positions. Validation uses one fixed masking of the
validation split, so its loss, perplexity and accuracy are comparable from step to step. Running the same command
on an existing output directory resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from berta import io
from berta.checkpoints.hf import load
from berta.config import PRESETS, EncoderConfig
from berta.tasks import create
from berta.train.logs import configure_logging
from berta.train.loop import TrainResult, train
from berta.train.resume import RunRecord, file_fingerprint
from berta.train.settings import TrainSettings

log = logging.getLogger(__name__)

# What MaskedLM.forward takes from a masked batch; `labels` stay out of validation (the loss is computed there).
_MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "masked_positions")


@dataclass(kw_only=True)
class PretrainSettings(TrainSettings):
    """Settings of `berta pretrain`: the loop's settings plus data, model and masking.

    Defaults are RoBERTa-base's pretraining recipe (Liu et al. 2019, table 9; fairseq `examples/roberta`):
    peak lr 6e-4, warm-up 4.8% of the steps, AdamW (0.9, 0.98, 1e-6), weight decay 0.01, no clipping, 15%
    dynamic masking with 80/10/10 — except the length: `--epochs` passes, not RoBERTa's 500k steps
    (`--max-steps 500000`), so a first run on a CPU ends. RoBERTa's global batch of 8k sequences is
    `--batch-size` x `--grad-accum` x processes (e.g. 32 x 32 on 8 GPUs).

    Example:
        >>> PretrainSettings(data=Path("data"), model="tiny", output=Path("runs/tiny"), max_steps=100).mask_prob
        0.15
    """

    data: Path = field(metadata={"help": "prepared data directory (berta prepare)"})
    model: str = field(
        metadata={"help": f"a preset ({', '.join(sorted(PRESETS))}) to train from scratch, or a model directory"}
    )
    output: Path = field(metadata={"help": "run directory: checkpoints, metrics.jsonl, model/ (resumed if present)"})
    # Not RoBERTa's 500k steps by default: a CPU user's first run ends. The recipe is `--max-steps 500000`.
    max_steps: int = field(default=0, metadata={"min": 0, "help": "optimizer steps (0: --epochs passes over the "
                                                                  "data; RoBERTa's recipe: 500000)"})
    warmup_ratio: float = field(default=0.048, metadata={"min": 0, "max": 1,
                                                         "help": "warm-up share of the steps (RoBERTa: 24k of 500k)"})
    eval_every: int = field(default=1000, metadata={"min": 0,
                                                    "help": "steps between validations (0: at the end of every epoch)"})
    mask_prob: float = field(default=0.15, metadata={"above": 0, "max": 1,
                                                     "help": "share of tokens predicted (BERT, RoBERTa: 0.15)"})
    random_token_prob: float = field(default=0.1, metadata={"min": 0, "max": 1,
                                                            "help": "share of predicted tokens replaced at random"})
    leave_unmasked_prob: float = field(default=0.1, metadata={"min": 0, "max": 1,
                                                              "help": "share of predicted tokens left as they are"})
    masking: Literal["dynamic", "static"] = field(
        default="dynamic",
        metadata={"help": "dynamic: a new mask every epoch (RoBERTa); static: --static-masks fixed masks (BERT)"},
    )
    static_masks: int = field(
        default=10, metadata={"min": 0, "help": "masks per sample with --masking static (RoBERTa section 4.1: 10)"}
    )
    whole_word: bool = field(default=False, metadata={"help": "mask whole words (all pieces of a word together)"})
    language_alpha: float = field(
        default=0.3, metadata={"min": 0, "max": 1,
                               "help": "multilingual data: sample languages with p^alpha (XLM-R: 0.3)"}
    )
    validation_samples: int = field(
        default=2000, metadata={"min": 0, "help": "validation samples scored at each evaluation (0: the whole split)"}
    )

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.masking not in ("dynamic", "static"):
            raise ValueError(f"masking must be dynamic or static, got {self.masking!r}")
        if self.static_masks < 1:
            raise ValueError(f"static_masks must be >= 1, got {self.static_masks}")
        if self.validation_samples < 0:
            raise ValueError(f"validation_samples must be >= 0, got {self.validation_samples}")


def pretrain(settings: PretrainSettings) -> TrainResult:
    """Pretrain a masked-language model on a prepared corpus (from a preset or a model directory); resumable.

    Writes `output/metrics.jsonl` (step, loss, lr, tokens_per_s; val_loss, val_ppl, val_accuracy when
    validating), `output/checkpoints/`, and `output/model` with the tokenizer saved in it.

    Example:
        >>> pretrain(PretrainSettings(data=Path("data"), model="tiny", output=Path("runs/t"),
        ...                           max_steps=50))  # doctest: +SKIP
    """
    from berta.data.corpus import BlockDataset
    from berta.data.masking import LanguageSampler, MaskingCollator, MaskingVocabulary

    settings.validate()
    configure_logging()
    tokenizer = _tokenizer(settings)
    train_data = BlockDataset(settings.data, "train", tokenizer=tokenizer)
    if train_data.parallel and settings.whole_word:
        raise ValueError("--whole-word is not available for parallel (TLM) data")
    model = build_model(settings.model, tokenizer, train_data.block_size, seed=settings.seed)
    vocabulary = MaskingVocabulary.from_tokenizer(tokenizer, position_offset=model.config.position_offset)
    masking = dict(
        mask_prob=settings.mask_prob,
        random_token_prob=settings.random_token_prob,
        leave_unmasked_prob=settings.leave_unmasked_prob,
        whole_word=settings.whole_word,
    )
    static_masks = settings.static_masks if settings.masking == "static" else 0
    collator = MaskingCollator(vocabulary, seed=settings.seed, static_masks=static_masks, **masking)

    evaluate = None
    if train_data.manifest["splits"]["validation"]["blocks"] > 0:
        validation = BlockDataset(settings.data, "validation", tokenizer=tokenizer)
        # One fixed masking of the validation set (its own seed, epoch 0), so evaluations compare.
        fixed = MaskingCollator(vocabulary, seed=settings.seed + 1, **masking)
        evaluate = masked_lm_evaluator(validation, fixed, settings.batch_size, settings.validation_samples)
    else:
        log.warning("%s has no validation blocks: no validation loss will be computed", settings.data)

    sample_order = None
    if len(train_data.languages) > 1 and not train_data.parallel:
        sampler = LanguageSampler(train_data.sample_languages, alpha=settings.language_alpha, seed=settings.seed)
        sample_order = sampler.indices
    if evaluate is not None and not settings.best_metric:
        settings.best_metric = "val_loss"
    # The prepared data is its manifest: block size, tokenizer fingerprint and the checksums of every shard.
    record = RunRecord.of("pretrain", settings, {"--data": file_fingerprint(Path(settings.data) / "manifest.json")},
                          identity=("model",))
    return train(
        model,
        settings,
        train_data,
        collator,
        settings.output,
        evaluate=evaluate,
        save_extras=tokenizer.save,
        compute_loss=masked_lm_loss,
        sample_order=sample_order,
        record=record,
    )


def build_model(name_or_path: str, tokenizer: Any, block_size: int, seed: int = 1) -> nn.Module:
    """A masked-LM model for pretraining: a fresh one from a preset sized to the tokenizer, or a checkpoint.

    From a preset, `vocab_size`, `pad_token_id` and the bos/eos ids come from the tokenizer. RoBERTa numbers
    positions from pad_id + 1 (fairseq `make_positions`; `transformers` does the same), which only fits the position
    table when `<pad>` is id 1 (fairseq's dictionary layout, as the `roberta` tokenizer preset numbers). A
    tokenizer that keeps GPT-2 ids and appends the special tokens (`<pad>` = 50260) is refused with the way out.

    Example:
        >>> model = build_model("tiny", Tokenizer.from_pretrained("roberta"), block_size=128)  # doctest: +SKIP
    """
    if Path(name_or_path).is_dir():
        model = load(name_or_path, task="masked-lm", new_head="init")  # continued pretraining may add one
        config = model.config
        # A vocabulary padded past the tokenizer (resize_token_embeddings(pad_to_multiple_of=...), nanoGPT's 50,304)
        # is common and harmless: its extra rows are never an input. Only ids the model has no row for are wrong.
        if config.vocab_size < len(tokenizer):
            raise ValueError(
                f"{name_or_path}: the model's vocab_size is {config.vocab_size} but the data's tokenizer has "
                f"{len(tokenizer)} tokens, so ids {config.vocab_size}..{len(tokenizer) - 1} have no embedding; "
                "prepare the data with this model's tokenizer"
            )
        if config.vocab_size > len(tokenizer):
            log.info("%s: %d embedding rows for a %d-token tokenizer (a padded vocabulary); the extra rows are "
                     "never an input or a random replacement", name_or_path, config.vocab_size, len(tokenizer))
        _check_positions(config, block_size, name_or_path)
        return model
    if name_or_path not in PRESETS:
        raise ValueError(
            f"--model {name_or_path!r} is neither a model directory nor a preset; presets: {sorted(PRESETS)}"
        )
    config = EncoderConfig.preset(name_or_path)
    if (tokenizer.family == "bert") != (config.family == "bert"):
        raise ValueError(
            f"preset {name_or_path!r} is a {config.family} model but the data's tokenizer is a {tokenizer.family} "
            "tokenizer; choose a preset of the tokenizer's family"
        )
    if config.position_offset and tokenizer.pad_id != 1:
        raise ValueError(
            f"the data's tokenizer numbers <pad> {tokenizer.pad_id}, but RoBERTa-family positions count from "
            "pad_id + 1 and the position table would need that many rows; use a tokenizer in fairseq's layout "
            "(<s>=0, <pad>=1, </s>=2, <unk>=3): the `roberta` preset, or a dict.txt beside vocab.json and merges.txt"
        )
    config = config.replace(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_id,
        bos_token_id=None if config.family == "bert" else tokenizer.cls_id,
        eos_token_id=None if config.family == "bert" else tokenizer.sep_id,
    )
    _check_positions(config, block_size, f"preset {name_or_path}")
    torch.manual_seed(seed)  # the same initial weights on every rank and on every resume
    return create(config, "masked-lm")


def _check_positions(config: EncoderConfig, block_size: int, source: str) -> None:
    if block_size > config.max_length:
        raise ValueError(
            f"{source}: the data's blocks hold {block_size} tokens but the model takes at most {config.max_length} "
            f"(max_position_embeddings {config.max_positions}); prepare the data with --block-size "
            f"{config.max_length} or less"
        )


def _tokenizer(settings: PretrainSettings) -> Any:
    """The model directory's tokenizer when it has one (the data is checked against it), else the data's."""

    from berta.tokenizer import Tokenizer

    model_dir = Path(settings.model)
    if model_dir.is_dir() and any((model_dir / name).exists() for name in ("tokenizer.json", "vocab.json",
                                                                         "vocab.txt", "sentencepiece.bpe.model")):
        return Tokenizer.from_pretrained(model_dir)
    manifest_path = Path(settings.data) / "manifest.json"
    try:
        name = io.read_json(manifest_path)["tokenizer"]["name"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{manifest_path}: not found; prepare the data with `berta prepare`") from None
    except (ValueError, KeyError) as error:
        raise ValueError(f"{manifest_path}: cannot read the tokenizer name ({error})") from None
    try:
        return Tokenizer.from_pretrained(name)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{manifest_path} names tokenizer {name!r}, which cannot be loaded ({error}); pass a model directory "
            "holding the tokenizer the data was prepared with"
        ) from None


def _model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    # `language_ids` (TLM batches) stay out: the encoder has no language embeddings (XLM-R drops them too).
    return {key: batch[key] for key in _MODEL_INPUTS if key in batch}


def masked_lm_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The loop's `compute_loss` for masked batches: the LM head runs at the masked positions only.

    Example:
        >>> loss = masked_lm_loss(model, collator(samples, indices, epoch))  # doctest: +SKIP
    """
    return model(**_model_inputs(batch), labels=batch["labels"]).loss


def masked_lm_evaluator(
    dataset: Any, collator: Callable, batch_size: int, max_samples: int = 0
) -> Callable[[nn.Module], dict[str, float]]:
    """An `evaluate` callback: masked-LM loss, perplexity and accuracy on one fixed masking of `dataset`.

    The batches are masked once, here (epoch 0 of `collator`'s seed), and reused at every evaluation. The loss
    is the mean over all masked tokens of the set (not a mean of batch means).

    Example:
        >>> evaluate = masked_lm_evaluator(validation, MaskingCollator(vocabulary, seed=2),
        ...                                batch_size=32)  # doctest: +SKIP
        >>> evaluate(model)  # doctest: +SKIP
        {'val_loss': 2.31, 'val_ppl': 10.07, 'val_accuracy': 0.54, 'val_tokens': 30712.0}
    """
    count = len(dataset) if max_samples == 0 else min(max_samples, len(dataset))
    batches = []
    for start in range(0, count, batch_size):
        indices = list(range(start, min(start + batch_size, count)))
        batches.append(collator([dataset[i] for i in indices], indices, 0))

    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.float64, device=device)
        tokens = 0
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(**_model_inputs(batch)).logits  # (masked, vocab)
            targets = batch["labels"][batch["masked_positions"]]  # (masked,)
            loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum").double()
            correct += logits.argmax(dim=-1).eq(targets).sum().double()
            tokens += int(targets.numel())
        loss = float(loss_sum) / max(tokens, 1)
        return {
            "val_loss": loss,
            "val_ppl": math.exp(min(loss, 700.0)),  # exp overflows a float beyond ~709
            "val_accuracy": float(correct) / max(tokens, 1),
            "val_tokens": float(tokens),
        }

    return evaluate
