"""`berta <job>`: the command line, generated from each job's settings dataclass.

A job is a function taking one settings dataclass. Each field becomes an option (`batch_size` ->
`--batch-size`); a field whose metadata says `positional=True` becomes a positional argument; the help text
is the field's `help` metadata. So the function, its settings and the CLI cannot drift apart.

Config files: `--config FILE.json` fills settings from a JSON object (same field names); options given on
the command line win.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
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
    ("convert",): "berta.checkpoints.convert:convert",
}


def _resolve(target: str) -> Callable[..., Any]:
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def _settings_class(function: Callable[..., Any]) -> type:
    hints = typing.get_type_hints(function)
    first = next(iter(p for p in hints if p != "return"))
    return hints[first]


def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _add_field(parser: argparse.ArgumentParser, field: dataclasses.Field, hint: Any) -> None:
    hint = _unwrap_optional(hint)
    help_text = field.metadata.get("help", "")
    choices = field.metadata.get("choices")
    origin = typing.get_origin(hint)
    kwargs: dict[str, Any] = {"help": help_text}
    if choices:
        kwargs["choices"] = choices
    if origin in (list, tuple, Sequence):
        (item,) = typing.get_args(hint)[:1] or (str,)
        kwargs.update(type=item, nargs="+" if field.metadata.get("positional") else "*")
    elif hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is typing.Literal:
        kwargs.update(type=str, choices=list(typing.get_args(hint)))
    else:
        kwargs["type"] = Path if hint is Path else hint
    if field.metadata.get("positional"):
        parser.add_argument(field.name, **kwargs)
        return
    kwargs["default"] = argparse.SUPPRESS  # the dataclass holds the default; only given options override
    if kwargs.get("help") is not None:
        default = field.default if field.default is not dataclasses.MISSING else None
        if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        kwargs["help"] = f"{help_text} (default: {default})" if default is not None else help_text
    flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")  # "flag": a name that is a keyword
    kwargs["dest"] = field.name
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:  # type: ignore[misc]
        kwargs["required"] = True
    parser.add_argument(flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="berta", description="The BERT family of encoders on PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="JOB")
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, target in sorted(JOBS.items()):
        if len(words) == 1:
            sub = commands.add_parser(words[0], help=_summary(target))
        else:
            if words[0] not in groups:
                group_parser = commands.add_parser(words[0], help=f"{words[0]} jobs")
                groups[words[0]] = group_parser.add_subparsers(dest="subcommand", required=True)
            sub = groups[words[0]].add_parser(words[1], help=_summary(target))
        sub.set_defaults(_target=target)
        sub.add_argument("--config", type=Path, help="JSON file of settings; command-line options win")
        function = _resolve(target)
        settings_class = _settings_class(function)
        hints = typing.get_type_hints(settings_class)
        for field in dataclasses.fields(settings_class):
            if field.metadata.get("cli", True):
                if field.metadata.get("positional") and field.default is not dataclasses.MISSING:
                    raise TypeError(f"{settings_class.__name__}.{field.name}: positional fields take no default")
                _add_field(sub, field, hints[field.name])
    return parser


def _summary(target: str) -> str:
    doc = _resolve(target).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def parse(argv: Sequence[str]) -> tuple[Callable[..., Any], Any]:
    """Parse a command line into (job function, settings)."""
    args = vars(build_parser().parse_args(argv))
    target = args.pop("_target")
    args.pop("command")
    args.pop("subcommand", None)
    config_file = args.pop("config", None)
    function = _resolve(target)
    settings_class = _settings_class(function)
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            values = json.loads(Path(config_file).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"berta: cannot read config file {config_file}: {error}") from error
        known = {f.name for f in dataclasses.fields(settings_class)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"berta: {config_file}: unknown settings {unknown}; known: {sorted(known)}")
    values.update(args)
    return function, settings_class(**values)


def main(argv: Sequence[str] | None = None) -> None:
    function, settings = parse(sys.argv[1:] if argv is None else argv)
    try:
        function(settings)
    except (ValueError, FileNotFoundError) as error:  # user errors: one clear line, no traceback
        raise SystemExit(f"berta: error: {error}") from error


if __name__ == "__main__":
    main()
