"""Pretraining corpora: text files -> memory-mapped token shards (`berta prepare`) -> blocks (`BlockDataset`).

Preparation streams the input files in chunks of about `shard_megabytes` of text; each chunk is tokenized (in a
pool of worker processes) into one shard per split: the token ids (`.tokens.bin`, uint16 when the vocabulary fits,
else uint32), the token offset of every sentence / line (`.sentences.npy`) and the sentence offset of every
document (`.documents.npy`). Every file is written under a temporary name and renamed when complete, and a
shard's record (`shards/NNNNN.json`, with sizes and SHA-256 checksums) is written last: a shard without its record
is redone on the next run and a finished one is kept. `manifest.json` is written at the very end, so a data
directory with a manifest is complete.

Samples follow fairseq's `sample_break_mode`, computed once at preparation (`SPLIT.blocks.npy`) over a
"virtual" token stream of each split: the documents in order with one separator token between documents. A block
is a range of that stream; the sample is `<s> block </s>` (`[CLS] block [SEP]` for BERT).

    prepare(PrepareSettings(files=[Path("wiki.txt")], tokenizer="roberta", output=Path("data")))
    dataset = BlockDataset("data", "train", tokenizer=tok)   # checks fingerprint, sizes and checksums
    dataset[0]                                                # int64 array: <s> ... </s>
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from berta import io
from berta.tokenizer import Tokenizer

BreakMode = Literal["full-sentences", "doc-sentences", "complete", "line"]
DocumentSeparator = Literal["newline", "blank-line"]
BREAK_MODES = get_args(BreakMode)
DOCUMENT_SEPARATORS = get_args(DocumentSeparator)
SPLITS = ("train", "validation")
MANIFEST = "manifest.json"
FORMAT = "berta-corpus"
VERSION = 1
UNDETERMINED_LANGUAGE = "und"  # ISO 639-2 "undetermined", for files given no language
_CHECKSUM_CHUNK = 1 << 23
_ENCODE_CHARACTERS = 1 << 20


class CorpusError(ValueError):
    """A prepared data directory that cannot be used as it is: the message names the file and what differs."""


@dataclass
class PrepareSettings:
    """Settings of `berta prepare`."""

    files: list[Path] = field(metadata={
        "positional": True,
        "help": "input files: plain text, JSONL (.jsonl) or either gzipped; with --parallel, two aligned files "
                "(one sentence per line) or TSV files (source<TAB>target)"})
    tokenizer: str = field(metadata={"help": "tokenizer directory or preset (roberta)"})
    output: Path = field(metadata={"help": "data directory to write (shards, manifest.json)"})
    # RoBERTa's FULL-SENTENCES packing and 512-token blocks (Liu et al. 2019, section 4.2; fairseq
    # tokens_per_sample=512).
    break_mode: BreakMode = field(default="full-sentences", metadata={
        "help": "how samples are cut: full-sentences (pack across documents), doc-sentences (never cross a "
                "document), complete (whole sentences up to the block size), line (one line per sample)"})
    block_size: int = field(default=512, metadata={"min": 8, "help": "tokens per sample, special tokens included"})
    validation_fraction: float = field(default=0.01, metadata={"min": 0, "max": 0.99,
        "help": "share of documents held out for validation, chosen by a hash of each document's text"})
    num_workers: int = field(default=1, metadata={"min": 1, "aliases": ("--workers",), "help": "tokenizing processes"})
    text_field: str = field(default="text", metadata={"help": "JSONL field holding a document's text"})
    document_separator: DocumentSeparator = field(default="newline", metadata={
        "help": "plain text: one document per line (newline) or documents separated by blank lines, one "
                "sentence per line (blank-line)"})
    languages: list[str] = field(default_factory=list, metadata={
        "help": "language code of each input file (or one for all); with --parallel, the source and target "
                "languages"})
    parallel: bool = field(default=False, metadata={
        "help": "the files are parallel text for translation language modelling (TLM)"})
    shard_megabytes: float = field(default=32.0, metadata={"above": 0, "help": "input text per shard, in megabytes"})
    encoding: str = field(default="utf-8", metadata={"help": "text encoding of the input files"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar and a summary"})


# ---------------------------------------------------------------------------------------------- reading input


def _sentences(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def _documents(path: Path, settings: PrepareSettings) -> Iterator[list[str]]:
    """A file's documents, each a list of its non-empty sentences / lines."""
    records = io.texts(path, settings.text_field, settings.encoding)
    if io.is_json_lines(path):
        for _, text in records:
            document = _sentences(text)
            if document:
                yield document
        return
    if settings.document_separator == "newline":
        for _, line in records:
            if line.strip():
                yield [line.strip()]
        return
    document: list[str] = []
    for _, line in records:
        if line.strip():
            document.append(line.strip())
        elif document:
            yield document
            document = []
    if document:
        yield document


