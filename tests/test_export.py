"""ONNX export: onnxruntime on the exported graph against berta and against `transformers` (the reference)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import transformers
from conftest import minilm_directory

import berta
from berta.cli import main
from berta.inference.export import (
    GRAPHS,
    ExportSettings,
    compare_onnx,
    example_batch,
    export,
    export_onnx,
    output_names,
)
from berta.inference.onnx_backend import OnnxModel
from berta.inference.quantize import quantize

TOLERANCE = 1e-4
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hi!",
    "Paris is the capital and most populous city of France, with an estimated population of two million.",
]
TASKS = sorted(GRAPHS)


def tiny_config(family: str) -> berta.EncoderConfig:
    config = berta.EncoderConfig.preset("tiny").replace(id2label={0: "NEG", 1: "POS", 2: "NEU"})
    if family == "bert":
        config = config.replace(family="bert", pad_token_id=0, position_offset=0, type_vocab_size=2,
                                bos_token_id=None, eos_token_id=None, layer_norm_eps=1e-12)
    return config


def tiny_model(family: str, task: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return berta.create(tiny_config(family), task).eval()


def model_directory(root: Path, family: str, task: str) -> Path:
    """A saved tiny model with a real tokenizer beside it (RoBERTa's byte-level BPE for both families)."""
    directory = root / f"{family}-{task}"
    tiny_model(family, task).save(directory)
    berta.Tokenizer.from_pretrained("roberta").save(directory)
    return directory


def check_batches(model: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    """Shapes and padding patterns the trace never saw: no padding, one token, left padding, long rows."""
    unpadded = example_batch(model, batch=2, seq=5, seed=3)
    unpadded["attention_mask"][:] = 1
    unpadded["input_ids"] = example_batch(model, batch=2, seq=5, seed=4)["input_ids"].clamp(min=5)
    left = {name: value.flip(-1) for name, value in example_batch(model, batch=3, seq=20, seed=5).items()}
    return [unpadded, example_batch(model, batch=1, seq=1), left, example_batch(model, batch=5, seq=64)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], tuple[Path, Path]]:
    """(model directory, `berta export onnx` output) of a tiny model per (family, task), exported once."""
    cache: dict[tuple[str, str], tuple[Path, Path]] = {}

    def get(family: str, task: str) -> tuple[Path, Path]:
        if (family, task) not in cache:
            root = tmp_path_factory.mktemp(f"{family}-{task}")
            source = model_directory(root, family, task)
            cache[family, task] = source, export(ExportSettings(model=source, output=root / "onnx"))
        return cache[family, task]

    return get


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("task", TASKS)
def test_every_task_matches_berta(exported: Callable[[str, str], tuple[Path, Path]], family: str, task: str) -> None:
    source, output = exported(family, task)
    model, path = berta.load(source), output / "model.onnx"
    for features in [example_batch(model, batch=4, seq=13, seed=1), *check_batches(model)]:
        assert compare_onnx(model, path, features).max_difference < TOLERANCE
    encoder, qa = ["last_hidden_state", "pooler_output"], ["start_logits", "end_logits"]
    assert output_names(model) == {"encoder": encoder, "qa": qa}.get(task, ["logits"])


@pytest.mark.parametrize("task", TASKS)
def test_int8_graph_matches_berta_int8(tmp_path: Path, task: str) -> None:
    """The int8 graph (MatMulInteger) does berta's int8 arithmetic, and stays within cosine 0.99 of fp32."""
    model = tiny_model("roberta", task)
    int8 = quantize(copy.deepcopy(model))
    path = export_onnx(int8, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert "MatMulInteger" in {node.op_type for node in onnx.load(str(path)).graph.node}
    assert session.get_outputs()[0].name == output_names(model)[0]
    for features in [example_batch(model, batch=4, seq=13, seed=1), *check_batches(model)]:
        assert compare_onnx(int8, path, features).max_difference < 1e-3
        assert compare_onnx(model, path, features).cosine >= 0.99


def test_minilm_against_transformers(tmp_path: Path) -> None:
    """Real weights (all-MiniLM-L6-v2): onnxruntime on berta's graph equals transformers' BertModel."""
    directory = minilm_directory()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    features = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    model = berta.load(directory)
    path = export_onnx(model, tmp_path / "minilm.onnx")
    reference = transformers.AutoModel.from_pretrained(directory).eval()
    with torch.inference_mode():
        expected = reference(**features).last_hidden_state.numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["last_hidden_state"], {name: value.numpy() for name, value in features.items()})[0]
    mask = features["attention_mask"].bool().numpy()
    assert got.shape == expected.shape
    assert np.abs(got[mask] - expected[mask]).max() < TOLERANCE
    assert np.abs(got[~mask]).max() == 0  # padding rows are zero, as in berta
    assert not model.training  # the exporter's mode switching leaves the model as it was


def test_export_job_writes_a_servable_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = model_directory(tmp_path, "roberta", "classification")
    output = export(ExportSettings(model=source, output=tmp_path / "onnx"))
    written = {path.name for path in output.iterdir()}
    assert {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"} <= written
    assert "max difference to berta" in capsys.readouterr().out
    # The tokenizer beside the graph is the model's: transformers reads it and encodes the same ids.
    theirs = transformers.AutoTokenizer.from_pretrained(output)(SENTENCES)["input_ids"]
    assert theirs == transformers.AutoTokenizer.from_pretrained(source)(SENTENCES)["input_ids"]
    assert berta.EncoderConfig.from_file(output / "config.json") == berta.EncoderConfig.from_file(
        source / "config.json"
    )


def test_export_job_int8_and_sentence_transformers_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = export(ExportSettings(model=minilm_directory(), output=tmp_path / "onnx", quantize="int8"))
    assert "mean cosine to fp32" in capsys.readouterr().out
    assert (output / "1_Pooling" / "config.json").is_file() and (output / "modules.json").is_file()
    fp32 = berta.load(minilm_directory())
    int8 = [item for item in onnx.load(str(output / "model.onnx")).graph.initializer
            if item.data_type == onnx.TensorProto.INT8]
    assert len(int8) == 4 * fp32.config.num_layers  # query-key-value, attention output, intermediate, output
    batch = berta.Tokenizer.from_pretrained(output)(SENTENCES, return_tensors="pt")
    got = OnnxModel(output)(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    with torch.inference_mode():
        expected = fp32(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].bool()
    assert torch.nn.functional.cosine_similarity(got[mask], expected[mask]).mean() >= 0.99


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = model_directory(tmp_path, "bert", "classification")  # BERT classifiers hold the encoder's pooler
    main(["export", "onnx", str(source), str(tmp_path / "onnx"), "--quantize", "int8", "--task", "encoder"])
    assert "int8" in capsys.readouterr().out
    served = OnnxModel(tmp_path / "onnx")
    assert served.task == "encoder" and served.output_names[0] == "last_hidden_state"


def test_external_data_past_the_size_threshold(tmp_path: Path) -> None:
    """Weights over `external_data_bytes` (2 GB in use; 0 here) live in model.onnx.data beside the graph."""
    source = model_directory(tmp_path, "bert", "qa")
    output = export(ExportSettings(model=source, output=tmp_path / "onnx", external_data_bytes=0))
    files = sorted(p.name for p in output.iterdir() if p.name.startswith("model.onnx"))
    assert files == ["model.onnx", "model.onnx.data"]
    assert (output / "model.onnx").stat().st_size < (output / "model.onnx.data").stat().st_size / 10
    assert not [p for p in output.iterdir() if p.name.startswith(".")]  # the scratch export is gone
    model = berta.load(source)
    for features in check_batches(model):
        assert compare_onnx(model, output / "model.onnx", features).max_difference < TOLERANCE


def test_disagreement_writes_nothing(tmp_path: Path) -> None:
    source = model_directory(tmp_path, "roberta", "tokens")
    with pytest.raises(ValueError, match=r"differs from berta by .* nothing written"):
        export(ExportSettings(model=source, output=tmp_path / "onnx", tolerance=0.0))
    assert not (tmp_path / "onnx").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("old")
    with pytest.raises(ValueError, match="mean cosine"):
        export(ExportSettings(model=source, output=existing, quantize="int8", int8_cosine=1.01))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith((".existing", "existing"))] == ["existing"]
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


def test_no_tokenizer_is_an_error(tmp_path: Path) -> None:
    tiny_model("roberta", "encoder").save(tmp_path / "model")
    with pytest.raises(ValueError, match="no tokenizer to write beside the graph"):
        export(ExportSettings(model=tmp_path / "model", output=tmp_path / "onnx"))
    assert not (tmp_path / "onnx").exists()


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("task", TASKS)
def test_onnx_backend_equals_the_torch_model(
    exported: Callable[[str, str], tuple[Path, Path]], family: str, task: str
) -> None:
    source, output = exported(family, task)
    model, served = berta.load(source), OnnxModel(output)
    assert served.task == task and served.config == model.config
    for features in check_batches(model):
        with torch.inference_mode():
            expected = model(**features)
        got = served(**features, output_attentions=False)
        mask = features["attention_mask"].bool()
        for name in output_names(model):
            value, reference = getattr(got, name), getattr(expected, name)
            assert isinstance(value, torch.Tensor) and value.shape == reference.shape
            if reference.shape[: mask.dim()] == mask.shape:
                value, reference = value[mask], reference[mask]
            torch.testing.assert_close(value, reference, atol=TOLERANCE, rtol=TOLERANCE)
        assert got.loss is None and got.attentions is None


def test_onnx_backend_checks_token_types(exported: Callable[[str, str], tuple[Path, Path]], tmp_path: Path) -> None:
    served = OnnxModel(exported("roberta", "encoder")[1])
    features = example_batch(served, batch=2, seq=6)
    with pytest.raises(ValueError, match="take no segment ids"):
        served(features["input_ids"], features["attention_mask"], torch.ones_like(features["input_ids"]))
    with pytest.raises(FileNotFoundError, match="ONNX graph .*model.onnx: no such file"):
        OnnxModel(tmp_path)


def test_rejects_non_fp32(tmp_path: Path) -> None:
    model = berta.create(tiny_config("roberta"), "encoder").to(torch.bfloat16)
    with pytest.raises(ValueError, match="fp32 model"):
        export_onnx(model, tmp_path / "model.onnx")


PIPELINE_CALLS = {
    "encoder": lambda pipe: pipe.embed(SENTENCES).tolist(),
    "masked-lm": lambda pipe: pipe.fill_mask(["Paris is the <mask> of France."], top_k=3),
    "classification": lambda pipe: pipe.classify(SENTENCES, top_k=None),
    "tokens": lambda pipe: pipe.tag(SENTENCES, aggregation="none"),
    "qa": lambda pipe: pipe.answer(["What is Paris?"], [SENTENCES[2]], top_k=2),
    "multiple-choice": lambda pipe: pipe.choose(SENTENCES[:2], [["yes", "no"], ["a cat", "a dog"]]),
}


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return abs(a - b) < TOLERANCE
    return a == b


@pytest.mark.parametrize("task", TASKS)
def test_pipeline_on_an_exported_directory_equals_the_torch_pipeline(
    exported: Callable[[str, str], tuple[Path, Path]], task: str
) -> None:
    source, output = exported("roberta", task)
    torch_pipe, onnx_pipe = berta.pipeline(source), berta.pipeline(output)  # "auto": the graph's directory
    assert isinstance(onnx_pipe.model, OnnxModel) and not isinstance(torch_pipe.model, OnnxModel)
    expected, got = PIPELINE_CALLS[task](torch_pipe), PIPELINE_CALLS[task](onnx_pipe)
    assert _close(got, expected), (got, expected)
    with pytest.raises(ValueError, match="keeps the precision it was exported with"):
        berta.pipeline(output, quantize="int8")
