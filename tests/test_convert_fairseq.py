"""berta convert --from fairseq / --to fairseq: releases written here from random `transformers` RoBERTa and XLM-R
models in both fairseq namings and both torch serializations, converted, and compared with `transformers` (the
reference) on outputs and with GPT-2's / SentencePiece's own tokenizers (mapped through dict.txt as fairseq does)
on ids. The restricted unpickler is shown to refuse, and not run, a payload."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import shutil
import zipfile
from collections import OrderedDict
from importlib import resources
from pathlib import Path

import pytest
import torch
import transformers
from conftest import train_sentencepiece
from safetensors.torch import load_file

import berta
from berta.checkpoints import fairseq
from berta.checkpoints.convert import ConvertSettings, convert
from berta.cli import main

GPT2 = Path(str(resources.files("berta") / "assets" / "gpt2-bpe"))
TEXTS = ["Hello world!", "The quick brown fox jumps over the lazy dog, twice.", "a b c"]


def small_config(cls, vocab_size: int, **extra):
    return cls(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, max_position_embeddings=34, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
               eos_token_id=2, layer_norm_eps=1e-5, hidden_act="gelu", **extra)


def random_model(cls, config, seed: int):
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # visible biases and LayerNorms, not the init's zeros and ones
            parameter.add_(torch.randn_like(parameter) * 0.02)
        # fairseq has no segment table; a trained fairseq model's HF conversion has a zero row
        model.roberta.embeddings.token_type_embeddings.weight.zero_()
    return model


def fairseq_state(hf: dict[str, torch.Tensor], layers: int, naming: str, heads: dict[str, str]) -> OrderedDict:
    """The test's own statement of fairseq's names (2019: decoder.*, emb_layer_norm, fused in_proj)."""
    top = "decoder" if naming == "2019" else "encoder"
    p = f"{top}.sentence_encoder."
    state = OrderedDict()
    state[p + "embed_tokens.weight"] = hf["roberta.embeddings.word_embeddings.weight"]
    state[p + "embed_positions.weight"] = hf["roberta.embeddings.position_embeddings.weight"]
    norm = "emb_layer_norm" if naming == "2019" else "layernorm_embedding"
    for x in ("weight", "bias"):
        state[f"{p}{norm}.{x}"] = hf[f"roberta.embeddings.LayerNorm.{x}"]
    for i in range(layers):
        h, f = f"roberta.encoder.layer.{i}.", f"{p}layers.{i}."
        for x in ("weight", "bias"):
            q, k, v = (hf[f"{h}attention.self.{n}.{x}"] for n in ("query", "key", "value"))
            if naming == "2019":
                state[f"{f}self_attn.in_proj_{x}"] = torch.cat([q, k, v])
            else:
                state[f"{f}self_attn.q_proj.{x}"], state[f"{f}self_attn.k_proj.{x}"] = q, k
                state[f"{f}self_attn.v_proj.{x}"] = v
            state[f"{f}self_attn.out_proj.{x}"] = hf[f"{h}attention.output.dense.{x}"]
            state[f"{f}self_attn_layer_norm.{x}"] = hf[f"{h}attention.output.LayerNorm.{x}"]
            state[f"{f}fc1.{x}"] = hf[f"{h}intermediate.dense.{x}"]
            state[f"{f}fc2.{x}"] = hf[f"{h}output.dense.{x}"]
            state[f"{f}final_layer_norm.{x}"] = hf[f"{h}output.LayerNorm.{x}"]
    for x in ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias", "bias"):
        state[f"{top}.lm_head.{x}"] = hf[f"lm_head.{x}"]
    state[f"{top}.lm_head.weight"] = hf["roberta.embeddings.word_embeddings.weight"]
    for name, source in heads.items():
        for x in ("dense.weight", "dense.bias", "out_proj.weight", "out_proj.bias"):
            state[f"classification_heads.{name}.{x}"] = source[f"classifier.{x}"]
    return state


def model_args(bpe: str) -> dict:
    return dict(arch="roberta_base", task="masked_lm", encoder_layers=2, encoder_embed_dim=32,
                encoder_ffn_embed_dim=64, encoder_attention_heads=4, activation_fn="gelu", dropout=0.1,
                attention_dropout=0.1, pooler_dropout=0.0, max_positions=32, encoder_normalize_before=False, bpe=bpe)


def save_release(directory: Path, state: OrderedDict, naming: str, bpe: str) -> None:
    """2019: a real argparse.Namespace, legacy stream. current: an omegaconf DictConfig `cfg`, torch zip."""
    directory.mkdir(parents=True, exist_ok=True)
    if naming == "2019":
        checkpoint = {"args": argparse.Namespace(**model_args(bpe)), "model": state, "extra_state": {}}
        torch.save(checkpoint, directory / "model.pt", _use_new_zipfile_serialization=False)
    else:
        from omegaconf import OmegaConf

        cfg = OmegaConf.create({"model": model_args(bpe), "task": {"_name": "masked_lm"}, "bpe": {"_name": bpe}})
        torch.save({"cfg": cfg, "model": state, "extra_state": {}}, directory / "model.pt")


@pytest.fixture(scope="module")
def roberta_release(tmp_path_factory):
    """(HF masked-LM model, HF classifier sharing its encoder, {naming: release directory}, dict order)."""
    config = small_config(transformers.RobertaConfig, 50265)
    mlm = random_model(transformers.RobertaForMaskedLM, config, seed=0)
    classifier = random_model(transformers.RobertaForSequenceClassification,
                              small_config(transformers.RobertaConfig, 50265, num_labels=3), seed=1)
    classifier.roberta.load_state_dict(mlm.roberta.state_dict(), strict=False)
    hf = mlm.state_dict()
    heads = {"mnli": classifier.state_dict()}
    gpt2_ids = list(range(50257))
    random.Random(0).shuffle(gpt2_ids)  # dict.txt lists GPT-2 ids by corpus frequency, not in GPT-2's order
    lines = [f"{i} {1000 - n % 1000}" for n, i in enumerate(gpt2_ids)] + [f"madeupword000{k} 0" for k in range(3)]
    releases = {}
    for naming in ("2019", "current"):
        directory = tmp_path_factory.mktemp(f"roberta-{naming}")
        save_release(directory, fairseq_state(hf, 2, naming, heads), naming, "gpt2")
        (directory / "dict.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        if naming == "current":  # the 2019 tarballs ship without GPT-2's files; fairseq downloads them
            shutil.copy(GPT2 / "vocab.json", directory / "encoder.json")
            shutil.copy(GPT2 / "merges.txt", directory / "vocab.bpe")
        releases[naming] = directory
    return mlm, classifier, releases, gpt2_ids


def fairseq_ids_roberta(texts: list[str], order: list[int]) -> list[list[int]]:
    """fairseq's encoding: GPT-2 BPE ids (transformers' GPT2Tokenizer), through dict.txt (+4), <s> ... </s>."""
    gpt2 = transformers.GPT2Tokenizer(str(GPT2 / "vocab.json"), str(GPT2 / "merges.txt"))
    index = {gpt2_id: 4 + n for n, gpt2_id in enumerate(order)}
    return [[0] + [index[i] for i in gpt2(text)["input_ids"]] + [2] for text in texts]


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, rows))
    ids = torch.tensor([r + [1] * (length - len(r)) for r in rows])
    return ids, ids.ne(1).long()


@pytest.fixture(scope="module")
def converted(roberta_release, tmp_path_factory) -> dict[str, Path]:
    """Each RoBERTa release converted to a berta directory (LM head), once for the module."""
    out = {}
    for naming, directory in roberta_release[2].items():
        out[naming] = tmp_path_factory.mktemp("converted") / naming
        convert(ConvertSettings(from_format="fairseq", source=directory, to_format="hf", output=out[naming],
                                head="lm"))
    return out


@pytest.mark.parametrize("naming", ["2019", "current"])
def test_roberta_release_converts_exactly(roberta_release, converted, naming):
    mlm, _, _, order = roberta_release
    out = converted[naming]
    tokenizer = berta.Tokenizer.from_pretrained(out)
    expected_ids = fairseq_ids_roberta(TEXTS, order)
    assert [tokenizer.encode(t).ids for t in TEXTS] == expected_ids
    model = berta.load(out)
    assert model.task == "masked-lm" and model.config.max_positions == 34 and model.config.position_offset == 2
    ids, mask = padded(expected_ids)
    with torch.no_grad():
        ours, theirs = model(ids, mask), mlm(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    assert (ours.logits - theirs.logits)[real].abs().max() < 1e-5
    assert (ours.last_hidden_state - mlm.roberta(ids, mask).last_hidden_state)[real].abs().max() < 1e-5


def test_roberta_classification_head_becomes_a_classifier_with_mnli_labels(roberta_release, tmp_path):
    _, classifier, releases, order = roberta_release
    out = tmp_path / "mnli"
    convert(ConvertSettings(from_format="fairseq", source=releases["2019"], to_format="hf", output=out))
    model = berta.load(out)
    assert model.task == "classification"
    assert model.config.id2label == {0: "contradiction", 1: "neutral", 2: "entailment"}
    ids, mask = padded(fairseq_ids_roberta(TEXTS, order))
    with torch.no_grad():
        difference = (model(ids, mask).logits - classifier(input_ids=ids, attention_mask=mask).logits).abs().max()
    assert difference < 1e-5


@pytest.mark.parametrize("naming", ["2019", "current"])
def test_berta_to_fairseq_to_berta_keeps_every_tensor(converted, naming, tmp_path):
    first, release, second = converted["current"], tmp_path / "release", tmp_path / "second"
    convert(ConvertSettings(from_format="hf", source=first, to_format="fairseq", output=release,
                            fairseq_naming=naming))
    assert zipfile.is_zipfile(release / "model.pt") == (naming == "current")
    # fairseq's loader unpickles with torch.load: a real Namespace under args, the names fairseq expects
    written = torch.load(release / "model.pt", weights_only=False)
    assert isinstance(written["args"], argparse.Namespace) and written["args"].encoder_layers == 2
    top = "decoder" if naming == "2019" else "encoder"
    assert f"{top}.sentence_encoder.layers.0.self_attn.{'in_proj_weight' if naming == '2019' else 'q_proj.weight'}" \
        in written["model"]
    convert(ConvertSettings(from_format="fairseq", source=release, to_format="hf", output=second, head="lm"))
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert json.loads((first / "tokenizer.json").read_text()) == json.loads((second / "tokenizer.json").read_text())


@pytest.fixture(scope="module")
def xlmr_release(tmp_path_factory):
    sentencepiece = pytest.importorskip("sentencepiece")
    directory = tmp_path_factory.mktemp("xlmr")
    train_sentencepiece(directory)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(directory / "sentencepiece.bpe.model"))
    pieces = [processor.id_to_piece(i) for i in range(3, processor.get_piece_size())]
    random.Random(1).shuffle(pieces)
    (directory / "dict.txt").write_text("".join(f"{p} 7\n" for p in pieces), encoding="utf-8")
    config = small_config(transformers.XLMRobertaConfig, 4 + len(pieces) + 1)
    hf_model = random_model(transformers.XLMRobertaForMaskedLM, config, seed=2)
    save_release(directory, fairseq_state(hf_model.state_dict(), 2, "2019", {}), "2019", "sentencepiece")
    return hf_model, directory, processor, pieces


def test_xlmr_release_converts_exactly_and_back(xlmr_release, tmp_path):
    hf_model, directory, processor, pieces = xlmr_release
    out, release, again = tmp_path / "berta", tmp_path / "release", tmp_path / "again"
    convert(ConvertSettings(from_format="fairseq", source=directory, to_format="hf", output=out))
    texts = ["the lazy dog", "le chien saute par-dessus le renard", "der Fuchs"]
    # fairseq: SentencePiece pieces looked up in dict.txt (+4 for its specials)
    expected = [[0] + [4 + pieces.index(p) for p in processor.encode(t, out_type=str)] + [2] for t in texts]
    tokenizer = berta.Tokenizer.from_pretrained(out)
    assert [tokenizer.encode(t).ids for t in texts] == expected
    model = berta.load(out)
    assert model.config.family == "xlm-roberta"
    ids, mask = padded(expected)
    with torch.no_grad():
        difference = (model(ids, mask).logits - hf_model(input_ids=ids, attention_mask=mask).logits)[mask.bool()]
    assert difference.abs().max() < 1e-5
    convert(ConvertSettings(from_format="hf", source=out, to_format="fairseq", output=release))
    assert (release / "sentencepiece.bpe.model").read_bytes() == (directory / "sentencepiece.bpe.model").read_bytes()
    assert fairseq.read_dict(release / "dict.txt") == pieces
    convert(ConvertSettings(from_format="fairseq", source=release, to_format="hf", output=again))
    a, b = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert all(torch.equal(a[name], b[name]) for name in a) and a.keys() == b.keys()


# --------------------------------------------------------------------------------------------- security


class Payload:
    """Unpickling this runs os.system — what a malicious model.pt does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("zip_format", [True, False])
