"""`berta predict`: run a model over a file of inputs, one JSON Lines record per input, in input order.

    berta predict --model runs/sst2/model --input reviews.csv --text-column review --output predictions.jsonl
    torchrun --nproc-per-node 4 -m berta.cli predict --model DIR --input corpus.txt --output embeddings.jsonl

Inputs: `.txt` (one input per line), `.jsonl` (fields `text`, `text_pair`, `question`, `context`), `.csv` / `.tsv`
(columns named by `--text-column`, ...), or `-` for standard input (`--input-format`). The prediction follows the
model's task (`--method` picks another the model serves, e.g. `embed` from a classifier). A malformed line stops
the run naming its line, or with `--skip-errors` is counted and left out.

Under `torchrun` every rank reads the input, takes every WORLD_SIZE-th input from its RANK, and writes a part
file beside the output; rank 0 interleaves the parts back into one output in input order (across nodes, the
output's directory must be one all nodes share).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from berta import io
from berta.inference.pipeline import Pipeline, RuntimeOptions, pipeline

FORMATS = ("txt", "jsonl", "csv", "tsv")
METHODS = ("embed", "classify", "tag", "answer", "fill-mask", "choose")
# The record fields each method needs (the JSONL names; CSV/TSV columns are mapped onto them).
_REQUIRED = {"answer": ("question", "context"), "choose": ("text", "candidates")}
# Method -> the output field its result goes in.
_OUTPUT_FIELD = {"embed": "embedding", "classify": "labels", "tag": "entities", "answer": "answer",
                 "fill-mask": "masks", "choose": "choice"}


@dataclass
class PredictSettings(RuntimeOptions):
    """Settings of `berta predict`."""

    model: str = field(metadata={"help": "model directory (config.json, weights and tokenizer)"})
    input: str = field(metadata={"help": "input file (.txt, .jsonl, .csv, .tsv, compressed or not), or - for stdin"})
    output: str = field(metadata={"help": "output JSON Lines file, or - for stdout"})
    method: str | None = field(default=None, metadata={"help": "prediction to run (default: the model's task)",
                                                       "choices": METHODS})
    input_format: str | None = field(default=None, metadata={"help": "format of the input (default: its suffix; "
                                                                     "txt for stdin)", "choices": FORMATS})
    text_column: str = field(default="text", metadata={"help": "CSV/TSV column of the text"})
    text_pair_column: str | None = field(default=None, metadata={"help": "CSV/TSV column of the second text"})
    question_column: str = field(default="question", metadata={"help": "CSV/TSV column of the question"})
    context_column: str = field(default="context", metadata={"help": "CSV/TSV column of the context"})
    limit: int | None = field(default=None, metadata={"min": 1, "help": "predict only the first N inputs"})
    batch_size: int = field(default=32, metadata={"min": 1, "help": "inputs per model call"})
    encoding: str = field(default="utf-8", metadata={"help": "text encoding of --input (stdin: the terminal's)"})
    skip_errors: bool = field(default=False, metadata={"help": "count and skip malformed lines instead of stopping"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar on larger inputs"})
    top_k: int = field(default=1, metadata={"min": 1, "help": "classify / answer / fill-mask: results per input"})
    aggregation: str = field(default="simple", metadata={"help": "tag: how sub-tokens form entities",
                                                         "choices": ["none", "simple", "first", "average", "max"]})
    pooling: str | None = field(default=None, metadata={"help": "embed: cls, mean, max (default: the model's)"})


@dataclass
class Record:
    """One input: its line (1-based, in the input), and the fields the method reads."""

    line: int
    fields: dict[str, Any]


def _format(settings: PredictSettings) -> str:
    if settings.input_format:
        return settings.input_format
    if settings.input == "-":
        return "txt"
    suffix = io.format_suffix(settings.input).lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(f"--input {settings.input}: unknown format {suffix!r}; expected .txt, .jsonl, .csv or "
                         ".tsv (or --input-format)")
    return suffix


def _lines(settings: PredictSettings) -> Iterator[tuple[int, str]]:
    if settings.input == "-":
        yield from enumerate(sys.stdin, start=1)
    else:
        io.check_file(settings.input, "--input")
        yield from io.lines(settings.input, settings.encoding)


def _raw_records(settings: PredictSettings, kind: str, required: Sequence[str]) -> Iterator[tuple[int, Any]]:
    """(line, dict of fields) per input, or (line, an error message) for a malformed one."""
    if kind == "txt":
        for number, text in _lines(settings):
            yield number, {"text": text.rstrip("\r\n")}
    elif kind == "jsonl":
        for number, text in _lines(settings):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                yield number, f"not valid JSON ({error.msg})"
                continue
            yield number, value if isinstance(value, dict) else f"expected a JSON object, got {type(value).__name__}"
    else:
        columns = {"text": settings.text_column, "text_pair": settings.text_pair_column,
                   "question": settings.question_column, "context": settings.context_column}
        numbered = list(_lines(settings))
        reader = csv.reader((text for _, text in numbered), delimiter="," if kind == "csv" else "\t")
        header: list[str] | None = None
        for row in reader:
            number = numbered[min(reader.line_num, len(numbered)) - 1][0]
            if header is None:
                header = row
                missing = [name for name in required if columns.get(name) not in header]
                if missing:
                    name = missing[0]
                    raise ValueError(f"{settings.input}: no column {columns.get(name)!r} (the {name}) in the header "
                                     f"{header}; name yours with --{name.replace('_', '-')}-column")
                continue
            if not row:
                continue
            if len(row) != len(header):
                yield number, f"{len(row)} fields, expected {len(header)} (the header's)"
                continue
            values = dict(zip(header, row, strict=True))
            yield number, {name: values[column] for name, column in columns.items()
                           if column is not None and column in values}


def read_records(settings: PredictSettings, method: str) -> tuple[list[Record], int]:
    """The valid inputs of the file and the number of malformed lines skipped (with `--skip-errors`).

    Example:
        >>> read_records(PredictSettings(model="m", input="reviews.txt", output="-"), "classify")  # doctest: +SKIP
        ([Record(line=1, fields={'text': 'a gem'}), ...], 0)
    """
    kind = _format(settings)
    required = _REQUIRED.get(method, ("text",))
    where = "stdin" if settings.input == "-" else settings.input
    records, skipped = [], 0
    for number, value in _raw_records(settings, kind, required):
        problem = value if isinstance(value, str) else None
        if problem is None:
            missing = [name for name in required if name not in value]
            wrong = [name for name in dict.fromkeys((*required, "text_pair")) if name in value
                     and value[name] is not None and not _valid(name, value[name])]
            if missing:
                problem = f"field {missing[0]!r} is missing (a {method} input needs {', '.join(required)})"
            elif wrong:
                kind = "a list of strings" if wrong[0] == "candidates" else "a string"
                problem = f"field {wrong[0]!r} must be {kind}, got {type(value[wrong[0]]).__name__}"
        if problem is not None:
            if not settings.skip_errors:
                raise ValueError(f"{where} line {number}: {problem}; fix it or pass --skip-errors")
            skipped += 1
            continue
        records.append(Record(number, value))
        if settings.limit is not None and len(records) >= settings.limit:
            break
    return records, skipped


def _valid(name: str, value: Any) -> bool:
    if name == "candidates":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, str)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def run_method(pipe: Pipeline, method: str, records: list[Record], settings: PredictSettings) -> list[Any]:
    """The predictions of `method` for `records`, in their order.

    Example:
        >>> run_method(berta.pipeline(d), "embed", [Record(1, {"text": "a"})], settings)  # doctest: +SKIP
    """
    texts = [r.fields.get("text", "") for r in records]
    if method == "embed":
        return list(pipe.embed(texts, pooling=settings.pooling))
    if method == "classify":
        pairs = [r.fields.get("text_pair") for r in records]
        if any(p is not None for p in pairs):
            if any(p is None for p in pairs):
                missing = next(r.line for r in records if r.fields.get("text_pair") is None)
                raise ValueError(f"line {missing}: no text_pair, but other inputs have one; give every input a pair")
            return pipe.classify(texts, pairs, top_k=settings.top_k)
        return pipe.classify(texts, top_k=settings.top_k)
    if method == "tag":
        return pipe.tag(texts, aggregation=settings.aggregation)
    if method == "answer":
        return pipe.answer([r.fields["question"] for r in records], [r.fields["context"] for r in records],
                           top_k=settings.top_k)
    if method == "fill-mask":
        return pipe.fill_mask(texts, top_k=max(settings.top_k, 1))
    if method == "choose":
        return pipe.choose(texts, [r.fields["candidates"] for r in records])
    raise ValueError(f"unknown method {method!r}; methods are {METHODS}")


def _write_records(pipe: Pipeline, method: str, records: list[Record], settings: PredictSettings, handle: TextIO,
                   progress: bool) -> None:
    chunk = settings.batch_size * 16  # results stream out chunk by chunk; each chunk is length-sorted inside
    bar = None
    if progress and sys.stderr.isatty():  # tqdm only on a terminal; plain lines every 10 s when redirected
        from tqdm import tqdm

        bar = tqdm(total=len(records), unit="inputs", desc="predict", dynamic_ncols=True)
    started = last_line = time.monotonic()
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        for record, result in zip(part, run_method(pipe, method, part, settings), strict=True):
            handle.write(json.dumps({"line": record.line, _OUTPUT_FIELD[method]: _jsonable(result)},
                                    ensure_ascii=False) + "\n")
        if bar is not None:
            bar.update(len(part))
        elif progress and (time.monotonic() - last_line >= 10 or start + chunk >= len(records)):
            last_line, done = time.monotonic(), min(start + chunk, len(records))
            speed = done / max(last_line - started, 1e-9)
            print(f"predict: {done}/{len(records)} inputs, {speed:.1f} inputs/s, ETA "
                  f"{(len(records) - done) / speed:.0f} s", file=sys.stderr, flush=True)
    if bar is not None:
        bar.close()


def _interleave(parts: list[Path], handle: TextIO) -> None:
    # Rank r predicted inputs r, r + W, r + 2W, ...: reading one line from each part in turn restores the order.
    readers = [io.lines(part) for part in parts]
    try:
        while True:
            wrote = False
            for reader in readers:
                line = next(reader, None)
                if line is not None:
                    handle.write(line[1])
                    wrote = True
            if not wrote:
                return
    finally:
        for reader in readers:
            reader.close()


def predict(settings: PredictSettings) -> dict[str, Any]:
    """Predict every input of a file into a JSON Lines file, in input order (sharded across torchrun ranks).

    Example:
        >>> predict(PredictSettings(model="runs/sst2/model", input="reviews.txt", output="out.jsonl"))  # doctest: +SKIP
        {'inputs': 1000, 'skipped': 0, 'seconds': 4.1, 'inputs_per_second': 243.9}
    """
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world_size > 1 and settings.output == "-":
        raise ValueError("--output - (stdout) cannot be written by several ranks; give a file")
    if world_size > 1 and settings.input == "-":
        raise ValueError("--input - (stdin) cannot be read by several ranks; give a file")
    # Under torchrun "auto" and "cuda" mean this rank's GPU (LOCAL_RANK), which resolve_device picks.
    device = "auto" if world_size > 1 and settings.device == "cuda" else settings.device
    settings.apply_threads()
    pipe = pipeline(settings.model, device=device, dtype=settings.dtype, batch_size=settings.batch_size,
                    backend=settings.backend, quantize=settings.quantize)
    method = settings.method or pipe.methods()[0].replace("_", "-")
    if method.replace("-", "_") not in pipe.methods():
        raise ValueError(f"--method {method}: this {pipe.task} model serves {', '.join(pipe.methods())}")
    records, skipped = read_records(settings, method)
    mine = records[rank::world_size]
    show = settings.progress and rank == 0 and len(mine) > 4 * settings.batch_size
    started = time.perf_counter()
    if world_size == 1:
        if settings.output == "-":
            _write_records(pipe, method, mine, settings, sys.stdout, show)
        else:
            io.atomic_write(settings.output, lambda temporary: _write_part(pipe, method, mine, settings, temporary,
                                                                           show))
    else:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        output = Path(settings.output)
        parts = [output.with_name(f".{output.name}.rank{r}-of-{world_size}") for r in range(world_size)]
        io.atomic_write(parts[rank], lambda temporary: _write_part(pipe, method, mine, settings, temporary, show))
        dist.barrier()
        if rank == 0:
            io.atomic_write(output, lambda temporary: _merge(parts, temporary))
            for part in parts:
                part.unlink()
        dist.barrier()
        dist.destroy_process_group()
    seconds = time.perf_counter() - started
    summary = {"inputs": len(records), "skipped": skipped, "seconds": round(seconds, 3),
               "inputs_per_second": round(len(records) / seconds, 1) if seconds > 0 else None}
    if rank == 0:
        print(f"berta predict: {len(records)} inputs ({method}) in {seconds:.1f}s, "
              f"{summary['inputs_per_second']} inputs/s; {skipped} malformed lines skipped", file=sys.stderr)
    return summary


def _write_part(pipe: Pipeline, method: str, records: list[Record], settings: PredictSettings, path: Path,
                show: bool) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        _write_records(pipe, method, records, settings, handle, show)


def _merge(parts: list[Path], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        _interleave(parts, handle)
