"""`berta <job>`: the command line, generated from each job's settings dataclass.

A job is a function taking one settings dataclass. Each field becomes an option (`batch_size` ->
`--batch-size`); a field whose metadata says `positional=True` becomes a positional argument; the help text
is the field's `help` metadata, the choices of a `Literal` field are its values, and the options are grouped by
the dataclass that declares them (the job's own, the training loop's, the tasks'). So the function, its settings
and the CLI cannot drift apart.

Config files: `--config FILE` (`.toml` or `.json`, same field names) fills settings; options given on the
command line win; values are converted through the fields' types, and a config file may supply required
fields. `--print-config` writes the job's full settings, every default included, as TOML with each field's help
as a comment — a starting point to edit and pass back with `--config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import json
import math
import sys
import tomllib
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# command words -> "module:function". The function takes one settings dataclass (its first parameter's
# annotation), from which the job's options are generated.
JOBS: dict[tuple[str, ...], str] = {
    ("pretrain",): "berta.train.pretrain:pretrain",
    ("fill-mask",): "berta.inference.fill_mask:fill_mask",
    ("prepare",): "berta.data.corpus:prepare",
    ("tokenizer", "train"): "berta.tokenizer_train:train_tokenizer",
    ("finetune",): "berta.train.finetune:finetune",
    ("evaluate",): "berta.train.finetune:evaluate",
    ("export", "onnx"): "berta.inference.export:export",
    ("predict",): "berta.inference.predict:predict",
    ("serve",): "berta.inference.serve:serve",
    ("attention",): "berta.viz.attention:attention",
    ("convert",): "berta.checkpoints.convert:convert",
}


RECIPE_NOTE = ("Defaults whose help names a paper or model (\"RoBERTa: 0.98\", \"RoBERTa GLUE: 16 or 32\") are that "
               "published recipe's values; the others are chosen to finish on a CPU (pretrain: --epochs passes, not "
               "RoBERTa's --max-steps 500000). --print-config lists every default.")


def _resolve(target: str) -> Callable[..., Any]:
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def settings_class(function: Callable[..., Any]) -> type:
    """The settings dataclass a job function takes (its first parameter's annotation)."""
    hints = typing.get_type_hints(function)
    first = next(iter(p for p in hints if p != "return"))
    return hints[first]


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING  # type: ignore[misc]


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return field.default


def _flag(field: dataclasses.Field) -> str:
    """`batch_size` -> `--batch-size`; metadata "flag" names one whose field name is a Python keyword (`--from`)."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


# ------------------------------------------------------------------------------------------- conversion


def convert(value: Any, hint: Any, where: str) -> Any:
    """`value` (from a config file or the command line) as the field type `hint` says; `where` names it in errors.

    Example:
        >>> convert("8", int, "--batch-size"), convert(["a.txt"], list[Path], "inputs")
        (8, [PosixPath('a.txt')])
        >>> convert("fast", typing.Literal["dynamic", "static"], "masking")
        Traceback (most recent call last):
        ...
        ValueError: masking: 'fast' is not one of ['dynamic', 'static']
    """
    hint, optional = _unwrap_optional(hint)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: a value is required")
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        allowed = list(typing.get_args(hint))
        if value not in allowed:
            raise ValueError(f"{where}: {value!r} is not one of {allowed}")
        return value
    if origin in (list, tuple, Sequence):
        (item,) = typing.get_args(hint)[:1] or (str,)
        items = value if isinstance(value, list | tuple) else [value]
        return [convert(v, item, where) for v in items]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"{where}: {value!r} is not true or false")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"{where}: {value!r} is not a number")
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {value!r} is not {'an integer' if hint is int else 'a number'}") from None
        if hint is int and isinstance(value, float) and value != number:
            raise ValueError(f"{where}: {value!r} is not an integer")
        if hint is float and not math.isfinite(number):
            raise ValueError(f"{where}: {value!r} is not a finite number")
        return number
    if hint is Path:
        if not isinstance(value, str | Path):
            raise ValueError(f"{where}: {value!r} is not a path")
        return Path(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: {value!r} is not text")
        return value
    return value


def check_range(field: dataclasses.Field, value: Any, where: str) -> None:
    """A number outside the field's metadata bounds ("min", "max" inclusive; "above" exclusive) is an error
    naming the option: the one place numeric options are range-checked, for the command line and --config.

    Example:
        >>> batch = dataclasses.field(metadata={"min": 1})
        >>> check_range(batch, 0, "--batch-size")
        Traceback (most recent call last):
        ...
        ValueError: --batch-size 0: expected at least 1
    """
    values = value if isinstance(value, list | tuple) else [value]
    for item in values:
        if not isinstance(item, int | float) or isinstance(item, bool):
            continue
        if "min" in field.metadata and item < field.metadata["min"]:
            raise ValueError(f"{where} {item}: expected at least {field.metadata['min']}")
        if "above" in field.metadata and item <= field.metadata["above"]:
            raise ValueError(f"{where} {item}: expected a value above {field.metadata['above']}")
        if "max" in field.metadata and item > field.metadata["max"]:
            raise ValueError(f"{where} {item}: expected at most {field.metadata['max']}")


def _choices(hint: Any) -> list[Any] | None:
    hint, _ = _unwrap_optional(hint)
    if typing.get_origin(hint) is typing.Literal:
        return list(typing.get_args(hint))
    if typing.get_origin(hint) in (list, tuple, Sequence):
        return _choices(typing.get_args(hint)[0])
    return None


# ---------------------------------------------------------------------------------------------- parser


def _add_field(parser: argparse._ActionsContainer, field: dataclasses.Field, hint: Any, enforce: bool) -> None:
    inner, _ = _unwrap_optional(hint)
    help_text = field.metadata.get("help", "")
    origin = typing.get_origin(inner)
    kwargs: dict[str, Any] = {}
    choices = _choices(hint) or field.metadata.get("choices")
    if choices:
        kwargs["choices"] = choices
    if origin in (list, tuple, Sequence):
        (item,) = typing.get_args(inner)[:1] or (str,)
        item = str if typing.get_origin(item) is typing.Literal else item
        kwargs.update(type=_parser_type(item), nargs="+" if field.metadata.get("positional") else "*")
    elif inner is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = str if origin is typing.Literal else _parser_type(inner)
    if field.metadata.get("positional"):
        if field.metadata.get("optional_positional"):
            kwargs["nargs"] = "*" if "nargs" in kwargs else "?"
            kwargs["default"] = argparse.SUPPRESS
        parser.add_argument(field.name, help=help_text, **kwargs)
        return
    kwargs["default"] = argparse.SUPPRESS  # the dataclass holds the default; only given options override
    if _required(field):
        kwargs["required"] = enforce  # not when --config may supply it
    else:
        default = _default(field)
        shown = default not in (None, "", []) and "default" not in help_text
        if shown:
            help_text = f"{help_text} (default: {default})"
    aliases = field.metadata.get("aliases", ())
    parser.add_argument(_flag(field), *aliases, dest=field.name, help=help_text, **kwargs)


def _parser_type(hint: Any) -> Callable[[str], Any]:
    if hint in (int, float):
        def number(text: str) -> Any:
            try:
                return convert(text, hint, "value")
            except ValueError as error:
                raise argparse.ArgumentTypeError(str(error).removeprefix("value: ")) from None

        number.__name__ = hint.__name__
        return number
    return Path if hint is Path else hint


def _declaring_class(cls: type, name: str) -> type:
    """The dataclass in `cls`'s bases that declares field `name` first (its settings section)."""
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base) and name in getattr(base, "__annotations__", {}):
            return base
    return cls


