"""The training loop: schedule and parameter groups against `transformers` / hand-written references, gradient
accumulation against a plain PyTorch loop, exact resume after SIGKILL, DDP (2 gloo processes) against one process,
and checkpoints / best model / early stopping / logs.

This file is also the script its subprocesses run (`python tests/test_loop.py MODE OUTPUT_DIR`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import berta
from berta.train import loop
from berta.train.batches import epoch_order
from berta.train.loop import TrainSettings, train
from berta.train.optim import lr_factor, parameter_groups

VOCAB = 64
MASK_ID = 63
PAD_ID = 1
ROOT = Path(__file__).resolve().parents[1]


def toy_config(dropout: float = 0.0) -> berta.EncoderConfig:
    return berta.EncoderConfig.preset("tiny").replace(
        vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=40,
        hidden_dropout=dropout, attention_dropout=dropout,
    )


def toy_model(dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(1234)
    return berta.create(toy_config(dropout), "masked-lm")


def toy_data(count: int = 64) -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    rows = []
    for _ in range(count):
        length = int(torch.randint(6, 17, (1,), generator=generator))
        rows.append([0, *torch.randint(4, MASK_ID, (length,), generator=generator).tolist(), 2])
    return rows


def toy_collate(samples: list[list[int]], indices: list[int], epoch: int) -> dict[str, torch.Tensor]:
    """Pad, and mask ~20% of the inner tokens (at least one) with a generator seeded by (epoch, index)."""
    width = max(len(s) for s in samples)
    input_ids = torch.full((len(samples), width), PAD_ID)
    labels = torch.full((len(samples), width), -100)
    for row, (sample, index) in enumerate(zip(samples, indices, strict=True)):
        generator = torch.Generator().manual_seed(epoch * 100_000 + index)
        ids = torch.tensor(sample)
        chosen = torch.rand(len(sample) - 2, generator=generator) < 0.2
        chosen[int(torch.randint(0, len(sample) - 2, (1,), generator=generator))] = True
        positions = torch.nonzero(chosen).squeeze(1) + 1
        labels[row, positions] = ids[positions]
        ids[positions] = MASK_ID
        input_ids[row, : len(sample)] = ids
    return {
        "input_ids": input_ids,
        "attention_mask": input_ids.ne(PAD_ID).long(),
        "labels": labels,
        "masked_positions": labels.ne(-100),
    }


def quiet(**changes) -> TrainSettings:
    base = dict(progress=False, plot=False, tensorboard=False, log_every=1, warmup_steps=2, lr=3e-3)
    return TrainSettings(**{**base, **changes})


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_same_weights(first: dict, second: dict, tolerance: float) -> None:
    assert first.keys() == second.keys()
    worst = max(float((first[k] - second[k]).abs().max()) for k in first)
    assert worst <= tolerance, f"largest weight difference {worst:.3g} > {tolerance}"




def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records}


# -- schedule and parameter groups -----------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "polynomial", "constant"])
def test_schedule_matches_transformers(schedule: str) -> None:
    from transformers import (
        get_constant_schedule_with_warmup,
        get_linear_schedule_with_warmup,
        get_polynomial_decay_schedule_with_warmup,
    )

    settings = TrainSettings(lr=1e-3, schedule=schedule, power=2.0, end_lr=1e-5)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=settings.lr)
    if schedule == "linear":
        reference = get_linear_schedule_with_warmup(optimizer, 10, 100)
    elif schedule == "polynomial":
        reference = get_polynomial_decay_schedule_with_warmup(optimizer, 10, 100, lr_end=1e-5, power=2.0)
    else:
        reference = get_constant_schedule_with_warmup(optimizer, 10)
    for step in range(120):
        expected = optimizer.param_groups[0]["lr"]
        assert lr_factor(step, 100, 10, settings) * settings.lr == pytest.approx(expected, rel=1e-9, abs=1e-12)
        optimizer.step()
        reference.step()


def test_parameter_groups_no_decay_and_layer_decay() -> None:
    model = toy_model()
    groups = parameter_groups(model, TrainSettings(lr=1.0, weight_decay=0.01, layer_decay=0.5))
    by_name = {name: group for group in groups for name in group["names"]}
    assert len(by_name) == sum(1 for _ in model.parameters())
    # No decay on biases and LayerNorm weights (BERT / RoBERTa); decay on matrices and embeddings.
    assert by_name["encoder.layers.0.attention.norm.weight"]["weight_decay"] == 0.0
    assert by_name["encoder.layers.0.attention.qkv.bias"]["weight_decay"] == 0.0
    assert by_name["head.bias"]["weight_decay"] == 0.0
    assert by_name["encoder.embeddings.norm.weight"]["weight_decay"] == 0.0
    assert by_name["encoder.layers.1.feed_forward.intermediate.weight"]["weight_decay"] == 0.01
    assert by_name["encoder.embeddings.words.weight"]["weight_decay"] == 0.01
    # 2 layers: embeddings 0.5^3, layer 0 0.5^2, layer 1 0.5, head 1.
    assert by_name["encoder.embeddings.words.weight"]["lr"] == 0.125
    assert by_name["encoder.layers.0.attention.qkv.weight"]["lr"] == 0.25
    assert by_name["encoder.layers.1.attention.qkv.weight"]["lr"] == 0.5
    assert by_name["head.dense.weight"]["lr"] == 1.0


# -- the loop against a plain PyTorch loop ---------------------------------------------------------------


def test_accumulation_matches_plain_pytorch_loop(tmp_path: Path) -> None:
    """4 micro-batches of 4 == one batch of 16 through a hand-written AdamW loop (global-batch mean loss)."""
    data = toy_data(48)
    settings = quiet(batch_size=4, grad_accum=4, max_steps=3, weight_decay=0.01, max_grad_norm=1.0)
    model = toy_model()
    train(model, settings, data, toy_collate, tmp_path / "run")

    reference = toy_model()
    decay = [p for n, p in reference.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in reference.named_parameters() if p.dim() <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.01}],
        lr=3e-3, betas=(0.9, 0.98), eps=1e-6,
    )
    order = epoch_order(len(data), settings.seed, 0, True)
    reference.train()
    for step in range(3):
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 * (step / 2 if step < 2 else (3 - step) / 1)
        indices = order[step * 16 : (step + 1) * 16]
        loss = reference(**toy_collate([data[i] for i in indices], indices, 0)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    assert_same_weights(weights(model), weights(reference), 1e-6)


# -- exact resume after SIGKILL --------------------------------------------------------------------------

RESUME_SETTINGS = dict(batch_size=4, max_steps=10, save_every=4, keep_last=2, seed=3)


def _resume_run(output_dir: Path) -> None:
    train(toy_model(dropout=0.1), quiet(**RESUME_SETTINGS), toy_data(), toy_collate, output_dir)


def _hanging_collate(ready: Path, hang_at_call: int):
    calls = {"n": 0}

    def collate(samples, indices, epoch):
        calls["n"] += 1
        if calls["n"] == hang_at_call:
            ready.write_text("waiting to be killed")
            time.sleep(600)
        return toy_collate(samples, indices, epoch)

    return collate


def test_sigkill_then_resume_gives_the_same_losses(tmp_path: Path, one_thread) -> None:
    straight = tmp_path / "straight"
    _resume_run(straight)

    killed = tmp_path / "killed"
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, __file__, "hang", str(killed), str(ready)], cwd=ROOT)
    deadline = time.time() + 60
    while not ready.exists():
        assert child.poll() is None, "the child exited before reaching the step where it waits"
        assert time.time() < deadline, "the child did not reach step 7 within 60 s"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert [p.name for p in loop.checkpoints(killed)] == ["step-0000004"]
    assert max(losses(killed)) == 6  # steps 5 and 6 ran after the checkpoint and are lost with the process

    _resume_run(killed)  # the same call again: resumes from step 4
    expected, resumed = losses(straight), losses(killed)
    assert sorted(resumed) == list(range(1, 11))
    for step in range(1, 11):
        assert abs(resumed[step] - expected[step]) <= 1e-6, (step, resumed[step], expected[step])
    assert_same_weights(
        weights(berta.load(straight / "model")), weights(berta.load(killed / "model")), 1e-6
    )


# -- DDP: two gloo processes == one process with the same global batch -----------------------------------

DDP_SETTINGS = dict(batch_size=4, grad_accum=2, max_steps=4, save_every=2, max_grad_norm=1.0, device="cpu")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """Weights and losses of one process with the global batch of two (batch 8 instead of 4)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("single")
    model = toy_model()
    train(model, quiet(**{**DDP_SETTINGS, "batch_size": 8}), toy_data(), toy_collate, run)
    torch.set_num_threads(threads)
    return weights(model), losses(run)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_processes_equal_one(strategy: str, one_process, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
        "29533" if strategy == "ddp" else "29534", __file__, strategy, str(tmp_path / strategy),
    ]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    finished = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-3000:]
    single_weights, single_losses = one_process
    assert_same_weights(weights(berta.load(tmp_path / strategy / "model")), single_weights, 1e-6)
    distributed_losses = losses(tmp_path / strategy)
    assert sorted(distributed_losses) == sorted(single_losses) == [1, 2, 3, 4]
    for step in single_losses:
        assert abs(distributed_losses[step] - single_losses[step]) <= 1e-6
    assert [p.name for p in loop.checkpoints(tmp_path / strategy)] == ["step-0000002", "step-0000004"]


