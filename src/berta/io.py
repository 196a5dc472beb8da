"""Files in and out, in one place: compressed text by magic bytes, UTF-8 that names the byte it fails on,
JSON Lines, and atomic writes of files and whole directories.

Every reader and writer of the package goes through here, so `x.json.gz`, `corpus.txt.xz` or a UTF-8 file with
a byte-order mark mean the same thing to `prepare`, `tokenizer train`, `finetune` and `predict`.

Atomic means: written under a temporary name in the same directory, flushed to disk (fsync), then renamed over
the target, so a reader — or a run resumed after a crash — sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import lzma
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

# Magic numbers, so a compressed file is read as such whatever it is called.
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
_OPENERS: dict[str, Callable[..., IO[bytes]]] = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz")
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, at import: the process's umask, which mkstemp does not apply


def compression(path: str | Path) -> str | None:
    """"gzip", "bz2" or "xz" from the file's first bytes, or None for an uncompressed file.

    Example:
        >>> import tempfile, gzip, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"   # the name does not say it is gzip
        >>> file.write_bytes(gzip.compress(b"hello"))  and compression(file)
        'gzip'
    """
    with open(path, "rb") as handle:
        head = handle.read(6)
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def format_suffix(path: str | Path) -> str:
    """The extension that names the format, under any compression extension, lower-cased.

    Example:
        >>> format_suffix("train.JSONL.gz"), format_suffix("dev.tsv"), format_suffix("corpus")
        ('.jsonl', '.tsv', '')
    """
    path = Path(path)
    if path.suffix.lower() in COMPRESSED_SUFFIXES:
        path = Path(path.stem)
    return path.suffix.lower()


def check_file(path: str | Path, what: str = "file") -> Path:
    """`path` as a Path when it is a readable file, else an error that says what it is instead.

    Example:
        >>> check_file("/no/such/train.csv", "--train")
        Traceback (most recent call last):
        ...
        FileNotFoundError: --train /no/such/train.csv: no such file
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path}: is a directory, expected a file")
    if not path.exists():
        raise FileNotFoundError(f"{what} {path}: no such file")
    return path


def open_binary(path: str | Path) -> IO[bytes]:
    """The file's bytes, decompressed when its magic number says gzip, bz2 or xz. The caller closes it."""
    path = check_file(path)
    kind = compression(path)
    return _OPENERS[kind](path, "rb") if kind else open(path, "rb")  # noqa: SIM115 - the caller closes it