def _section_title(cls: type, job: type) -> str:
    if cls is job:
        return f"{job.__name__.removesuffix('Settings').lower() or 'job'} options"
    doc = (cls.__doc__ or "").strip().splitlines()
    name = cls.__name__.removesuffix("Settings").removesuffix("Options")
    return f"{name.lower() or 'task'} options" + (f" — {doc[0].rstrip('.')}" if doc and len(doc[0]) < 70 else "")


def _add_job(sub: argparse.ArgumentParser, function: Callable[..., Any], enforce: bool) -> None:
    cls = settings_class(function)
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]
    required = sub.add_argument_group("required")
    sections: dict[type, argparse._ArgumentGroup] = {}
    for field in fields:
        if field.metadata.get("positional") and not _required(field) and not field.metadata.get(
                "optional_positional"):
            raise TypeError(f"{cls.__name__}.{field.name}: positional fields take no default")
        if field.metadata.get("positional") or _required(field):
            _add_field(required if not field.metadata.get("positional") else sub, field, hints[field.name], enforce)
    for field in fields:
        if field.metadata.get("positional") or _required(field):
            continue
        owner = _declaring_class(cls, field.name)
        if owner not in sections:
            sections[owner] = sub.add_argument_group(_section_title(owner, cls))
        _add_field(sections[owner], field, hints[field.name], enforce)
    files = sub.add_argument_group("settings files")
    files.add_argument("--config", type=Path, help="TOML or JSON file of settings; command-line options win")
    files.add_argument("--print-config", action="store_true",
                       help="print the job's full settings (every default) as TOML and exit")