def _tsv_pairs(path: Path, encoding: str) -> Iterator[list[str]]:
    for number, line in io.lines(path, encoding):
        if not line.strip():
            continue
        columns = line.rstrip("\r\n").split("\t")
        if len(columns) != 2:
            raise ValueError(f"{path} line {number}: expected 2 tab-separated columns (source, target), "
                             f"found {len(columns)}")
        yield [columns[0].strip(), columns[1].strip()]


def _aligned_pairs(source_path: Path, target_path: Path, encoding: str) -> Iterator[list[str]]:
    source, target = io.lines(source_path, encoding), io.lines(target_path, encoding)
    while True:
        left, right = next(source, None), next(target, None)
        if left is None or right is None:
            if left is not None or right is not None:
                short, long = (source_path, target_path) if left is None else (target_path, source_path)
                raise ValueError(f"{short} has fewer lines than {long}: parallel files must be aligned line by line")
            return
        if left[1].strip() or right[1].strip():  # a blank line on both sides is no pair
            yield [left[1].strip(), right[1].strip()]


def _pair_sources(files: Sequence[Path], encoding: str) -> list[tuple[str, Iterator[list[str]], list[Path]]]:
    """(name, pairs, paths) per parallel source: each TSV file, or the two aligned files together."""
    if all(io.format_suffix(f) == ".tsv" for f in files):
        return [(str(f), _tsv_pairs(f, encoding), [f]) for f in files]
    if len(files) != 2:
        raise ValueError(f"--parallel takes two aligned files or TSV files (.tsv); got {len(files)} files")
    return [(f"{files[0]}+{files[1]}", _aligned_pairs(files[0], files[1], encoding), list(files))]


@dataclass
class _Job:
    index: int
    source: str
    chunk: int
    language: str
    key: str
    documents: list[list[str]]


def _source_identity(paths: Sequence[Path]) -> list[Any]:
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def _jobs(settings: PrepareSettings, fingerprint: str, dtype: str) -> Iterator[_Job]:
    """The shards to make, in order: chunks of about `shard_megabytes` of text that never span two files."""
    limit = max(1, int(settings.shard_megabytes * 1_000_000))
    common = {"tokenizer": fingerprint, "dtype": dtype, "text_field": settings.text_field,
              "document_separator": settings.document_separator, "parallel": settings.parallel,
              "validation_fraction": settings.validation_fraction, "shard_megabytes": settings.shard_megabytes}
    if settings.parallel:
        language = "-".join(settings.languages)
        streams = [(name, pairs, paths, language)
                   for name, pairs, paths in _pair_sources(settings.files, settings.encoding)]
    else:
        languages = settings.languages or [UNDETERMINED_LANGUAGE]
        if len(languages) == 1:
            languages = languages * len(settings.files)
        streams = [(str(p), _documents(p, settings), [p], lang)
                   for p, lang in zip(settings.files, languages, strict=True)]
    index = 0
    for source, documents, paths, language in streams:
        chunk, size, number = [], 0, 0
        identity = _source_identity(paths)
        for document in documents:
            chunk.append(document)
            size += sum(len(s) for s in document)
            if size >= limit:
                key = _hash_json({**common, "source": identity, "chunk": number, "language": language})
                yield _Job(index, source, number, language, key, chunk)
                index, number, chunk, size = index + 1, number + 1, [], 0
        if chunk:
            key = _hash_json({**common, "source": identity, "chunk": number, "language": language})
            yield _Job(index, source, number, language, key, chunk)
            index += 1


# ---------------------------------------------------------------------------------------------- writing shards


