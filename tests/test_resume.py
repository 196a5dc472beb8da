"""Resuming a run directory: a training state never unpickles code; the run's settings and data fingerprints
against the new command's (identical → resume, allowed changes → resume and say so, anything else → one line
naming each change and the ways out); `--no-resume` moves the old run aside; best/, model/ and checkpoints share
files instead of holding copies."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from test_loop import losses, quiet, toy_collate, toy_data, toy_model
from test_pretrain import WORDS, fairseq_layout_tokenizer

import berta
from berta import cli
from berta.data.corpus import PrepareSettings, prepare
from berta.train import checkpoints, train

RUN = dict(batch_size=4, max_steps=4, save_every=2)
WAYS_OUT = "run with --no-resume to move the old run aside and start over, or choose a new --output"


class Payload:
    """Unpickles as a call to os.system: what a crafted training state would smuggle in."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    train(toy_model(), quiet(**RUN), toy_data(), toy_collate, run)
    return run


@pytest.mark.parametrize("file_name", ["trainer_state.pt", "rng-0.pt"])
def test_a_pickled_call_in_the_training_state_is_refused_and_never_runs(tmp_path: Path, file_name: str,
                                                                        finished_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    marker = tmp_path / "the-payload-ran"
    state_file = checkpoints(run)[-1] / file_name
    state = torch.load(state_file, weights_only=True)
    state["torch" if file_name.startswith("rng") else "progress"] = Payload(f"touch {marker}")
    torch.save(state, state_file)
    with pytest.raises(ValueError, match=rf"{file_name}: refused to load: it asks to unpickle posix\.system"):
        train(toy_model(), quiet(**{**RUN, "max_steps": 6}), toy_data(), toy_collate, run)
    assert not marker.exists()


def test_changed_settings_are_refused_in_one_line_naming_each_change(finished_run: Path) -> None:
    written = (finished_run / "train_settings.json").read_text()
    with pytest.raises(ValueError) as refused:
        train(toy_model(), quiet(**RUN, lr=1e-3, weight_decay=0.1), toy_data(), toy_collate, finished_run)
    assert str(refused.value) == (
        f"{finished_run} was trained to step 4 with other settings: --lr 0.003 → 0.001, --weight-decay 0.01 → 0.1; "
        f"{WAYS_OUT}"
    )
    with pytest.raises(ValueError, match=r"with other settings: training samples 64 → 80; run with --no-resume"):
        train(toy_model(), quiet(**RUN), toy_data(80), toy_collate, finished_run)
    assert (finished_run / "train_settings.json").read_text() == written  # a refused run changes nothing


def test_allowed_changes_resume_and_say_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    train(toy_model(), quiet(**RUN), toy_data(), toy_collate, run)
    first = losses(run)
    with caplog.at_level(logging.INFO, logger="berta.train.loop"):
        result = train(toy_model(), quiet(**{**RUN, "max_steps": 6, "log_every": 2}), toy_data(), toy_collate, run)
    assert (f"resuming {run} at step 4 with changed settings: --log-every 1 → 2, --max-steps 4 → 6 (the "
            "learning-rate schedule runs to step 6)") in caplog.text
    assert result.step == 6
    again = losses(run)
    assert sorted(again) == [1, 2, 3, 4, 6] and all(again[step] == first[step] for step in first)
    assert json.loads((run / "train_settings.json").read_text())["max_steps"] == 6


def test_no_resume_moves_the_old_run_aside_and_starts_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(toy_model(), quiet(**RUN), toy_data(), toy_collate, run)
    old_losses = losses(run)
    result = train(toy_model(), quiet(**RUN, lr=1e-3, resume=False), toy_data(), toy_collate, run)
    assert result.step == 4 and sorted(losses(run)) == [1, 2, 3, 4]
    assert losses(run)[1] == old_losses[1] and losses(run)[4] != old_losses[4]  # same start, another lr
    assert losses(tmp_path / "run.old") == old_losses
    assert json.loads((tmp_path / "run.old" / "train_settings.json").read_text())["lr"] == 3e-3
    assert [p.name for p in checkpoints(tmp_path / "run.old")] == ["step-0000002", "step-0000004"]
    train(toy_model(), quiet(**RUN, resume=False), toy_data(), toy_collate, run)
    assert (tmp_path / "run.old-2" / "metrics.jsonl").is_file()


# -- through the jobs: what issue 9 observed ------------------------------------------------------------


def reviews(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = ["text,label"]
    for _ in range(count):
        label = rng.choice(["good", "bad"])
        words = rng.sample(["fine", "great", "lovely"] if label == "good" else ["awful", "dull", "poor"], 2)
        rows.append(f"{' '.join(words)} film,{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_classifier_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from test_finetune import tiny_model

    root = tmp_path_factory.mktemp("finetune-inputs")
    model = tiny_model(root / "model", berta.Tokenizer.from_pretrained("roberta"))
    return model, reviews(root / "train.csv", 32, 0), reviews(root / "dev.csv", 8, 1)


def finetune_command(model: Path, train_file: Path, validation: Path, output: Path, *extra: str) -> list[str]:
    return ["finetune", "--task", "classification", "--model", str(model), "--train", str(train_file),
            "--validation", str(validation), "--output", str(output), "--epochs", "1", "--batch-size", "8",
            "--max-length", "16", "--no-progress", "--no-tensorboard", "--no-plot", *extra]


def test_finetune_refuses_another_lr_and_another_task_in_its_directory(tmp_path: Path, tiny_classifier_inputs
                                                                       ) -> None:
    model, train_file, validation = tiny_classifier_inputs
    output = tmp_path / "run"
    cli.main(finetune_command(model, train_file, validation, output, "--lr", "2e-5"))
    with pytest.raises(SystemExit) as refused:
        cli.main(finetune_command(model, train_file, validation, output, "--lr", "1e-4", "--epochs", "2"))
    assert str(refused.value) == (
        f"berta: error: {output} was trained to step 4 with other settings: --lr 2e-05 → 0.0001; {WAYS_OUT}"
    )
    # The same run spelled with relative paths (and a moved training file of the same contents) resumes.
    moved = tmp_path / "moved.csv"
    moved.write_bytes(train_file.read_bytes())
    cli.main(finetune_command(os.path.relpath(model), os.path.relpath(moved), validation, output, "--lr", "2e-5"))
    tags = tmp_path / "tags.conll"
    tags.write_text("Ada\tB-PER\nsmiled\tO\n\n" * 16)
    command = finetune_command(model, tags, tags, output)
    command[command.index("classification")] = "tokens"
    with pytest.raises(SystemExit) as refused:
        cli.main(command)
    assert str(refused.value) == (
        f"berta: error: {output} holds a finetune run of --task classification --model {model}, not --task tokens "
        f"--model {model}; {WAYS_OUT}"
    )


def test_pretrain_refuses_data_prepared_again_with_another_block_size(tmp_path: Path) -> None:
    generator = random.Random(0)
    (tmp_path / "text.txt").write_text(
        "\n".join(" ".join(generator.choice(WORDS) for _ in range(9)) + "." for _ in range(120)) + "\n"
    )
    tokenizer = fairseq_layout_tokenizer(tmp_path / "tokenizer")

    def prepare_blocks(block_size: int) -> None:
        prepare(PrepareSettings(files=[tmp_path / "text.txt"], tokenizer=str(tokenizer), output=tmp_path / "data",
                                block_size=block_size, validation_fraction=0.0, progress=False))

    prepare_blocks(32)
    command = ["pretrain", "--data", str(tmp_path / "data"), "--model", "tiny", "--output", str(tmp_path / "run"),
               "--max-steps", "2", "--batch-size", "4", "--no-progress", "--no-plot", "--no-tensorboard"]
    cli.main(command)
    prepare_blocks(16)
    with pytest.raises(SystemExit, match=re.escape(f"{tmp_path / 'run'} was trained to step 2 with other settings: "
                                                   "--data contents sha256:") + r"[0-9a-f]{16} → sha256:[0-9a-f]{16}; "
                                         + re.escape(WAYS_OUT)):
        cli.main(command)


# -- disk: no second copy of the same bytes -----------------------------------------------------------------


def test_best_and_model_are_hard_links_not_copies(tmp_path: Path) -> None:
    scores = iter([3.0, 2.0, 2.5])

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return {"val_loss": next(scores)}

    settings = quiet(batch_size=4, max_steps=6, eval_every=2, save_every=2, keep_last=2, best_metric="val_loss",
                     restore_best=True)
    result = train(toy_model(), settings, toy_data(), toy_collate, tmp_path, evaluate=evaluate)
    assert result.best_metrics["step"] == 4
    weights = "model.safetensors"
    best, model = os.stat(tmp_path / "best" / weights), os.stat(tmp_path / "model" / weights)
    step_4 = os.stat(tmp_path / "checkpoints" / "step-0000004" / "model" / weights)
    assert best.st_ino == model.st_ino == step_4.st_ino and best.st_nlink == 3  # one file, three names
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", weights]
    assert (tmp_path / "best" / "best_metrics.json").is_file()
    # Retention removes step 2 and keeps 4 and 6; best/ and model/ keep their files whatever goes.
    assert [p.name for p in checkpoints(tmp_path)] == ["step-0000004", "step-0000006"]
    loaded = berta.load(tmp_path / "model")
    expected = berta.load(tmp_path / "checkpoints" / "step-0000004" / "model")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), expected.state_dict().values(),
                                                 strict=True))