def build_parser(enforce_required: bool = True) -> argparse.ArgumentParser:
    """The `berta` parser; with `enforce_required=False` (a --config or --print-config run) required options may
    be missing, and `parse` checks them after the config file is read."""
    parser = argparse.ArgumentParser(prog="berta", description="The BERT family of encoders on PyTorch.")
    parser.add_argument("--version", action="version", version=f"berta {importlib.metadata.version('berta')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="JOB")
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, target in sorted(JOBS.items()):
        function = _resolve(target)
        summary = _summary(function)
        if len(words) == 1:
            sub = commands.add_parser(words[0], help=summary, description=summary, epilog=RECIPE_NOTE)
        else:
            if words[0] not in groups:
                group_parser = commands.add_parser(words[0], help=f"{words[0]} jobs")
                groups[words[0]] = group_parser.add_subparsers(dest="subcommand", required=True, metavar="JOB")
            sub = groups[words[0]].add_parser(words[1], help=summary, description=summary, epilog=RECIPE_NOTE)
        sub.set_defaults(_target=target)
        _add_job(sub, function, enforce_required)
    return parser


def _summary(function: Callable[..., Any]) -> str:
    doc = function.__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


# ------------------------------------------------------------------------------------------ config files


def read_config(path: Path, cls: type) -> dict[str, Any]:
    """Settings from a TOML or JSON file, converted through `cls`'s field types; unknown names are an error."""
    try:
        from berta import io

        text = "".join(line for _, line in io.lines(path))
    except OSError as error:
        raise ValueError(f"--config {path}: cannot read: {error.strerror or error}") from None
    try:
        values = json.loads(text) if Path(path).suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        kind = "JSON" if Path(path).suffix.lower() == ".json" else "TOML"
        raise ValueError(f"--config {path}: not valid {kind}: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a table of settings, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    # Keys from "_" on are about a run, not settings (train_settings.json's `_run`): a run's record is a config.
    values = {key.replace("-", "_"): value for key, value in values.items() if not key.startswith("_")}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"--config {path}: unknown settings {unknown}; known: {sorted(known)}")
    return {name: convert(value, hints[name], f"--config {path}: {name}") for name, value in values.items()}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def settings_toml(settings: Any) -> str:
    """A settings object as TOML, each field under a comment with its help; None fields are commented out.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class S:
        ...     lr: float = dataclasses.field(default=2e-5, metadata={"help": "peak learning rate"})
        ...     name: str | None = None
        >>> print(settings_toml(S()))
        # peak learning rate
        lr = 2e-05
        # name = (none)
        <BLANKLINE>
    """
    lines = []
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if field.metadata.get("help"):
            lines.append(f"# {field.metadata['help']}")
        lines.append(f"# {field.name} = (none)" if value is None else f"{field.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- entry


def parse(argv: Sequence[str]) -> tuple[Callable[..., Any], Any]:
    """Parse a command line into (job function, settings)."""
    relaxed = any(arg in ("--print-config", "--config") or arg.startswith("--config=") for arg in argv)
    args = vars(build_parser(enforce_required=not relaxed).parse_args(argv))
    target = args.pop("_target")
    args.pop("command")
    args.pop("subcommand", None)
    config_file = args.pop("config", None)
    print_config = args.pop("print_config", False)
    function = _resolve(target)
    cls = settings_class(function)
    values: dict[str, Any] = {}
    try:
        if config_file is not None:
            values = read_config(config_file, cls)
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values.update({name: convert(value, hints[name], _flag(fields[name])) for name, value in args.items()})
        for name, value in values.items():
            check_range(fields[name], value, _flag(fields[name]))
    except ValueError as error:
        raise SystemExit(f"berta: error: {error}") from None
    missing = [name for name, f in fields.items() if _required(f) and name not in values]
    if missing and not print_config:
        shown = [name if fields[name].metadata.get("positional") else _flag(fields[name]) for name in missing]
        raise SystemExit(f"berta: error: the following arguments are required: {', '.join(shown)} "
                         f"(on the command line or in --config)")
    if print_config:
        placeholders = {name: _placeholder(fields[name], hints[name]) for name in missing}
        sys.stdout.write(settings_toml(cls(**values, **placeholders)))
        raise SystemExit(0)
    try:
        return function, cls(**values)
    except ValueError as error:  # a settings check in __post_init__
        raise SystemExit(f"berta: error: {error}") from None


def _placeholder(field: dataclasses.Field, hint: Any) -> Any:
    inner, _ = _unwrap_optional(hint)
    if typing.get_origin(inner) is typing.Literal:
        return typing.get_args(inner)[0]
    if typing.get_origin(inner) in (list, tuple, Sequence):
        return []
    return {int: 0, float: 0.0, bool: False, Path: Path("REQUIRED")}.get(inner, "REQUIRED")


def main(argv: Sequence[str] | None = None) -> None:
    function, settings = parse(sys.argv[1:] if argv is None else argv)
    try:
        function(settings)
    except KeyboardInterrupt as interrupt:  # Ctrl-C; in training also SIGTERM, after saving (its message says so)
        print(f"berta: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        raise SystemExit(getattr(interrupt, "exit_code", 130)) from None
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:  # user errors: one line
        raise SystemExit(f"berta: error: {error}") from error


if __name__ == "__main__":
    main()
