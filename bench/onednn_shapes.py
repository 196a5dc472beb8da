"""bf16 and int8 on CPU when every batch has a new shape: what packed weights and rounded row counts buy.

oneDNN (behind PyTorch's bfloat16 matmul and berta's int8 one) builds a kernel for each input shape it meets and
caches it. berta's packed path has one row per real token, so a batch of natural texts has a row count of its own
nearly every time. This bench encodes new Rotten Tomatoes snippets in every repeat (file order, batches of 32,
all-MiniLM-L6-v2) with models that differ in one thing at a time, in turns batch by batch, and prints each one's
speed as a multiple of berta fp32's:

- bf16 plain: `model.to(torch.bfloat16)`, row counts as they come (`F.linear`: what berta did before);
- bf16 packed: `berta.load(dtype="bfloat16")` (weights packed once for oneDNN, `PackedLinear`), row counts as they come;
- bf16: `berta.load(dtype="bfloat16")` as shipped, row counts rounded up (`berta.model.padded_row_count`);
- int8 plain / int8: `quantize="int8"` with row counts as they come / rounded up.

    .venv/bin/python bench/onednn_shapes.py                  # 512 snippets x 6 repeats (~3 min on 2 cores)
    .venv/bin/python bench/onednn_shapes.py --snippets 256 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from encoder_forward import THREADS, minilm_directory, natural_workload, torch_inputs

import berta
from berta.demo import rotten_tomatoes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snippets", type=int, default=512, help="new snippets per repeat (default 512)")
    parser.add_argument("--repeats", type=int, default=6, help="timed passes (default 6)")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    directory = minilm_directory()
    corpus = [text for text, _ in rotten_tomatoes()]
    if args.snippets * args.repeats > len(corpus):
        raise SystemExit(f"{args.snippets} x {args.repeats} snippets is more than the corpus's {len(corpus)}")
    pad_id = berta.EncoderConfig.from_file(directory / "config.json").pad_token_id
    workloads = [
        natural_workload(directory, corpus[r * args.snippets : (r + 1) * args.snippets], pad_id)
        for r in range(args.repeats)
    ]

    def unrounded(model: torch.nn.Module) -> torch.nn.Module:
        model.per_shape_kernels = lambda: False  # the row counts as they come
        return model

    models = {
        "fp32": berta.load(directory, task="encoder"),
        "bf16 plain": unrounded(berta.load(directory, task="encoder").to(torch.bfloat16)),
        "bf16 packed": unrounded(berta.load(directory, task="encoder", dtype="bfloat16")),
        "bf16": berta.load(directory, task="encoder", dtype="bfloat16"),
        "int8 plain": unrounded(berta.load(directory, task="encoder", quantize="int8")),
        "int8": berta.load(directory, task="encoder", quantize="int8"),
    }
    names = list(models)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for repeat, workload in enumerate(workloads):
            spent = dict.fromkeys(names, 0.0)
            for index, batch in enumerate(workload.batches):
                inputs = torch_inputs(batch)
                shift = (repeat + index) % len(names)  # who goes first rotates: load bursts hit all alike
                for name in names[shift:] + names[:shift]:
                    start = time.perf_counter()
                    models[name](*inputs)
                    spent[name] += time.perf_counter() - start
            for name in names:
                seconds[name].append(spent[name])
            line = ", ".join(f"{name} {spent['fp32'] / spent[name]:.2f}x" for name in names[1:])
            print(
                f"repeat {repeat + 1}/{args.repeats} ({workload.real_tokens} real tokens): {line}",
                file=sys.stderr,
                flush=True,
            )
    print(f"| model | x berta fp32 (median of {args.repeats} repeats, {args.snippets} new snippets each) |")
    print("|---|---:|")
    for name in names:
        ratio = statistics.median(fp32 / mine for fp32, mine in zip(seconds["fp32"], seconds[name], strict=True))
        print(f"| {name} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