def test_payload_in_model_pt_is_refused_and_never_runs(tmp_path, zip_format):
    marker = tmp_path / "payload-ran"
    directory = tmp_path / "evil"
    directory.mkdir()
    checkpoint = {"args": argparse.Namespace(encoder_layers=1), "model": {"x": torch.zeros(2)},
                  "extra_state": Payload(marker)}
    torch.save(checkpoint, directory / "model.pt", _use_new_zipfile_serialization=zip_format)
    (directory / "dict.txt").write_text("a 1\n", encoding="utf-8")
    with pytest.raises(fairseq.UnsafeCheckpointError, match=r"refused to load global (posix|os)\.system.*nothing"):
        fairseq.load_model_pt(directory / "model.pt")
    with pytest.raises(SystemExit, match=r"refused to load global (posix|os)\.system"):
        main(["convert", "--from", "fairseq", str(directory), "--to", "hf", str(tmp_path / "out")])
    assert not marker.exists() and not (tmp_path / "out").exists()
    # the same file does run the payload when unpickled without restriction: the test would catch a leak
    torch.load(directory / "model.pt", weights_only=False)
    assert marker.exists()


def test_other_globals_are_refused_by_name(tmp_path):
    data = pickle.dumps({"model": {}, "args": getattr})  # builtins.getattr: a classic way in
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data)
    with pytest.raises(fairseq.UnsafeCheckpointError, match=r"builtins\.getattr"):
        fairseq.load_model_pt(path)


