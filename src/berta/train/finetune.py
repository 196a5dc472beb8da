"""`berta finetune` and `berta evaluate`: fine-tune a checkpoint on a task and report on held-out data.

    berta finetune --task classification --model MODEL_DIR --train train.csv --validation dev.csv --output runs/sst
    berta finetune --task tokens --model MODEL_DIR --train train.conll --validation dev.conll --output runs/ner
    berta finetune --task qa --model MODEL_DIR --train train-v2.0.json --validation dev-v2.0.json --output runs/qa
    berta evaluate --model runs/sst/model --data test.csv

The task (`berta.tasks`) reads and featurizes the files; the label set comes from the training data and is
stored in the checkpoint's `id2label`. Training is the project's one loop (`berta.train.loop.train`) with
length-bucketed batches; the validation set is scored every `--eval-every` steps (default: every epoch), and
the best model by `--best-metric` (default: the task's main metric) is kept. The output directory holds

    model/               the fine-tuned model and its tokenizer (opens with berta.load and transformers)
    eval_results.json    validation metrics (metric -> value) and `examples`; `languages` with --eval
    predictions.jsonl    one prediction per validation example (predictions-LANG.jsonl with --eval)
    curves.png           training curve (loss, validation loss, learning rate); metrics.jsonl holds them all
    confusion_matrix.png classification only

Cross-lingual transfer (XNLI-style): `--eval test-de.tsv:de test-fr.tsv:fr` scores the model on each file after
training and adds a per-language table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from berta import io, tasks
from berta.checkpoints.hf import load, model_directory
from berta.config import ProblemType
from berta.device import resolve_device
from berta.tasks.base import Task, bucketed_order, combined_options, feature_length, run_model
from berta.tokenizer import Tokenizer
from berta.train.logs import configure_logging
from berta.train.loop import train
from berta.train.resume import RunRecord, file_fingerprint
from berta.train.settings import MAY_CHANGE_ON_RESUME, TrainSettings

log = logging.getLogger(__name__)

TASK_NAMES = tuple(tasks.fine_tunable())
TaskName = Literal[TASK_NAMES]  # type: ignore[valid-type]  # the registry's fine-tuning tasks
# How every task reads and featurizes its files, shared by `finetune` and `evaluate`: the union of the
# registered tasks' options dataclasses.
TaskOptions = combined_options()


@dataclass(kw_only=True)
class FinetuneSettings(TaskOptions, TrainSettings):
    """Settings of `berta finetune`: the task, its files, and the training loop's settings.

    Defaults follow RoBERTa's GLUE recipe (Liu et al. 2019, appendix table 10): lr from {1e-5, 2e-5, 3e-5},
    batch 16 or 32, 10 epochs at most with 6% warm-up, weight decay 0.1, AdamW betas (0.9, 0.98), eps 1e-6.

    Example:
        >>> FinetuneSettings(task="classification", model=Path("m"), train=Path("t.csv"),
        ...                  validation=Path("v.csv"), output=Path("runs/x")).lr
        2e-05
    """

    task: TaskName = field(
        metadata={"help": "classification (texts, pairs), tokens (NER, POS), qa (SQuAD) or multiple-choice (RACE)"}
    )
    model: Path = field(metadata={"help": "model directory (Hugging Face layout, with its tokenizer)"})
    train: Path = field(metadata={"help": "training file: CSV/TSV/JSONL, CoNLL, SQuAD JSON or multiple-choice JSONL"})
    validation: Path = field(metadata={"help": "validation file, same format: scored during and after training"})
    output: Path = field(metadata={"help": "output directory: model/, eval_results.json, predictions.jsonl"})
    eval: list[str] = field(
        default_factory=list,
        metadata={"help": "more files to score after training, as FILE:LANG (per-language table)"},
    )
    problem_type: ProblemType | None = field(
        default=None, metadata={"help": "classification: default from the labels"}
    )
    freeze_embeddings: bool = field(
        default=False, metadata={"help": "keep the word embeddings fixed (faster steps on CPU)"}
    )
    lr: float = field(default=2e-5, metadata={"above": 0, "help": "peak learning rate (RoBERTa GLUE: 1e-5..3e-5)"})
    batch_size: int = field(default=32, metadata={"min": 1, "help": "sequences per step (RoBERTa GLUE: 16 or 32)"})
    epochs: int = field(default=3, metadata={"min": 1, "help": "passes over the training data"})
    weight_decay: float = field(default=0.1, metadata={"min": 0, "help": "AdamW weight decay (RoBERTa GLUE: 0.1)"})
    eval_every: int = field(default=0, metadata={"min": 0,
                                                 "help": "steps between validations (0: at the end of every epoch)"})
    save_every: int = field(default=0, metadata={"min": 0, "help": "steps between checkpoints (0: at the end only)"})
    best_metric: str = field(
        default="", metadata={"help": "validation metric of the best model, e.g. val_f1 (default: the task's)"}
    )
    best_mode: Literal["auto", "min", "max"] = field(
        default="auto", metadata={"help": "whether lower or higher is better (auto: min for losses)"}
    )
    restore_best: bool = field(default=True, metadata={"help": "keep the best model (not the last) as model/"})


@dataclass(kw_only=True)
class EvaluateSettings(TaskOptions):
    """Settings of `berta evaluate`.

    Example:
        >>> EvaluateSettings(model=Path("runs/x/model"), data=Path("test.csv")).batch_size
        64
    """

    model: Path = field(metadata={"help": "fine-tuned model directory"})
    data: Path = field(metadata={"help": "file to score, in the task's format (with labels)"})
    task: TaskName | None = field(
        default=None, metadata={"help": "task (default: from the checkpoint's architecture)"}
    )
    output: Path | None = field(
        default=None, metadata={"help": "report directory (default: eval-DATA next to the model directory)"}
    )
    batch_size: int = field(default=64, metadata={"help": "sequences per forward pass"})
    device: str = field(default="auto", metadata={"help": "auto (GPU when there is one), cpu, cuda..."})


def build_task(name: str, tokenizer: Tokenizer, options: Any, id2label: dict[int, str] | None = None,
               problem_type: str | None = None) -> Task:
    """The registered fine-tuning task `name`, configured from `options` (finetune / evaluate settings).

    Example:
        >>> task = build_task("tokens", Tokenizer.from_pretrained("roberta"), EvaluateSettings(model=Path("m"),
        ...                   data=Path("d")), id2label={0: "O", 1: "B-PER"})
        >>> task.main_metric(), task.max_length
        ('f1', 256)
    """
    if name not in TASK_NAMES:
        raise ValueError(f"unknown task {name!r}; tasks are {list(TASK_NAMES)}")
    task = tasks.get(name).from_options(tokenizer, options, id2label=id2label, problem_type=problem_type)
    task.encoding = getattr(options, "encoding", "utf-8")
    return task


def main_metric(task: Task) -> str:
    """The validation metric that selects the best model for a task (without the `val_` prefix).

    Example:
        >>> main_metric(build_task("qa", Tokenizer.from_pretrained("roberta"), EvaluateSettings(model=Path("m"),
        ...             data=Path("d"))))
        'f1'
    """
    return task.main_metric()


def _scalars(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}{key}": value if isinstance(value, int) else float(value) for key, value in result.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def _fit_length(task: Any, model: nn.Module, asked: int | None) -> None:
    # The task's default length shrinks to a small model's position table; an explicit one must fit.
    longest = model.config.max_length  # type: ignore[union-attr]
    if asked is not None and asked > longest:
        raise ValueError(f"--max-length {asked} exceeds the model's {longest} positions")
    task.max_length = min(task.max_length, longest)
    stride, query = getattr(task, "stride", None), getattr(task, "max_query_length", None)
    if stride is not None and query is not None and not 0 <= stride < task.max_length - query - 4:
        room = task.max_length - query - 4
        raise ValueError(f"--stride {stride} with --max-query-length {query} does not fit windows of "
                         f"{task.max_length} tokens (the model's positions); pass --stride below {max(room, 1)}"
                         + ("" if room > 1 else " and a smaller --max-query-length"))


def finetune(settings: FinetuneSettings) -> dict[str, Any]:
    """Fine-tune a model on a task's training file, keep the best model on the validation file, write the report.

    Returns the validation metrics written to `output/eval_results.json`.

    Example:
        >>> finetune(FinetuneSettings(task="classification", model=Path("minilm"), train=Path("train.csv"),
        ...          validation=Path("dev.csv"), output=Path("runs/rt"), epochs=2))  # doctest: +SKIP
        {'accuracy': 0.83, ..., 'examples': 1280}
    """
    configure_logging()
    # Every input is opened and read (format, columns, labels) before the model loads: a bad --eval file
    # fails now, not after training.
    languages = [_language_file(item) for item in settings.eval]
    for what, path in [("--train", settings.train), ("--validation", settings.validation)] + [
            ("--eval", path) for path, _ in languages]:
        io.check_file(path, what)
    model_path = model_directory(settings.model)
    tokenizer = Tokenizer.from_pretrained(model_path)
    task = build_task(settings.task, tokenizer, settings, problem_type=settings.problem_type)
    train_examples = task.read(settings.train)
    id2label = task.fit_labels(train_examples)
    validation_examples = task.read(settings.validation)
    eval_examples = {language: task.read(path) for path, language in languages}
    log.info("%s: %d training examples, %d validation examples%s", settings.task, len(train_examples),
             len(validation_examples), f", labels {list(id2label.values())}" if id2label else "")

    torch.manual_seed(settings.seed)  # the new head's initialisation is part of what the seed fixes
    model = load(model_path, task=settings.task, id2label=id2label, new_head="init")
    _fit_length(task, model, settings.max_length)
    task.configure_model(model)
    if settings.freeze_embeddings:
        model.encoder.embeddings.words.weight.requires_grad_(False)  # type: ignore[union-attr]

    train_features = task.featurize(train_examples)
    validation_features = task.featurize(validation_examples)
    lengths = [feature_length(f) for f in train_features]
    log.info("%d training features (%d tokens), %d validation features", len(train_features), sum(lengths),
             len(validation_features))

    def evaluate(model: nn.Module) -> dict[str, float]:
        rows, loss = run_model(model, validation_features, task.collate, task.outputs, settings.batch_size * 2,
                               task.per_token)
        result = task.score(validation_examples, task.decode(validation_examples, validation_features, rows))
        return {"val_loss": loss if loss is not None else math.nan, **_scalars(result, "val_")}

    loop_settings = _loop_settings(settings, main_metric(task), len(train_features))
    record = RunRecord.of(
        "finetune", settings, {"--train": file_fingerprint(settings.train),
                               "--validation": file_fingerprint(settings.validation),
                               "--model": file_fingerprint(model_path / "model.safetensors")
                               if (model_path / "model.safetensors").is_file() else "(no model.safetensors)"},
        identity=("task", "model"), may_change=MAY_CHANGE_ON_RESUME | {"eval"},
    )
    result = train(
        model, loop_settings, train_features, lambda samples, indices, epoch: task.collate(samples), settings.output,
        evaluate=evaluate, save_extras=tokenizer.save,
        sample_order=lambda epoch: bucketed_order(lengths, settings.batch_size, settings.seed, epoch),
        record=record,
    )
    log.info("trained %d steps%s; best %s", result.step, " (stopped early)" if result.stopped_early else "",
             {k: round(v, 4) for k, v in result.best_metrics.items()})

    report = write_report(task, model, validation_examples, settings.output, settings.batch_size * 2)
    if languages:
        table = {}
        for _, language in languages:
            examples = eval_examples[language]
            table[language] = write_report(task, model, examples, settings.output, settings.batch_size * 2,
                                           suffix=f"-{language}", write_results=False)
        report["languages"] = table
        print(language_table(table, main_metric(task)))
    io.atomic_write_json(settings.output / "eval_results.json", report)
    log.info("validation (%d examples): %s; report in %s", report["examples"],
             {k: round(v, 4) for k, v in _scalars(report).items() if k != "examples"}, settings.output)
    return report


def _loop_settings(settings: FinetuneSettings, metric: str, num_features: int) -> TrainSettings:
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(TrainSettings)}
    best_metric = settings.best_metric or f"val_{metric}"
    if settings.best_mode == "auto":
        values["best_mode"] = "min" if best_metric.endswith("loss") else "max"
    if num_features < settings.batch_size * settings.grad_accum:  # a small training set trains, in one batch
        values["batch_size"] = max(1, num_features // settings.grad_accum)
        log.info("%d training features, fewer than one batch of %d: training with batches of %d", num_features,
                 settings.batch_size * settings.grad_accum, values["batch_size"])
    steps_per_epoch = max(1, num_features // (values["batch_size"] * settings.grad_accum))
    values.update(best_metric=best_metric, eval_every=settings.eval_every or steps_per_epoch)
    return TrainSettings(**values)


def _language_file(item: str) -> tuple[Path, str]:
    path, separator, language = item.rpartition(":")
    if not separator or not path or not language:
        raise ValueError(f"--eval {item!r}: expected FILE:LANG, e.g. xnli.test.de.tsv:de")
    return Path(path), language


def language_table(table: dict[str, dict[str, Any]], metric: str) -> str:
    """A plain-text table of per-language results: language, examples, the main metric, and the average.

    Example:
        >>> print(language_table({"en": {"accuracy": 0.84, "examples": 5010}}, "accuracy"))
        language  examples  accuracy
        en            5010    0.8400
        average               0.8400
    """
    lines = [f"{'language':<8}  {'examples':>8}  {metric:>8}"]
    for language, result in table.items():
        lines.append(f"{language:<8}  {result['examples']:>8}  {result[metric]:>8.4f}")
    average = sum(result[metric] for result in table.values()) / len(table)
    lines.append(f"{'average':<8}  {'':>8}  {average:>8.4f}")
    return "\n".join(lines)


def write_report(task: Any, model: nn.Module, examples: list, output: Path, batch_size: int, suffix: str = "",
                 write_results: bool = True) -> dict[str, Any]:
    """Predict `examples`, score them, and write `predictions{suffix}.jsonl`, `eval_results.json` (when
    `write_results`) and, for single-label classification, `confusion_matrix{suffix}.png` into `output`.

    Returns the metrics with `examples`, the number of examples scored.
    """
    output.mkdir(parents=True, exist_ok=True)
    predictions = task.predict(model, examples, batch_size)
    result = task.score(examples, predictions)
    result["examples"] = len(examples)
    skipped = getattr(examples, "skipped", [])  # wrongly labelled examples the reader left out (berta.data.readers)
    if skipped:
        result["skipped"] = {
            "count": len(skipped), "read": len(examples) + len(skipped),
            "why": "answers that do not fit their context (answer_start does not point at the answer text, or "
                   "is_impossible contradicts the answers); `examples` and `total` count the scored ones only",
            "questions": [{"id": qid, "problem": problem} for qid, problem in skipped],
        }
    io.atomic_write_text(output / f"predictions{suffix}.jsonl", "".join(
        json.dumps(row, ensure_ascii=False) + "\n" for row in task.records(examples, predictions)))
    task.draw(examples, predictions, output, suffix)
    if write_results:
        io.atomic_write_json(output / "eval_results.json", result)
    return result


def evaluate(settings: EvaluateSettings) -> dict[str, Any]:
    """Score a fine-tuned checkpoint on a labelled file and write the same report as `finetune`.

    Example:
        >>> evaluate(EvaluateSettings(model=Path("runs/rt/model"), data=Path("test.csv")))  # doctest: +SKIP
        {'accuracy': 0.82, ..., 'examples': 1281}
    """
    configure_logging()
    io.check_file(settings.data, "--data")
    model_path = model_directory(settings.model)
    model = load(model_path, task=settings.task)
    if model.task not in TASK_NAMES:
        raise ValueError(
            f"{settings.model}: the checkpoint is a {model.task!r} model, not a fine-tuned one; pass --task "
            f"({', '.join(TASK_NAMES)}) only for a checkpoint with that head"
        )
    model.to(resolve_device(settings.device))
    tokenizer = Tokenizer.from_pretrained(model_path)
    task = tasks.get(model.task).from_checkpoint(tokenizer, settings, model.config)
    task.encoding = settings.encoding
    _fit_length(task, model, settings.max_length)
    examples = task.read(settings.data)
    task.fit_evaluation(examples)
    output = settings.output or model_path.parent / f"eval-{settings.data.name.split('.')[0]}"
    result = write_report(task, model, examples, output, settings.batch_size)
    log.info("%s: %s -> %s", settings.data, {k: round(v, 4) for k, v in _scalars(result).items()}, output)
    return result