# -- checkpoints, best model, early stopping, logs -------------------------------------------------------


def test_best_model_early_stopping_retention_and_logs(tmp_path: Path) -> None:
    scores = iter([3.0, 2.0, 2.5, 2.6, 1.0])

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        assert not model.training
        return {"val_loss": next(scores)}

    settings = quiet(
        batch_size=4, max_steps=20, eval_every=2, save_every=2, keep_last=2, log_every=3, best_metric="val_loss",
        early_stopping=2, plot=True,
    )
    saved = []
    result = train(toy_model(), settings, toy_data(), toy_collate, tmp_path, evaluate=evaluate,
                   save_extras=lambda directory: saved.append(directory.name))
    assert result.stopped_early and result.step == 8  # best at step 4, no better at 6 and 8
    assert result.best_metrics == {"val_loss": 2.0, "step": 4}
    assert json.loads((tmp_path / "best" / "best_metrics.json").read_text())["step"] == 4
    assert [p.name for p in loop.checkpoints(tmp_path)] == ["step-0000006", "step-0000008"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3, 4, 6, 8]  # every log_every=3 step and every evaluation
    assert all({"step", "loss", "lr", "tokens_per_s"} <= r.keys() for r in records)
    assert [r.get("val_loss") for r in records] == [3.0, None, 2.0, 2.5, 2.6]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert "model" in saved  # save_extras ran for the final model directory
    loaded = berta.load(tmp_path / "model")
    assert_same_weights(weights(loaded), weights(berta.load(loop.checkpoints(tmp_path)[-1] / "model")), 0.0)

    again = train(toy_model(), settings, toy_data(), toy_collate, tmp_path, evaluate=evaluate)
    assert again.step == 8 and again.stopped_early  # a finished run resumes to "nothing left to do"


def test_too_little_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="20 samples, fewer than one global batch of 32"):
        train(toy_model(), quiet(batch_size=16, grad_accum=2), toy_data(20), toy_collate, tmp_path)


if __name__ == "__main__":
    mode, output = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    if mode == "hang":
        collate = _hanging_collate(Path(sys.argv[3]), hang_at_call=7)
        train(toy_model(dropout=0.1), quiet(**RESUME_SETTINGS), toy_data(), collate, output)
    else:
        train(toy_model(), quiet(**DDP_SETTINGS, distributed=mode), toy_data(), toy_collate, output)