# --------------------------------------------------------------------------------------------- bad input


def test_missing_dict_is_named(roberta_release, tmp_path):
    directory = tmp_path / "no-dict"
    directory.mkdir()
    shutil.copy(roberta_release[2]["2019"] / "model.pt", directory / "model.pt")
    with pytest.raises(SystemExit, match=r"no-dict/dict\.txt: no such file"):
        main(["convert", "--from", "fairseq", str(directory), "--to", "hf", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_dict_that_does_not_fit_the_embeddings_is_named(roberta_release, tmp_path):
    directory = tmp_path / "short-dict"
    directory.mkdir()
    shutil.copy(roberta_release[2]["2019"] / "model.pt", directory / "model.pt")
    (directory / "dict.txt").write_text("".join(f"{i} 1\n" for i in range(100)), encoding="utf-8")
    with pytest.raises(ValueError, match=r"dict\.txt: 100 symbols make a vocabulary of 105 .* tensor "
                                         r"decoder\.sentence_encoder\.embed_tokens\.weight has 50265 rows"):
        fairseq.read(directory)


def test_failed_parity_check_writes_nothing(roberta_release, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="parity check failed.*nothing was written"):
        convert(ConvertSettings(from_format="fairseq", source=roberta_release[2]["current"], to_format="hf",
                                output=out, tolerance=1e-12))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_fp16_release_reads_its_half_precision_values(roberta_release, tmp_path):
    mlm, _, releases, _ = roberta_release
    directory, out = tmp_path / "fp16", tmp_path / "out"
    state = fairseq_state(mlm.state_dict(), 2, "2019", {})
    save_release(directory, OrderedDict((k, v.half()) for k, v in state.items()), "2019", "gpt2")
    shutil.copy(releases["2019"] / "dict.txt", directory / "dict.txt")
    checkpoint = fairseq.load_model_pt(directory / "model.pt")
    assert checkpoint["model"]["decoder.sentence_encoder.embed_tokens.weight"].dtype == torch.float16
    convert(ConvertSettings(from_format="fairseq", source=directory, to_format="hf", output=out, head="lm"))
    tensors = load_file(out / "model.safetensors")
    fused = state["decoder.sentence_encoder.layers.1.self_attn.in_proj_weight"].half().float()
    assert torch.equal(tensors["roberta.encoder.layer.1.attention.self.value.weight"], fused[64:])
    assert torch.equal(tensors["lm_head.bias"], state["decoder.lm_head.bias"].half().float())


def test_storages_saved_from_a_gpu_are_read(roberta_release, tmp_path):
    original = roberta_release[2]["2019"] / "model.pt"
    data = original.read_bytes()
    assert b"ctorch\nFloatStorage\n" in data  # the legacy stream names the storage class with GLOBAL
    (tmp_path / "model.pt").write_bytes(data.replace(b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n"))
    gpu, cpu = fairseq.load_model_pt(tmp_path / "model.pt"), fairseq.load_model_pt(original)
    assert gpu["model"].keys() == cpu["model"].keys()
    assert all(torch.equal(gpu["model"][name], cpu["model"][name]) for name in cpu["model"])


def test_fairseq_classes_in_cfg_become_values_without_being_imported(tmp_path, monkeypatch):
    """Newer checkpoints' cfg holds fairseq enums (ddp_backend=...); they are recorded, not imported or called."""
    import enum
    import sys
    import types

    from omegaconf import OmegaConf

    names = ("fairseq", "fairseq.dataclass", "fairseq.dataclass.constants", "fairseq.meters")
    modules = {name: types.ModuleType(name) for name in names}
    backend = enum.Enum("DDP_BACKEND_CHOICES", {"c10d": "c10d", "no_c10d": "no_c10d"},
                        module="fairseq.dataclass.constants")
    modules["fairseq.dataclass.constants"].DDP_BACKEND_CHOICES = backend
    meter = type("AverageMeter", (), {"__module__": "fairseq.meters"})  # 2019 checkpoints keep training meters
    modules["fairseq.meters"].AverageMeter = meter
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    cfg = OmegaConf.create({"model": {"encoder_layers": 2, "ddp_backend": backend.c10d, "layers": [1, 2]}})
    loss = meter()
    loss.__dict__.update(val=2.5, count=10)
    torch.save({"cfg": cfg, "model": {"w": torch.ones(2)}, "extra_state": {"train_meters": {"loss": loss}}},
               tmp_path / "model.pt")
    assert b"fairseq.dataclass.constants" in zipfile.ZipFile(tmp_path / "model.pt").read("model/data.pkl")
    for name in modules:
        monkeypatch.delitem(sys.modules, name)  # fairseq is not there when the checkpoint is read
    checkpoint = fairseq.load_model_pt(tmp_path / "model.pt")
    assert checkpoint["cfg"] == {"model": {"encoder_layers": 2, "ddp_backend": "c10d", "layers": [1, 2]}}
    assert checkpoint["extra_state"] == {"train_meters": {"loss": {"val": 2.5, "count": 10}}}
    assert "fairseq" not in sys.modules
