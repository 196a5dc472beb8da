"""Pretraining step throughput: berta against `transformers`, on the same config, data and batch.

berta's step: `MaskingCollator` (dynamic 15% masking) -> `MaskedLM` with the LM head at the masked positions
only -> backward -> AdamW (the loop's `build_optimizer`). The reference step: `DataCollatorForLanguageModeling`
(15%) -> `RobertaForMaskedLM` (sdpa attention; the LM head scores every position) -> backward -> `torch.optim.AdamW`.
Both collate the same packed blocks (full-length samples, no padding, as pretraining blocks are) each step, and
the two steps alternate in one process, so load on a shared machine hits both alike; medians are reported.

Also reported, per implementation:
- the share of the step spent in the LM head: its forward + backward timed alone on the step's head input
  (masked rows for berta, every row for transformers), divided by the step time;
- model-FLOPs utilisation: the FLOPs each implementation performs per step (matmuls of the encoder, attention
  and its own LM head, x3 for forward + backward) per second, over a measured peak (a large fp32 matmul);
- peak training memory on top of the weights (gradients, optimizer state, activations, logits) over two steps:
  `torch.cuda.max_memory_allocated` on GPU; on CPU, in a fresh process per implementation, the resident-set
  high-water mark (VmHWM, reset before the first step) minus the resident set before it.

    .venv/bin/python -P bench/pretrain_throughput.py                    # small and roberta-base configs
    .venv/bin/python -P bench/pretrain_throughput.py --configs small --steps 10 --output small.json

(`-P` keeps bench/ off the import path: a file there named like a standard module would shadow it.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import berta
from berta.data.masking import MaskingCollator, MaskingVocabulary
from berta.tokenizer import Tokenizer
from berta.train.optim import build_optimizer
from berta.train.pretrain import masked_lm_loss
from berta.train.settings import TrainSettings

ASSETS = Path(berta.__file__).parent / "assets" / "gpt2-bpe"
VOCAB_SIZE = 50265  # roberta-base's vocabulary (fairseq dict.txt), for both configs
MASK_PROB = 0.15
CONFIGS = {
    # name: (layers, hidden, heads, intermediate, sequence length, batch size)
    "small": (4, 256, 4, 1024, 128, 32),
    "roberta-base": (12, 768, 12, 3072, 128, 8),
}


def fairseq_tokenizer(directory: Path) -> Tokenizer:
    """GPT-2 BPE in fairseq's id layout (<s>=0, <pad>=1, </s>=2, <unk>=3), RoBERTa's; saved for transformers."""
    source = directory / "bpe"
    source.mkdir()
    shutil.copy(ASSETS / "vocab.json", source)
    shutil.copy(ASSETS / "merges.txt", source)
    (source / "dict.txt").write_text("".join(f"{i} 1\n" for i in range(50257)))
    tokenizer = Tokenizer.from_pretrained(source)
    tokenizer.save(directory / "tokenizer")
    return tokenizer


def blocks(count: int, length: int, tokenizer: Tokenizer, seed: int = 0) -> list[np.ndarray]:
    """Full-length packed samples `<s> ... </s>` of random non-special tokens."""
    generator = np.random.default_rng(seed)
    rows = generator.integers(4, len(tokenizer) - 1, size=(count, length))
    rows[:, 0], rows[:, -1] = tokenizer.cls_id, tokenizer.sep_id
    return list(rows)


def encoder_flops(layers: int, hidden: int, intermediate: int, seq: int, tokens: int) -> float:
    """Forward matmul FLOPs of the encoder layers for `tokens` tokens in sequences of `seq`."""
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * intermediate) + 2 * 2 * seq * hidden
    return float(layers * per_token * tokens)


def head_flops(hidden: int, vocab: int, rows: int) -> float:
    """Forward FLOPs of the LM head (dense + decoder) on `rows` scored tokens."""
    return float(2 * (hidden * hidden + hidden * vocab) * rows)


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Measured fp32 matmul FLOP/s: the best of `repeats` size x size products."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats + 2):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(function: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    function()
    _sync(device)
    return time.perf_counter() - start


@dataclass
class Implementation:
    step: Callable[[], None]  # one training step on the next batch
    head: Callable[[], None]  # the LM head's forward + backward alone, on this step's head input
    flops: float  # matmul FLOPs of one step (forward + backward)


def _samples(name: str, tokenizer: Tokenizer, seed: int) -> Callable[[], tuple[list[np.ndarray], list[int]]]:
    """The batches both implementations see: the same packed blocks, in the same order."""
    _, _, _, _, seq, batch_size = CONFIGS[name]
    samples = blocks(batch_size * 8, seq, tokenizer, seed)
    state = {"k": 0}

    def next_batch() -> tuple[list[np.ndarray], list[int]]:
        start = (state["k"] * batch_size) % len(samples)
        state["k"] += 1
        indices = list(range(start, start + batch_size))
        return [samples[i] for i in indices], indices

    return next_batch


def build_berta(name: str, tokenizer: Tokenizer, device: torch.device, seed: int = 0) -> Implementation:
    layers, hidden, heads, intermediate, seq, batch_size = CONFIGS[name]
    config = berta.EncoderConfig.preset("roberta-base").replace(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=intermediate
    )
    torch.manual_seed(seed)
    model = berta.create(config, "masked-lm").to(device).train()
    optimizer = build_optimizer(model, TrainSettings(lr=1e-4))
    collator = MaskingCollator(MaskingVocabulary.from_tokenizer(tokenizer), mask_prob=MASK_PROB, seed=seed)
    next_batch = _samples(name, tokenizer, seed)
    masked = int(round(MASK_PROB * (seq - 2))) * batch_size  # MaskingCollator's count (never special tokens)

    def step() -> None:
        chosen, indices = next_batch()
        batch = {k: v.to(device) for k, v in collator(chosen, indices, 0).items()}
        masked_lm_loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def head() -> None:
        rows = torch.randn(masked, hidden, device=device, requires_grad=True)
        targets = torch.randint(0, VOCAB_SIZE, (masked,), device=device)
        logits = model.head(rows, model.encoder.embeddings.words.weight)
        torch.nn.functional.cross_entropy(logits.float(), targets).backward()

    body = encoder_flops(layers, hidden, intermediate, seq, batch_size * seq)
    return Implementation(step, head, 3 * (body + head_flops(hidden, VOCAB_SIZE, masked)))


def build_transformers(name: str, tokenizer: Tokenizer, hf_tokenizer, device: torch.device,
                       seed: int = 0) -> Implementation:
    from transformers import DataCollatorForLanguageModeling, RobertaConfig, RobertaForMaskedLM

    layers, hidden, heads, intermediate, seq, batch_size = CONFIGS[name]
    config = RobertaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = RobertaForMaskedLM._from_config(config, attn_implementation="sdpa").to(device).train()
    no_decay = [p for n, p in model.named_parameters() if "bias" in n or "LayerNorm" in n or "layer_norm" in n]
    decay = [p for p in model.parameters() if not any(p is q for q in no_decay)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4, betas=(0.9, 0.98), eps=1e-6,
    )
    collator = DataCollatorForLanguageModeling(hf_tokenizer, mlm_probability=MASK_PROB, seed=seed)
    next_batch = _samples(name, tokenizer, seed)

    def step() -> None:
        chosen, _ = next_batch()
        features = [{"input_ids": row.tolist(), "attention_mask": [1] * len(row)} for row in chosen]
        batch = {k: v.to(device) for k, v in collator(features).items()}
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def head() -> None:
        grid = torch.randn(batch_size, seq, hidden, device=device, requires_grad=True)
        targets = torch.randint(0, VOCAB_SIZE, (batch_size * seq,), device=device)
        targets[torch.rand(batch_size * seq, device=device) > MASK_PROB] = -100
        logits = model.lm_head(grid)
        torch.nn.functional.cross_entropy(logits.view(-1, VOCAB_SIZE), targets).backward()

    body = encoder_flops(layers, hidden, intermediate, seq, batch_size * seq)
    return Implementation(step, head, 3 * (body + head_flops(hidden, VOCAB_SIZE, batch_size * seq)))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _high_water_mark_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM line")


def training_memory(implementation: str, name: str, device: torch.device, steps: int = 2) -> int:
    """Bytes a training step adds on top of the weights: grads, optimizer state, activations, logits.

    GPU: `max_memory_allocated` over `steps` steps minus the memory allocated before the first one. CPU: run in
    a fresh process, the resident-set high-water mark (VmHWM, reset before the first step) minus the resident set
    before the first step.
    """
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = fairseq_tokenizer(Path(scratch))
        if implementation == "berta":
            built = build_berta(name, tokenizer, device)
        else:
            hf_tokenizer = AutoTokenizer.from_pretrained(Path(scratch) / "tokenizer")
            built = build_transformers(name, tokenizer, hf_tokenizer, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            for _ in range(steps):
                built.step()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated(device) - before
        # Reset the kernel's resident-set high-water mark (VmHWM) to now, so setup peaks do not count.
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss_bytes()
        for _ in range(steps):
            built.step()
        return _high_water_mark_bytes() - before


def _memory_in_subprocess(implementation: str, name: str, device: torch.device) -> int:
    import subprocess
    import sys

    command = [sys.executable, "-P", __file__, "--memory-of", implementation, "--configs", name,
               "--device", str(device)]
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(finished.stdout.strip().splitlines()[-1])


def run(name: str, tokenizer: Tokenizer, hf_tokenizer, device: torch.device, steps: int, warmup: int,
        peak: float) -> dict:
    implementations = {
        "berta": build_berta(name, tokenizer, device),
        "transformers": build_transformers(name, tokenizer, hf_tokenizer, device),
    }
    for _ in range(warmup):
        for implementation in implementations.values():
            implementation.step()
    seconds: dict[str, list[float]] = {key: [] for key in implementations}
    order = list(implementations)
    for repeat in range(steps):
        for key in order if repeat % 2 == 0 else reversed(order):  # alternate who goes first
            seconds[key].append(_timed(implementations[key].step, device))
    _, _, _, _, seq, batch_size = CONFIGS[name]
    tokens = batch_size * seq
    summary: dict = {}
    for key, implementation in implementations.items():
        implementation.head()  # warm-up
        head = statistics.median(_timed(implementation.head, device) for _ in range(3))
        step = statistics.median(seconds[key])
        summary[key] = {
            "step_s": step,
            "tokens_per_s": tokens / step,
            "lm_head_share": head / step,
            "mfu": implementation.flops / step / peak,
        }
    del implementations
    for key in summary:
        # Each in a fresh process on CPU: the resident-set peak of a process that only trains this one.
        used = training_memory(key, name, device) if device.type == "cuda" else _memory_in_subprocess(key, name, device)
        summary[key]["peak_memory_mb"] = used / 2**20
    summary["speedup"] = summary["berta"]["tokens_per_s"] / summary["transformers"]["tokens_per_s"]
    layers, hidden, heads, intermediate, seq, batch_size = CONFIGS[name]
    summary["shape"] = {"layers": layers, "hidden": hidden, "heads": heads, "intermediate": intermediate,
                        "seq": seq, "batch_size": batch_size, "vocab": VOCAB_SIZE, "steps": steps}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=0, help="measured steps per implementation (0: 10 small, 3 base)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    parser.add_argument("--memory-of", choices=["berta", "transformers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    if args.memory_of:  # the subprocess of `_memory_in_subprocess`
        print(training_memory(args.memory_of, args.configs[0], device))
        return
    from transformers import AutoTokenizer

    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
               f"cpu, {torch.get_num_threads()} threads", "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = fairseq_tokenizer(Path(scratch))
        hf_tokenizer = AutoTokenizer.from_pretrained(Path(scratch) / "tokenizer")
        peak = matmul_peak(device)
        results["matmul_peak_tflops"] = peak / 1e12
        print(f"device: {results['device']}; measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
        for name in args.configs:
            steps = args.steps or (10 if name == "small" else 3)
            summary = run(name, tokenizer, hf_tokenizer, device, steps, args.warmup, peak)
            results[name] = summary
            shape = summary["shape"]
            print(f"\n{name}: {shape['layers']} layers, hidden {shape['hidden']}, vocab {shape['vocab']}, "
                  f"seq {shape['seq']}, batch {shape['batch_size']}, fp32, median of {steps} steps")
            print(f"  {'':<13}{'tokens/s':>10}{'step s':>9}{'LM head':>9}{'MFU':>8}{'peak MB':>9}")
            for key in ("berta", "transformers"):
                row = summary[key]
                print(f"  {key:<13}{row['tokens_per_s']:>10.0f}{row['step_s']:>9.3f}{row['lm_head_share']:>9.1%}"
                      f"{row['mfu']:>8.1%}{row['peak_memory_mb']:>9.0f}")
            print(f"  speedup: {summary['speedup']:.2f}x")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