def _hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHECKSUM_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _write_file(path: Path, data: bytes) -> dict[str, Any]:
    """Write `data` atomically (`berta.io`); its size and checksum for the manifest."""
    io.atomic_write_bytes(path, data)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def in_validation(document: Sequence[str], fraction: float) -> bool:
    """Whether a document is held out: a hash of its text, so the split is the same on every run and machine.

    Identical documents land in the same split, so duplicates never leak from training into validation.
    Example: `in_validation(["Some text."], 0.5)` is True or False, always the same.
    """
    if fraction <= 0:
        return False
    digest = hashlib.blake2b("\n".join(document).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def _encode(tokenizer: Tokenizer, sentences: list[str], dtype: str) -> list[np.ndarray]:
    # In batches of about _ENCODE_CHARACTERS, each turned into arrays at once: `Encoding` objects take ~100 bytes
    # a token, so a whole shard's would take gigabytes.
    arrays: list[np.ndarray] = []
    start = 0
    while start < len(sentences):
        stop, size = start, 0
        while stop < len(sentences) and (stop == start or size + len(sentences[stop]) <= _ENCODE_CHARACTERS):
            size += len(sentences[stop])
            stop += 1
        batch = tokenizer.backend.encode_batch_fast(sentences[start:stop], add_special_tokens=False)
        arrays.extend(np.array(e.ids, dtype=dtype) for e in batch)
        start = stop
    return arrays


def _tokenize_shard(job: _Job, tokenizer: Tokenizer, output: Path, dtype: str, fraction: float,
                    parallel: bool) -> dict[str, Any]:
    # Byte-level BPE encodes a space as part of the next word ("Ġword"): a document's later sentences get their
    # leading space back, or packing would glue "night;" and "That" into "night;That". (A pair's two sides are
    # separate texts.)
    spaced = tokenizer.family == "roberta" and not parallel
    sentences = [(" " + s if spaced and k else s) for document in job.documents for k, s in enumerate(document)]
    encoded = _encode(tokenizer, sentences, dtype)
    record: dict[str, Any] = {"index": job.index, "source": job.source, "chunk": job.chunk,
                              "language": job.language, "key": job.key, "splits": {}}
    grouped: dict[str, list[list[np.ndarray]]] = {split: [] for split in SPLITS}
    position = 0
    for document in job.documents:
        ids = encoded[position: position + len(document)]
        position += len(document)
        if parallel:
            if not all(len(s) for s in ids):  # a side with no tokens is no translation pair
                continue
        else:
            ids = [s for s in ids if len(s)]
            if not ids:
                continue
        grouped["validation" if in_validation(document, fraction) else "train"].append(ids)
    for split in SPLITS:
        documents = grouped[split]
        lengths = np.array([len(s) for d in documents for s in d], dtype=np.int64)
        sentence_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        document_offsets = np.concatenate([[0], np.cumsum([len(d) for d in documents])]).astype(np.int64)
        tokens = np.concatenate([s for d in documents for s in d]) if len(lengths) else np.zeros(0, dtype=dtype)
        stem = f"{job.index:05d}.{split}"
        files = {}
        for name, data in (("tokens", tokens.tobytes()), ("sentences", _npy_bytes(sentence_offsets)),
                           ("documents", _npy_bytes(document_offsets))):
            relative = f"shards/{stem}.{name}" + (".bin" if name == "tokens" else ".npy")
            files[name] = {"path": relative, **_write_file(output / relative, data)}
        record["splits"][split] = {"documents": len(documents), "sentences": int(lengths.size),
                                   "tokens": int(tokens.size), "files": files}
    _write_file(output / "shards" / f"{job.index:05d}.json", json.dumps(record, indent=1).encode())
    return record


def _finished_record(job: _Job, output: Path) -> dict[str, Any] | None:
    """The record of a shard a previous run finished with the same settings and input, else None."""
    path = output / "shards" / f"{job.index:05d}.json"
    try:
        record = io.read_json(path)
        if record.get("key") != job.key:
            return None
        for split in SPLITS:
            for info in record["splits"][split]["files"].values():
                if (output / info["path"]).stat().st_size != info["bytes"]:
                    return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record


_WORKER: dict[str, Any] = {}


def _worker_start(tokenizer_name: str, arguments: tuple) -> None:
    # One thread per process: the pool already uses the cores, and tokenizers' own threads would oversubscribe.
    os.environ["RAYON_NUM_THREADS"] = "1"
    _WORKER["tokenizer"] = Tokenizer.from_pretrained(tokenizer_name)
    _WORKER["arguments"] = arguments


def _worker_run(job: _Job) -> dict[str, Any]:
    return _tokenize_shard(job, _WORKER["tokenizer"], *_WORKER["arguments"])


# ---------------------------------------------------------------------------------------------- blocks


def compute_blocks(sentence_lengths: np.ndarray, document_sentences: np.ndarray, break_mode: str,
                   block_size: int) -> np.ndarray:
    """Cut a split into blocks: (n, 2) int64 [start, end) ranges of the split's virtual stream.

    The virtual stream is the documents in order with one separator between documents; sentence s of document d
    starts at (tokens before s) + d. Each block holds at most `block_size - 2` tokens (room for `<s>` and
    `</s>`). `full-sentences` cuts the stream into equal pieces (only the last is shorter); `doc-sentences`
    packs whole sentences and never crosses a document; `complete` packs whole sentences across documents
    (with the separator between them); `line` takes one sentence per block. A sentence longer than a block is
    split into block-sized pieces in every mode.

    Example: `compute_blocks(np.array([3, 2]), np.array([1, 1]), "doc-sentences", 6).tolist() == [[0, 3], [4, 6]]`.
    """
    if break_mode not in BREAK_MODES:
        raise ValueError(f"break mode {break_mode!r}; expected one of {BREAK_MODES}")
    capacity = block_size - 2
    if capacity < 1:
        raise ValueError(f"block size {block_size} leaves no room for tokens besides <s> and </s>")
    lengths = np.asarray(sentence_lengths, dtype=np.int64)
    if lengths.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    document_of_sentence = np.repeat(np.arange(len(document_sentences)), document_sentences)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) + document_of_sentence  # virtual sentence starts
    if break_mode == "full-sentences":
        total = int(lengths.sum()) + len(document_sentences) - 1
        begin = np.arange(0, total, capacity, dtype=np.int64)
        return np.stack([begin, np.minimum(begin + capacity, total)], axis=1)
    if break_mode == "line":
        pieces = -(-lengths // capacity)
        first = np.repeat(starts, pieces)
        offset = (np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces)) * capacity
        begin = first + offset
        return np.stack([begin, np.minimum(begin + capacity, np.repeat(starts + lengths, pieces))], axis=1)
    first_in_document = np.zeros(lengths.size, dtype=bool)
    first_in_document[np.cumsum(document_sentences)[:-1]] = True
    cross = break_mode == "complete"
    blocks: list[tuple[int, int]] = []
    begin, used = 0, 0  # the open block is [begin, begin + used)
    for start, length, first in zip(starts.tolist(), lengths.tolist(), first_in_document.tolist(), strict=True):
        if first and used and not cross:
            blocks.append((begin, begin + used))
            used = 0
        need = length + (1 if first and used else 0)  # the separator between two documents
        if used and used + need > capacity:
            blocks.append((begin, begin + used))
            used = 0
        if used:
            used += need
            continue
        begin = start
        while length > capacity:
            blocks.append((begin, begin + capacity))
            begin, length = begin + capacity, length - capacity
        used = length
    if used:
        blocks.append((begin, begin + used))
    return np.array(blocks, dtype=np.int64).reshape(-1, 2)


