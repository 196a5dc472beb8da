"""bfloat16 and int8 inference against fp32: all-MiniLM-L6-v2's real weights, references from `transformers`."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import minilm_directory
from torch import nn

import berta
from berta.demo import rotten_tomatoes
from berta.inference.quantize import Int8Linear, PackedLinear, quantize, resolve_dtype

SNIPPETS = 48  # Rotten Tomatoes critic snippets, file order: natural lengths (5-60 tokens)


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_directory())
    texts = [text for text, _ in rotten_tomatoes()[:SNIPPETS]]
    return dict(tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt"))


@pytest.fixture(scope="module")
def reference(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sentence embeddings of transformers' BertModel in fp32 (mean pooling, as sentence-transformers)."""
    model = transformers.AutoModel.from_pretrained(minilm_directory()).eval()
    with torch.inference_mode():
        return embeddings(model(**batch).last_hidden_state, batch["attention_mask"])


def embeddings(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask[..., None].float()
    return F.normalize((hidden.float() * mask).sum(1) / mask.sum(1), dim=-1)  # (batch, hidden)


def cosines(model: nn.Module, batch: dict[str, torch.Tensor], reference: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        hidden = model(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    return (embeddings(hidden, batch["attention_mask"]) * reference).sum(-1)


def test_bfloat16_keeps_minilm_embeddings(batch: dict[str, torch.Tensor], reference: torch.Tensor) -> None:
    model = berta.load(minilm_directory(), dtype="bfloat16")
    assert model.embeddings.words.weight.dtype == torch.bfloat16
    values = cosines(model, batch, reference)
    assert values.mean() >= 0.999
    assert values.min() >= 0.998


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_int8_keeps_minilm_embeddings(batch: dict[str, torch.Tensor], reference: torch.Tensor, dtype: str) -> None:
    model = berta.load(minilm_directory(), dtype=dtype, quantize="int8")
    assert isinstance(model.layers[0].attention.qkv, Int8Linear)
    values = cosines(model, batch, reference)
    assert values.mean() >= 0.99
    assert values.min() >= 0.98


def test_int8_beats_torch_dynamic_quantization(batch: dict[str, torch.Tensor], reference: torch.Tensor) -> None:
    """torch's dynamic int8 (one activation scale per tensor) is the scheme the per-token scales replace."""
    ours = cosines(berta.load(minilm_directory(), quantize="int8"), batch, reference).mean()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        theirs_model = torch.ao.quantization.quantize_dynamic(berta.load(minilm_directory()), {nn.Linear})
    theirs = cosines(theirs_model, batch, reference).mean()
    assert ours > theirs + 0.03


def test_int8_rows_do_not_depend_on_their_batch(batch: dict[str, torch.Tensor]) -> None:
    """Per-token scales: a sentence encodes the same alone and inside a batch (per-tensor scales would not)."""
    model = berta.load(minilm_directory(), quantize="int8")
    length = int(batch["attention_mask"][3].sum())
    with torch.inference_mode():
        together = model(batch["input_ids"], batch["attention_mask"]).last_hidden_state[3, :length]
        alone = model(batch["input_ids"][3:4, :length], batch["attention_mask"][3:4, :length]).last_hidden_state[0]
    torch.testing.assert_close(alone, together, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel", ["onednn", "int_mm"])
def test_int8_linear_is_exact_integer_arithmetic(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both int8 kernels (oneDNN's packed matmul on CPU, `torch._int_mm` for exports and other devices) against
    the same quantization computed in float64 (integer products are exact there)."""
    import berta.inference.quantize as quantize_module

    if kernel == "onednn":
        assert quantize_module._ONEDNN, "this x86 PyTorch build has oneDNN's int8 matmul"
    else:
        monkeypatch.setattr(quantize_module, "_ONEDNN", False)
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    x = torch.randn(2, 7, 96) * torch.linspace(0.1, 10, 96)  # features of very different magnitudes
    layer = Int8Linear.from_linear(linear)
    weight_scale = linear.weight.detach().abs().amax(1).double() / 127
    weight = torch.round(linear.weight.detach().double() / weight_scale[:, None])  # (out, in), integers
    token_scale = x.abs().amax(-1, keepdim=True).double() / 127
    tokens = torch.round(x.double() / token_scale)  # integers in [-127, 127]
    expected = (tokens @ weight.t()) * token_scale * weight_scale + linear.bias.detach().double()
    assert weight.abs().max() == 127 and layer.weight_t.dtype == torch.int8
    torch.testing.assert_close(layer(x).double(), expected, atol=1e-5, rtol=1e-5)
    assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_cast_keeps_scales_in_float32() -> None:
    model = quantize(berta.create(berta.EncoderConfig.preset("tiny"))).to(torch.bfloat16)
    layer = model.layers[0].feed_forward.output
    assert layer.weight_scale.dtype == torch.float32 and layer.bias.dtype == torch.float32
    assert layer.weight_t.dtype == torch.int8
    assert model.layers[0].feed_forward.norm.weight.dtype == torch.bfloat16


TASKS = {
    "encoder": "last_hidden_state",
    "masked-lm": "logits",
    "classification": "logits",
    "tokens": "logits",
    "qa": "start_logits",
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_int8_on_every_head(batch: dict[str, torch.Tensor], task: str) -> None:
    """Each task model on MiniLM's encoder, int8 against fp32 on the same weights (heads stay float)."""
    labels = {0: "negative", 1: "neutral", 2: "positive"} if task in ("classification", "tokens") else None
    torch.manual_seed(0)
    fp32 = berta.load(minilm_directory(), task=task, id2label=labels, new_head="init")
    int8 = quantize(copy.deepcopy(fp32))
    features = {name: value[:8] for name, value in batch.items() if name != "token_type_ids"}
    with torch.inference_mode():
        expected, got = getattr(fp32(**features), TASKS[task]), getattr(int8(**features), TASKS[task])
    mask = features["attention_mask"].bool()
    if expected.shape[:2] == mask.shape:
        expected, got = expected[mask], got[mask]  # real tokens (QA scores padding with the dtype's minimum)
    assert F.cosine_similarity(got.flatten(), expected.flatten(), dim=0) >= 0.99
    if task == "classification":
        assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_rejects_unknown_names() -> None:
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        resolve_dtype("int3")
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        quantize(berta.create(berta.EncoderConfig.preset("tiny")), "int4")


def test_pipeline_takes_quantize_and_a_quantized_model_refuses_to_save(tmp_path):
    """`berta.pipeline(dir, quantize="int8")` on the real MiniLM: sentence-transformers' embeddings within the
    int8 threshold; saving a quantized model says what to do instead of a KeyError."""
    texts = ["A man is playing a guitar.", "The stock market fell sharply.", "Two dogs run on the beach."]
    exact = berta.pipeline(minilm_directory()).embed(texts)
    int8 = berta.pipeline(minilm_directory(), quantize="int8").embed(texts)
    cosine = (exact * int8).sum(-1) / (np.linalg.norm(exact, axis=-1) * np.linalg.norm(int8, axis=-1))
    assert cosine.min() >= 0.98 and cosine.mean() >= 0.99
    with pytest.raises(ValueError, match="int8-quantized model is a runtime form"):
        berta.load(minilm_directory(), quantize="int8").save(tmp_path / "q")


def test_bfloat16_load_packs_the_encoder_projections_and_changes_nothing_else(
    batch: dict[str, torch.Tensor], tmp_path
) -> None:
    """`berta.load(dtype="bfloat16")` runs the encoder layers' Linear layers on weights packed for oneDNN: the same
    outputs as plain bfloat16 `F.linear`, the same state dict, trainable, and it sees in-place weight updates."""
    packed = berta.load(minilm_directory(), dtype="bfloat16")
    plain = berta.load(minilm_directory()).to(torch.bfloat16)
    assert isinstance(packed.layers[0].feed_forward.intermediate, PackedLinear)
    assert type(plain.layers[0].feed_forward.intermediate) is nn.Linear
    assert packed.state_dict().keys() == plain.state_dict().keys()
    with torch.inference_mode():
        ours = packed(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        theirs = plain(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    assert packed.layers[0].attention.qkv._packed is not None  # the packed kernel ran
    assert (ours.float() - theirs.float()).abs().max() < 0.05  # bf16 rounding of a sum, at most
    assert F.cosine_similarity(ours.float().flatten(1), theirs.float().flatten(1)).min() > 0.9999

    # An in-place update (what load_state_dict and optimizers do) is seen by the next inference call.
    linear = packed.layers[0].attention.output
    x = torch.randn(7, linear.in_features, dtype=torch.bfloat16)
    with torch.no_grad():
        linear.weight.mul_(2)
    with torch.inference_mode():
        assert torch.equal(linear(x), F.linear(x, linear.weight, linear.bias))

    # With autograd it is F.linear: gradients reach the shared parameters.
    loss = linear(x).float().square().mean()
    loss.backward()
    assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0
