"""Ctrl-C and SIGTERM during training: a real signal to a real `berta pretrain` / `berta finetune` process (and
to one rank of two gloo processes under torchrun) saves a checkpoint, prints one line, exits 130 / 143 without a
traceback, and the same command resumes from that step exactly (the losses of an uninterrupted run).

This file is also the script its torchrun workers run (`python tests/test_interrupt.py OUTPUT_DIR [READY GO]`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_loop import assert_same_weights, losses, quiet, toy_collate, toy_data, toy_model, weights
from test_pretrain import corpus  # noqa: F401 - the prepared corpus fixture
from test_resume import finetune_command, tiny_classifier_inputs  # noqa: F401 - fixture

import berta
from berta import cli
from berta.train import TrainingInterruptedError, checkpoints, train

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
INTERRUPTED = re.compile(r"^berta: interrupted at step (\d+); saved; run the same command to resume$")




def interrupt_job(command: list[str], run: Path, signal_number: int, after_records: int = 2) -> int:
    """Run `berta COMMAND` in a subprocess, send it `signal_number` once it has logged `after_records` steps;
    check the exit code, the one line and the checkpoint; return the step it stopped at."""
    child = subprocess.Popen([sys.executable, "-m", "berta.cli", *command], cwd=ROOT, env=ENVIRONMENT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= after_records):
        assert child.poll() is None, child.communicate()[1][-3000:]
        assert time.time() < deadline, "the job logged no steps within 120 s"
        time.sleep(0.02)
    child.send_signal(signal_number)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 128 + signal_number, stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    match = INTERRUPTED.match(last)
    assert match, last
    step = int(match.group(1))
    assert [p.name for p in checkpoints(run)][-1] == f"step-{step:07d}"
    assert max(losses(run)) == step
    return step


def test_ctrl_c_during_pretrain_saves_and_the_same_command_resumes_exactly(corpus, tmp_path: Path,  # noqa: F811
                                                                           one_thread) -> None:
    data, _ = corpus

    def command(output: Path) -> list[str]:
        return ["pretrain", "--data", str(data), "--model", "tiny", "--output", str(output), "--max-steps", "40",
                "--batch-size", "8", "--lr", "1e-3", "--eval-every", "10", "--save-every", "1000", "--log-every",
                "1", "--seed", "0", "--validation-samples", "8", "--no-progress", "--no-plot", "--no-tensorboard"]

    cli.main(command(tmp_path / "straight"))
    run = tmp_path / "interrupted"
    step = interrupt_job(command(run), run, signal.SIGINT)
    assert 2 <= step < 40
    cli.main(command(run))  # the same command again
    expected, resumed = losses(tmp_path / "straight"), losses(run)
    assert sorted(resumed) == list(range(1, 41))
    for number in range(1, 41):
        assert abs(resumed[number] - expected[number]) <= 1e-6, (number, resumed[number], expected[number])
    assert_same_weights(weights(berta.load(tmp_path / "straight" / "model")), weights(berta.load(run / "model")),
                        1e-6)


def test_sigterm_during_finetune_saves_although_save_every_is_0(tiny_classifier_inputs, tmp_path: Path,  # noqa: F811
                                                                one_thread) -> None:
    model, train_file, validation = tiny_classifier_inputs

    def command(output: Path) -> list[str]:
        return [*finetune_command(model, train_file, validation, output, "--log-every", "1", "--lr", "1e-3"),
                "--epochs", "10"]

    cli.main(command(tmp_path / "straight"))
    run = tmp_path / "interrupted"
    step = interrupt_job(command(run), run, signal.SIGTERM)
    assert 2 <= step < 40
    cli.main(command(run))
    expected, resumed = losses(tmp_path / "straight"), losses(run)
    assert sorted(resumed) == sorted(expected) == list(range(1, 41))
    for number in expected:
        assert abs(resumed[number] - expected[number]) <= 1e-6, (number, resumed[number], expected[number])
    straight_report = json.loads((tmp_path / "straight" / "eval_results.json").read_text())
    resumed_report = json.loads((run / "eval_results.json").read_text())
    assert resumed_report.keys() == straight_report.keys()
    for key, value in straight_report.items():
        if isinstance(value, dict):  # per-label precision / recall / f1 / support: ratios of the same counts
            assert resumed_report[key] == value, key
        else:
            assert resumed_report[key] == pytest.approx(value, abs=1e-6), key


def test_in_process_interrupt_raises_after_saving(tmp_path: Path) -> None:
    """SIGINT to this very process during `train`: the exception says the step; the handler is put back."""
    calls = {"n": 0}

    def collate(samples, indices, epoch):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return toy_collate(samples, indices, epoch)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterruptedError) as interrupted:
        train(toy_model(), quiet(batch_size=4, max_steps=10, save_every=0), toy_data(), collate, tmp_path)
    assert (interrupted.value.step, interrupted.value.exit_code) == (3, 130)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-0000003"]
    assert signal.getsignal(signal.SIGINT) is before


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path: Path) -> None:
    calls = {"n": 0}

    def collate(samples, indices, epoch):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return toy_collate(samples, indices, epoch)

    with pytest.raises(KeyboardInterrupt) as interrupted:
        train(toy_model(), quiet(batch_size=4, max_steps=10, save_every=0), toy_data(), collate, tmp_path)
    assert not isinstance(interrupted.value, TrainingInterruptedError)
    assert checkpoints(tmp_path) == [] and max(losses(tmp_path)) == 2


# -- torchrun: one rank's SIGTERM stops both ranks at the same step with one checkpoint ---------------------

DDP_SETTINGS = dict(batch_size=4, grad_accum=2, max_steps=6, save_every=100, device="cpu")


def test_sigterm_to_one_rank_stops_both_with_one_checkpoint(tmp_path: Path, one_thread) -> None:
    single = tmp_path / "single"
    reference = toy_model()
    train(reference, quiet(**{**DDP_SETTINGS, "batch_size": 8}), toy_data(), toy_collate, single)

    run, ready, go = tmp_path / "ddp", tmp_path / "ready", tmp_path / "go"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(free_port()), __file__, str(run)]
    child = subprocess.Popen([*launch, str(ready), str(go)], cwd=ROOT, env=ENVIRONMENT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not ready.is_file():
        assert child.poll() is None, child.communicate()[0][-3000:]
        assert time.time() < deadline, "rank 1 did not reach step 3 within 120 s"
        time.sleep(0.02)
    os.kill(int(ready.read_text()), signal.SIGTERM)  # rank 1 only
    go.touch()
    output, _ = child.communicate(timeout=120)
    assert child.returncode != 0
    assert output.count("interrupted at step 3; saved; run the same command to resume") == 2, output[-3000:]
    assert [p.name for p in checkpoints(run)] == ["step-0000003"]
    assert sorted(losses(run)) == [1, 2, 3]

    resumed = subprocess.run(launch, cwd=ROOT, env=ENVIRONMENT, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = losses(single), losses(run)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 5, 6]
    for number in expected:
        assert abs(got[number] - expected[number]) <= 1e-6, (number, got[number], expected[number])
    assert_same_weights(weights(berta.load(run / "model")), weights(reference), 1e-6)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _waiting_collate(ready: Path, go: Path):
    """Rank 1's collator: at its 5th call (step 3) it says its pid and waits until the test has signalled it."""
    calls = {"n": 0}
    rank = int(os.environ["RANK"])

    def collate(samples, indices, epoch):
        calls["n"] += 1
        if rank == 1 and calls["n"] == 5:
            ready.with_suffix(".tmp").write_text(str(os.getpid()))
            ready.with_suffix(".tmp").rename(ready)
            while not go.exists():
                time.sleep(0.02)
        return toy_collate(samples, indices, epoch)

    return collate


if __name__ == "__main__":
    torch.set_num_threads(1)
    output = Path(sys.argv[1])
    collate = _waiting_collate(Path(sys.argv[2]), Path(sys.argv[3])) if len(sys.argv) > 3 else toy_collate
    try:
        train(toy_model(), quiet(**DDP_SETTINGS), toy_data(), collate, output)
    except TrainingInterruptedError as interrupt:
        print(f"rank {os.environ['RANK']}: {interrupt}", flush=True)
        sys.exit(interrupt.exit_code)