def _split_arrays(output: Path, records: list[dict[str, Any]], split: str) -> tuple[np.ndarray, np.ndarray]:
    lengths, documents = [], []
    for record in records:
        files = record["splits"][split]["files"]
        lengths.append(np.diff(np.load(output / files["sentences"]["path"])))
        documents.append(np.diff(np.load(output / files["documents"]["path"])))
    return np.concatenate(lengths).astype(np.int64), np.concatenate(documents).astype(np.int64)


# ---------------------------------------------------------------------------------------------- prepare


def _check_settings(settings: PrepareSettings) -> None:
    if not settings.files:
        raise ValueError("no input files")
    for path in settings.files:
        io.check_file(path, "input file")
    if settings.break_mode not in BREAK_MODES:
        raise ValueError(f"--break-mode {settings.break_mode!r}; expected one of {BREAK_MODES}")
    if settings.document_separator not in DOCUMENT_SEPARATORS:
        raise ValueError(f"--document-separator {settings.document_separator!r}; expected one of "
                         f"{DOCUMENT_SEPARATORS}")
    if settings.block_size < 8:
        raise ValueError(f"--block-size {settings.block_size}: expected at least 8 tokens")
    if not 0.0 <= settings.validation_fraction < 1.0:
        raise ValueError(f"--validation-fraction {settings.validation_fraction}: expected a value in [0, 1)")
    if settings.num_workers < 1:
        raise ValueError(f"--num-workers {settings.num_workers}: expected at least 1")
    if settings.shard_megabytes <= 0:
        raise ValueError(f"--shard-megabytes {settings.shard_megabytes}: expected a positive size")
    if settings.parallel and len(settings.languages) != 2:
        raise ValueError(f"--parallel needs --languages SOURCE TARGET (two codes); got {settings.languages}")
    if not settings.parallel and len(settings.languages) not in (0, 1, len(settings.files)):
        raise ValueError(f"--languages has {len(settings.languages)} codes for {len(settings.files)} files; "
                         "expected one per file or one for all")
    for path in settings.files:  # before any output exists: an empty input leaves no empty directory behind
        if not any(text.strip() for _, text in io.texts(path, settings.text_field, settings.encoding)):
            raise ValueError(f"no text in {path}")