def lines(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, line with its line ending) of a text file, compressed or not, decoded line by line.

    A byte-order mark at the start is dropped (spreadsheet programs write one; it would otherwise become part of
    the first column's name). Invalid text raises ValueError naming the file, the line and the byte offset in
    the (decompressed) file. The lines keep their endings, so `csv.reader(text for _, text in lines(path))`
    reads quoted fields that span lines.

    Example (the doctest's ELLIPSIS stands for the temporary directory and the end of the message):
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "bad.txt"
        >>> _ = file.write_bytes("\\ufeffgood\\n".encode() + b"caf\\xe9\\n")
        >>> list(lines(file))
        Traceback (most recent call last):
        ...
        ValueError: .../bad.txt line 2: not valid utf-8 text (byte offset 11 in the file); pass --encoding ...
    """
    path = Path(path)
    offset, number = 0, 0
    with open_binary(path) as handle:
        try:
            for number, raw in enumerate(handle, start=1):  # noqa: B007 - read after the loop on a stream error
                try:
                    text = raw.decode(encoding)
                except UnicodeDecodeError as error:
                    raise ValueError(
                        f"{path} line {number}: not valid {encoding} text (byte offset {offset + error.start} in the "
                        f"file); pass --encoding if it is another encoding"
                    ) from error
                if number == 1:
                    text = text.removeprefix("\ufeff")
                offset += len(raw)
                yield number, text
        except (OSError, EOFError) as error:  # a truncated or corrupt compressed stream
            raise ValueError(f"{path} line {number + 1}: cannot read: {error}") from error


def read_jsonl(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON Lines file; a line that is not a JSON object is
    an error naming its line.

    Example:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "rows.jsonl"
        >>> _ = file.write_text('{"text": "a"}\\n\\n[1]\\n')
        >>> list(read_jsonl(file))
        Traceback (most recent call last):
        ...
        ValueError: .../rows.jsonl line 3: expected a JSON object, got list
    """
    for number, line in lines(path, encoding):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number}: not valid JSON ({error.msg})") from error
        if not isinstance(record, dict):
            raise ValueError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")


def is_json_lines(path: str | Path) -> bool:
    """The one rule for text input: `.jsonl` / `.ndjson` (under any compression suffix) are JSON Lines.

    A `.json` file is one JSON document (SQuAD); as text input it is refused by `texts`, never guessed.

    Example:
        >>> is_json_lines("wiki.JSONL.gz"), is_json_lines("dev.json"), is_json_lines("book.txt")
        (True, False, False)
    """
    return format_suffix(path) in JSON_LINES_SUFFIXES


def texts(path: str | Path, text_field: str = "text", encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, text) of a text input: each line without its ending, or the `text_field` string of each
    object of a JSON Lines file (blank lines skipped). `prepare` and `tokenizer train` read through this.

    Example:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "docs.jsonl"
        >>> _ = file.write_text('{"text": "a b"}\\n{"body": "c"}\\n')
        >>> list(texts(file))
        Traceback (most recent call last):
        ...
        ValueError: .../docs.jsonl line 2: no string field 'text' (--text-field); the fields are ['body']
    """
    if format_suffix(path) == ".json":
        raise ValueError(f"{path}: a .json file is one JSON document; text input is plain text or JSON Lines "
                         "(.jsonl: one object per line), so rename it if it holds one object per line")
    if not is_json_lines(path):
        for number, line in lines(path, encoding):
            yield number, line.rstrip("\r\n")
        return
    for number, record in read_jsonl(path, encoding):
        if not isinstance(record.get(text_field), str):
            raise ValueError(f"{path} line {number}: no string field {text_field!r} (--text-field); the fields "
                             f"are {sorted(record)}")
        yield number, record[text_field]


def read_json(path: str | Path, encoding: str = "utf-8") -> Any:
    """A whole JSON document (compressed or not); invalid JSON names the file, line and column."""
    text = "".join(line for _, line in lines(path, encoding))
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} line {error.lineno}: not valid JSON ({error.msg} at column {error.colno})") from error


# ------------------------------------------------------------------------------------------------- writing


def fsync_directory(directory: str | Path) -> None:
    """Flush a directory's entries (a rename inside it) to disk."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_tree(directory: str | Path) -> None:
    """Flush every file and directory under `directory` (and itself) to disk."""
    directory = Path(directory)
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in [*sorted(p for p in directory.rglob("*") if p.is_dir()), directory]:
        fsync_directory(path)


def atomic_write(target: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(temporary_path)`, fsync what it wrote, then rename it over `target`; on any error the
    temporary file is removed and `target` is untouched.

    Example:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "weights.bin"
        >>> _ = atomic_write(file, lambda temporary: temporary.write_bytes(b"1234"))
        >>> file.read_bytes()
        b'1234'
    """
    target = Path(target)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes files private (0600); give the usual mode
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)
    return target


def append_text(target: str | Path, text: str) -> None:
    """Append UTF-8 `text` to `target` (created if missing) and flush it: a log that grows line by line.

    Appending is not atomic; a crash can leave a last line cut short, which `read_jsonl` reports with its line
    number. Whole files that must never be half-written go through `atomic_write`.
    """
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    """Write `data` to `target` atomically."""
    return atomic_write(target, lambda temporary: temporary.write_bytes(data))


def atomic_write_text(target: str | Path, text: str) -> Path:
    """Write UTF-8 `text` to `target` atomically."""
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | Path, value: Any) -> Path:
    """Write `value` as indented JSON (with a final newline) to `target` atomically."""
    return atomic_write_text(target, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Fill a temporary sibling directory, then move it into place as `target` in one rename.

    An existing `target` is replaced: it is first renamed aside, and restored if the swap fails. If the block
    raises, the temporary directory is removed and `target` is untouched.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_directory(root / "checkpoint-5") as directory:
        ...     _ = (directory / "state.json").write_text("{}")
        >>> sorted(p.name for p in root.iterdir())
        ['checkpoint-5']
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield temporary
        fsync_tree(temporary)
        aside = target.with_name(f".{target.name}.old")
        if target.exists():
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(target, aside)
        try:
            os.replace(temporary, target)
        except BaseException:
            if aside.exists():
                os.replace(aside, target)
            raise
        fsync_directory(target.parent)
        if aside.exists():
            shutil.rmtree(aside)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
