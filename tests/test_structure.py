"""How the package is put together: one task registry, a one-way import graph, no silent fallbacks, the CLI
generated from settings (config files, --print-config, grouped help, Literal choices), and docstring examples
that run."""

from __future__ import annotations

import ast
import dataclasses
import doctest
import importlib
import json
import pkgutil
import tomllib
from pathlib import Path

import pytest
import torch

import berta
from berta import cli, tasks
from berta.checkpoints.hf import architectures, load, task_of_architecture
from berta.config import EncoderConfig
from berta.model import _activation

PACKAGE = Path(berta.__file__).parent
MODULES = sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE)], "berta."))
ENCODER_PREFIXES = ("encoder.", "embeddings.", "layers.", "pooler.")


# ------------------------------------------------------------------------------------------------ registry


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta"])
@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_every_task_declares_its_facts_and_its_head_table_covers_its_head(name, family):
    task = tasks.get(name)
    assert task.name == name == task.model_class.task
    assert task.architecture_suffix and task.default_max_length > 0
    config = EncoderConfig.preset("tiny").replace(family=family, id2label={0: "a", 1: "b"})
    model = tasks.create(config, name)
    head = {n for n in model.state_dict() if not n.startswith(ENCODER_PREFIXES)}
    assert head == set(task.head_table(config)), f"{name}/{family}: head parameters and the name table differ"
    if task.fine_tunable:
        assert dataclasses.is_dataclass(task.options) and callable(task.from_options)


def test_tasks_the_cli_offers_come_from_the_registry():
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["finetune"].format_help()
    for name in tasks.fine_tunable():
        assert name in help_text
    assert tasks.fine_tunable() == ["classification", "multiple-choice", "qa", "tokens"]
    assert "--context-column" in help_text and "--choices-column" in help_text  # multiple choice's own options


def test_architectures_map_through_an_explicit_table(tmp_path):
    assert task_of_architecture("RobertaForMultipleChoice") == "multiple-choice"
    assert architectures()["BertModel"] == "encoder"
    with pytest.raises(ValueError, match="'BertLMHeadModel' is not one berta builds"):
        task_of_architecture("BertLMHeadModel")  # a decoder; a suffix match once loaded it as a bare encoder
    model = tasks.create(EncoderConfig.preset("tiny"), "encoder")
    model.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["BertLMHeadModel"]}))
    with pytest.raises(ValueError, match="BertLMHeadModel"):
        load(tmp_path)


def test_an_unknown_activation_raises_instead_of_becoming_silu():
    assert _activation("gelu")(torch.tensor([1.0])).item() == pytest.approx(0.8413447, abs=1e-6)
    with pytest.raises(ValueError, match="hidden_act 'swish' is not supported"):
        _activation("swish")


# ------------------------------------------------------------------------------------------ import graph


def _imports(path: Path, module: str) -> set[str]:
    """The berta modules a file imports, at the top or inside functions (parent packages not implied)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("berta"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if not base.startswith("berta"):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module in MODULES:
        spec = importlib.util.find_spec(module)
        graph[module] = _imports(Path(spec.origin), module) - {module}
    return graph


def test_the_import_graph_has_no_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target] if target in path else [node, target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    assert "berta.checkpoints.hf" not in graph["berta.model"]


def test_no_module_imports_the_package_root():
    offenders = [m for m, targets in _graph().items() if "berta" in targets and m != "berta"]
    assert not offenders, f"`import berta` / `from berta import <name>` inside the package: {offenders}"


# -------------------------------------------------------------------------------------------------- CLI


def test_config_file_supplies_required_fields_and_values_are_converted(tmp_path):
    config = tmp_path / "job.toml"
    config.write_text('# a recipe\ntask = "multiple-choice"\nmodel = "m"\ntrain = "t.jsonl"\nvalidation = "v.jsonl"\n'
                      'output = "runs/x"\nbatch-size = 8\nlr = 3e-5\neval = ["de.jsonl:de"]\n')
    function, settings = cli.parse(["finetune", "--config", str(config), "--epochs", "5"])
    assert function.__name__ == "finetune"
    assert settings.task == "multiple-choice" and settings.model == Path("m") and isinstance(settings.train, Path)
    assert (settings.batch_size, settings.lr, settings.epochs, settings.eval) == (8, 3e-5, 5, ["de.jsonl:de"])
    as_json = tmp_path / "job.json"
    as_json.write_text(json.dumps({"task": "qa", "model": "m", "train": "t", "validation": "v", "output": "o",
                                   "batch_size": "16"}))
    assert cli.parse(["finetune", "--config", str(as_json)])[1].batch_size == 16


@pytest.mark.parametrize("text, message", [
    ('task = "poetry"', r"task: 'poetry' is not one of \['classification', 'multiple-choice', 'qa', 'tokens'\]"),
    ("batch_size = 2.5", r"batch_size: 2.5 is not an integer"),
    ("learning_rate = 1", r"unknown settings \['learning_rate'\]"),
    ("batch_size = ", r"not valid TOML"),
])
def test_config_file_errors_name_the_file_and_field(tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n")
    with pytest.raises(SystemExit, match=message):
        cli.parse(["finetune", "--config", str(config)])


def test_missing_required_options_are_named(tmp_path):
    config = tmp_path / "partial.toml"
    config.write_text('task = "qa"\nmodel = "m"\n')
    with pytest.raises(SystemExit, match=r"required: --train, --validation, --output"):
        cli.parse(["finetune", "--config", str(config)])


def test_print_config_writes_every_default_and_reads_back(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse(["pretrain", "--data", "d", "--model", "tiny", "--output", "o", "--print-config"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    values = tomllib.loads(text)
    settings_class = cli.settings_class(cli._resolve(cli.JOBS[("pretrain",)]))
    defaults = {f.name for f in dataclasses.fields(settings_class)}
    commented = {line.split()[1] for line in text.splitlines() if line.startswith("# ") and line.endswith("(none)")}
    assert set(values) | commented == defaults  # every field, None ones as comments
    assert values["data"] == "d" and values["mask_prob"] == 0.15
    saved = tmp_path / "pretrain.toml"
    saved.write_text(text)
    plain = cli.parse(["pretrain", "--data", "d", "--model", "tiny", "--output", "o"])[1]
    assert cli.parse(["pretrain", "--config", str(saved)])[1] == plain


def test_help_is_grouped_with_literal_choices_and_required_first(capsys):
    with pytest.raises(SystemExit):
        cli.main(["finetune", "--help"])
    text = capsys.readouterr().out
    sections = [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert sections[:2] == ["options:", "required:"] and "train options:" in sections and "task options:" in sections
    assert "{IOB1,IOB2,BIO,BIOES,IOBES}" in text and "(default: )" not in text
    assert "(default: None)" not in text
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.startswith("berta ")


# --------------------------------------------------------------------------------------------- doctests


@pytest.mark.parametrize("module", [m for m in MODULES if "keras" not in m])
def test_docstring_examples_run(module):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(importlib.import_module(module)):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} docstring examples of {module} failed"