def _progress(enabled: bool) -> Any:
    from tqdm.auto import tqdm

    on_terminal = sys.stderr.isatty()  # no bar in a redirected log; the summary line still comes
    return tqdm(unit=" docs", unit_scale=True, disable=not enabled or not on_terminal, file=sys.stderr,
                desc="prepare")


def prepare(settings: PrepareSettings) -> dict[str, Any]:
    """Tokenize text into memory-mapped token shards and a manifest, for pretraining.

    Streams the input (memory does not grow with the corpus), tokenizes shards in `workers` processes, holds
    out a hash-chosen share of documents for validation, and cuts each split into blocks by `break_mode`.
    Re-running keeps the shards a previous run finished with the same settings and input. Returns the manifest.

    Example: `prepare(PrepareSettings(files=[Path("book.txt")], tokenizer="roberta", output=Path("data")))`.
    """
    _check_settings(settings)
    output = Path(settings.output)
    tokenizer = Tokenizer.from_pretrained(settings.tokenizer)
    dtype = "uint16" if len(tokenizer) <= 2**16 else "uint32"
    (output / "shards").mkdir(parents=True, exist_ok=True)
    # Whatever manifest was here describes a finished earlier run; until this run finishes there is none.
    (output / MANIFEST).unlink(missing_ok=True)
    arguments = (output, dtype, settings.validation_fraction, settings.parallel)
    records: list[dict[str, Any]] = []
    reused = 0
    started = time.perf_counter()
    bar = _progress(settings.progress)

    def finish(record: dict[str, Any]) -> None:
        records.append(record)
        counts = record["splits"]
        bar.update(sum(counts[s]["documents"] for s in SPLITS))
        tokens = sum(r["splits"][s]["tokens"] for r in records for s in SPLITS)
        elapsed = max(time.perf_counter() - started, 1e-9)
        bar.set_postfix_str(f"{tokens / elapsed:,.0f} tokens/s, {len(records)} shards")

    jobs = _jobs(settings, tokenizer.fingerprint, dtype)
    try:
        if settings.num_workers == 1:
            for job in jobs:
                done = _finished_record(job, output)
                reused += done is not None
                finish(done or _tokenize_shard(job, tokenizer, *arguments))
        else:
            context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked tokenizer threads
            with context.Pool(settings.num_workers, _worker_start, (settings.tokenizer, arguments)) as pool:
                pending: deque = deque()  # at most 2 shards per worker in flight: memory stays bounded
                for job in jobs:
                    done = _finished_record(job, output)
                    reused += done is not None
                    pending.append(done if done is not None else pool.apply_async(_worker_run, (job,)))
                    while len(pending) > 2 * settings.num_workers or (pending and isinstance(pending[0], dict)):
                        head = pending.popleft()
                        finish(head if isinstance(head, dict) else head.get())
                while pending:
                    head = pending.popleft()
                    finish(head if isinstance(head, dict) else head.get())
    finally:
        bar.close()
    _remove_stale_shards(output, len(records))
    manifest = _write_index(settings, tokenizer, dtype, records, output)
    if settings.progress:
        elapsed = time.perf_counter() - started
        train, validation = manifest["splits"]["train"], manifest["splits"]["validation"]
        print(f"prepared {output}: {len(records)} shards ({reused} kept from an earlier run), "
              f"train {train['documents']:,} documents / {train['tokens']:,} tokens / {train['blocks']:,} blocks, "
              f"validation {validation['documents']:,} / {validation['tokens']:,} / {validation['blocks']:,}, "
              f"{dtype}, {elapsed:.1f} s")
    return manifest


def _remove_stale_shards(output: Path, count: int) -> None:
    """Delete shards of an earlier run that had more of them, and temporary files a crash left behind."""
    for path in (output / "shards").iterdir():
        number = path.name.lstrip(".").split(".")[0]
        if (path.name.startswith(".") and ".tmp" in path.name) or (number.isdigit() and int(number) >= count):
            path.unlink()


def _write_index(settings: PrepareSettings, tokenizer: Tokenizer, dtype: str, records: list[dict[str, Any]],
                 output: Path) -> dict[str, Any]:
    languages = list(settings.languages) if settings.parallel else sorted({r["language"] for r in records})
    splits: dict[str, Any] = {}
    for split in SPLITS:
        lengths, documents = _split_arrays(output, records, split)
        if settings.parallel:
            blocks = np.stack([np.arange(len(documents)), np.arange(1, len(documents) + 1)], axis=1)
        else:
            blocks = compute_blocks(lengths, documents, settings.break_mode, settings.block_size)
        relative = f"{split}.blocks.npy"
        by_language: dict[str, dict[str, int]] = {}
        for record in records:
            counts = by_language.setdefault(record["language"], {"documents": 0, "tokens": 0})
            counts["documents"] += record["splits"][split]["documents"]
            counts["tokens"] += record["splits"][split]["tokens"]
        splits[split] = {
            "documents": int(len(documents)), "sentences": int(len(lengths)), "tokens": int(lengths.sum()),
            "blocks": int(len(blocks)), "languages": by_language,
            "blocks_file": {"path": relative, **_write_file(output / relative, _npy_bytes(blocks.astype(np.int64)))},
        }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": {"name": str(settings.tokenizer), "fingerprint": tokenizer.fingerprint,
                      "family": tokenizer.family, "vocab_size": len(tokenizer), "cls_id": tokenizer.cls_id,
                      "sep_id": tokenizer.sep_id, "pad_id": tokenizer.pad_id, "mask_id": tokenizer.mask_id},
        "dtype": dtype,
        "break_mode": "pair" if settings.parallel else settings.break_mode,
        "block_size": settings.block_size,
        "parallel": settings.parallel,
        "languages": languages,
        "document_separator": settings.document_separator,
        "validation_fraction": settings.validation_fraction,
        "splits": splits,
        "shards": [{k: r[k] for k in ("index", "source", "chunk", "language")}
                   | {"splits": {s: r["splits"][s] for s in SPLITS}} for r in records],
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()
                     if k not in ("files", "progress")} | {"files": [str(f) for f in settings.files]},
    }
    _write_file(output / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


# ---------------------------------------------------------------------------------------------- dataset


class BlockDataset:
    """Samples of a prepared split: `dataset[i]` is `<s> block </s>` as an int64 numpy array.

    Opening checks everything before any training step: the manifest's format, the tokenizer's fingerprint
    (when `tokenizer` is given), every shard file's presence, size and SHA-256 checksum (`verify_checksums`),
    and that the boundary arrays agree with the manifest's counts. Any difference raises `CorpusError` (a
    ValueError) naming the file and what differs.

    For parallel data (prepared with `--parallel`), `dataset[i]` is a dict of `input_ids`, `position_ids` (restarting
    at the target) and `language_ids` (indices into `dataset.languages`), the TLM template of the family.

    Example:
        >>> dataset = BlockDataset("data", "train", tokenizer=Tokenizer.from_pretrained("roberta"))  # doctest: +SKIP
        >>> len(dataset), dataset[0][:4]  # doctest: +SKIP
    """

    def __init__(self, data_dir: str | Path, split: str = "train", tokenizer: Tokenizer | None = None,
                 verify_checksums: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.split = split
        manifest_path = self.data_dir / MANIFEST
        try:
            manifest = io.read_json(manifest_path)
        except FileNotFoundError as error:
            raise CorpusError(f"{manifest_path}: not found; prepare the data with `berta prepare` (a directory "
                              "without a manifest was not finished)") from error
        except (OSError, ValueError) as error:
            raise CorpusError(f"{manifest_path}: cannot read: {error}") from error
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise CorpusError(f"{manifest_path}: not a berta corpus manifest of version {VERSION}")
        if split not in manifest["splits"]:
            raise CorpusError(f"{manifest_path}: no split {split!r}; the manifest has {sorted(manifest['splits'])}")
        self.manifest = manifest
        info = manifest["tokenizer"]
        if tokenizer is not None and (tokenizer.fingerprint, len(tokenizer)) != (info["fingerprint"],
                                                                                  info["vocab_size"]):
            raise CorpusError(
                f"{manifest_path}: prepared with tokenizer {info['name']!r} (fingerprint {info['fingerprint']}, "
                f"{info['family']}, {info['vocab_size']} tokens) but the given tokenizer has fingerprint "
                f"{tokenizer.fingerprint} ({tokenizer.family}, {len(tokenizer)} tokens); prepare the data again with "
                "this tokenizer or train with the one the data was prepared with")
        self.break_mode: str = manifest["break_mode"]
        self.block_size: int = manifest["block_size"]
        self.parallel: bool = manifest["parallel"]
        self.languages: list[str] = manifest["languages"]
        self.family: str = info["family"]
        self.cls_id: int = info["cls_id"]
        self.sep_id: int = info["sep_id"]
        self.pad_id: int = info["pad_id"]
        self.dtype = np.dtype(manifest["dtype"])
        self._load(manifest, verify_checksums)

    def _check_file(self, info: dict[str, Any], verify: bool) -> Path:
        path = self.data_dir / info["path"]
        if not path.is_file():
            raise CorpusError(f"{path}: missing (listed in {self.data_dir / MANIFEST})")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise CorpusError(f"{path}: {size} bytes but the manifest says {info['bytes']} (truncated or "
                              "overwritten); prepare the data again")
        if verify and _sha256(path) != info["sha256"]:
            raise CorpusError(f"{path}: SHA-256 checksum differs from the manifest's (corrupt); prepare the data "
                              "again")
        return path

    def _load(self, manifest: dict[str, Any], verify: bool) -> None:
        split = manifest["splits"][self.split]
        tokens, sentence_offsets, documents, shard_languages = [], [], [], []
        self._token_files: list[Path | None] = []
        for shard in manifest["shards"]:
            part = shard["splits"][self.split]
            files = {name: self._check_file(info, verify) for name, info in part["files"].items()}
            array = np.memmap(files["tokens"], dtype=self.dtype, mode="r") if part["tokens"] else \
                np.zeros(0, dtype=self.dtype)
            sentences = np.load(files["sentences"])
            document_offsets = np.load(files["documents"])
            if len(array) != part["tokens"] or sentences[-1] != part["tokens"] or \
                    len(sentences) != part["sentences"] + 1 or len(document_offsets) != part["documents"] + 1 or \
                    document_offsets[-1] != part["sentences"]:
                raise CorpusError(f"{files['tokens'].parent}: shard {shard['index']:05d} ({self.split}) has "
                                  f"{len(array)} tokens, {len(sentences) - 1} sentences, {len(document_offsets) - 1} "
                                  f"documents; the manifest says {part['tokens']}, {part['sentences']}, "
                                  f"{part['documents']}")
            tokens.append(array)
            self._token_files.append(files["tokens"] if part["tokens"] else None)
            sentence_offsets.append(np.diff(sentences))
            documents.append(np.diff(document_offsets))
            shard_languages.append(np.full(part["documents"], self._language_index(shard["language"])))
        self._tokens = tokens
        self._shard_starts = np.concatenate([[0], np.cumsum([len(t) for t in tokens])]).astype(np.int64)
        lengths = np.concatenate(sentence_offsets).astype(np.int64) if tokens else np.zeros(0, np.int64)
        per_document = np.concatenate(documents).astype(np.int64) if tokens else np.zeros(0, np.int64)
        if int(lengths.sum()) != split["tokens"] or len(per_document) != split["documents"]:
            raise CorpusError(f"{self.data_dir / MANIFEST}: split {self.split} lists {split['tokens']} tokens in "
                              f"{split['documents']} documents; its shards hold {int(lengths.sum())} in "
                              f"{len(per_document)}")
        self._sentence_starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (sentences + 1,)
        document_sentence_starts = np.concatenate([[0], np.cumsum(per_document)]).astype(np.int64)
        self._document_starts = self._sentence_starts[document_sentence_starts]  # (documents + 1,) token offsets
        # where each document starts in the virtual stream (one separator after each earlier document)
        self._document_virtual_starts = self._document_starts[:-1] + np.arange(len(per_document))  # (documents,)
        self._document_languages = np.concatenate(shard_languages) if shard_languages else np.zeros(0, np.int64)
        blocks_path = self._check_file(split["blocks_file"], verify)
        self._blocks = np.load(blocks_path)
        virtual_length = int(lengths.sum()) + max(len(per_document) - 1, 0)
        limit = len(per_document) if self.parallel else virtual_length
        if self._blocks.shape != (split["blocks"], 2) or (len(self._blocks) and (
                self._blocks.min() < 0 or self._blocks.max() > limit)):
            raise CorpusError(f"{blocks_path}: {self._blocks.shape} blocks reaching {self._blocks.max(initial=0)}; "
                              f"the manifest says ({split['blocks']}, 2) within {limit}")

    def _language_index(self, language: str) -> int:
        if self.parallel:
            return 0
        return self.languages.index(language)

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def num_tokens(self) -> int:
        """Tokens in the split, without special tokens. Example: `dataset.num_tokens`."""
        return int(self._shard_starts[-1])

    @property
    def sample_languages(self) -> np.ndarray:
        """Language of each sample (index into `languages`; the language where its block starts), (len,) int64.

        Example: `LanguageSampler(dataset.sample_languages, alpha=0.3)`.
        """
        if self.parallel:
            return np.zeros(len(self), dtype=np.int64)
        documents = np.searchsorted(self._document_virtual_starts, self._blocks[:, 0], side="right") - 1
        return self._document_languages[documents].astype(np.int64)

    def _token_range(self, start: int, end: int) -> np.ndarray:
        pieces = []
        shard = int(np.searchsorted(self._shard_starts, start, side="right")) - 1
        while start < end:
            shard_end = int(self._shard_starts[shard + 1])
            stop = min(end, shard_end)
            offset = int(self._shard_starts[shard])
            pieces.append(np.asarray(self._tokens[shard][start - offset: stop - offset], dtype=np.int64))
            start, shard = stop, shard + 1
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)

    def block(self, index: int) -> np.ndarray:
        """The tokens of block `index` without `<s>` / `</s>` (separators between documents included).

        Example: `dataset.block(0)`.
        """
        begin, end = (int(v) for v in self._blocks[index])
        first = int(np.searchsorted(self._document_virtual_starts, begin, side="right")) - 1
        last = int(np.searchsorted(self._document_virtual_starts, end, side="left"))  # documents [first, last) overlap
        # the separator after document d sits at virtual position document_starts[d + 1] + d
        separators = self._document_starts[first + 1: last + 1] + np.arange(first, last)
        separators = separators[(separators >= begin) & (separators < end)] - begin
        out = np.empty(end - begin, dtype=np.int64)
        is_separator = np.zeros(end - begin, dtype=bool)
        is_separator[separators] = True
        out[is_separator] = self.sep_id
        token_begin = begin - first  # the separators of the `first` documents before it are not tokens
        out[~is_separator] = self._token_range(token_begin, token_begin + end - begin - len(separators))
        return out

    def __getitem__(self, index: int) -> np.ndarray | dict[str, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} of a {self.split} split with {len(self)} samples")
        index = index % len(self)
        if self.parallel:
            return self._pair(index)
        return np.concatenate([[self.cls_id], self.block(index), [self.sep_id]]).astype(np.int64)

    def _pair(self, index: int) -> dict[str, np.ndarray]:
        from berta.data.masking import pair_sample

        sentence = 2 * index  # a pair is a document of two sentences
        source = self._token_range(int(self._sentence_starts[sentence]), int(self._sentence_starts[sentence + 1]))
        target = self._token_range(int(self._sentence_starts[sentence + 1]), int(self._sentence_starts[sentence + 2]))
        return pair_sample(source, target, self.cls_id, self.sep_id, self.family, self.block_size, languages=(0, 1))

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap copies its data; a DataLoader worker started by "spawn" reopens the files instead.
        state = dict(self.__dict__)
        state["_tokens"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tokens = [np.memmap(path, dtype=self.dtype, mode="r") if path is not None else np.zeros(0, self.dtype)
                        for path in self._token_files]

    def __repr__(self) -> str:
        return (f"BlockDataset({str(self.data_dir)!r}, split={self.split!r}, samples={len(self)}, "
                f"break_mode={self.break_mode!r}, block_size={self.block_size})")


__all__ = ["BREAK_MODES", "BlockDataset", "CorpusError", "PrepareSettings", "compute_blocks", "in_validation",
           "prepare"]
