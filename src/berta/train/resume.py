"""Whether a run directory may be resumed by a command: the run's record (job, settings, data fingerprints)
against the new one.

- identical, or different only in settings that may change (`MAY_CHANGE_ON_RESUME`: how long, how often, on
  what device) → resume, saying what changed;
- another job, task or model → refuse, saying exactly that;
- anything else (the learning rate, the batch size, the data...) → refuse with one line naming each changed
  setting (old → new) and the two ways out: `--no-resume` (the old run is moved aside, training starts over)
  or a new `--output`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berta.train.settings import MAY_CHANGE_ON_RESUME

RECORD_NAME = "run.json"
# Never compared: the directory itself (it may be spelled differently) and how the command was given.
_NOT_COMPARED = frozenset({"output", "config"})
_WAYS_OUT = "run with --no-resume to move the old run aside and start over, or choose a new --output"


class ResumeRefusedError(ValueError):
    """The run directory holds a run that this command must not continue; the message says why and what to do."""


@dataclass
class RunRecord:
    """What made a run: the job, its settings (JSON values) and fingerprints of the data it reads.

    Example:
        >>> record = RunRecord("pretrain", {"lr": 6e-4, "model": "tiny"}, identity=("model",))
        >>> record.differences(RunRecord("pretrain", {"lr": 1e-4, "model": "tiny"}).to_json())
        ['--lr 0.0001 → 0.0006']
    """

    job: str
    settings: dict[str, Any]
    data: dict[str, str] = field(default_factory=dict)  # option -> fingerprint of what it names
    identity: tuple[str, ...] = ()  # settings that make it another run altogether (task, model)
    may_change: frozenset[str] = MAY_CHANGE_ON_RESUME

    @classmethod
    def of(cls, job: str, settings: Any, data: dict[str, str] | None = None, identity: tuple[str, ...] = (),
           may_change: frozenset[str] = MAY_CHANGE_ON_RESUME) -> RunRecord:
        """The record of a settings dataclass."""
        values = {f.name: json_value(getattr(settings, f.name)) for f in dataclasses.fields(settings)}
        return cls(job, values, dict(data or {}), identity, may_change)

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "settings": self.settings, "data": self.data}

    def differences(self, old: dict[str, Any]) -> list[str]:
        """`--name old → new` for each setting and data fingerprint that differs from `old` (a `to_json`) and
        may not change on resume."""
        return [f"{shown} {_show(before)} → {_show(after)}"
                for name, shown, before, after in self._changed(old) if name not in self.may_change]

    def allowed_changes(self, old: dict[str, Any]) -> list[str]:
        """The same for the changed settings that may change on resume."""
        return [f"{shown} {_show(before)} → {_show(after)}"
                for name, shown, before, after in self._changed(old) if name in self.may_change]

    def _changed(self, old: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
        """(name, name as shown, old value, new value) of every difference."""
        changed = []
        before_settings = old.get("settings", {})
        # A file whose contents are fingerprinted may move or be spelled another way: the contents decide.
        fingerprinted = {name for name in self.settings if _option(name) in self.data}
        for name in sorted(set(before_settings) | set(self.settings)):
            if name in _NOT_COMPARED or name in fingerprinted:
                continue
            before, after = before_settings.get(name, "(unset)"), self.settings.get(name, "(unset)")
            if not _same(before, after):
                changed.append((name, _option(name), before, after))
        before_data = old.get("data", {})
        for name in sorted(set(before_data) | set(self.data)):
            before, after = before_data.get(name, "(unset)"), self.data.get(name, "(unset)")
            if before != after:
                changed.append((name, f"{name} contents" if name.startswith("--") else name, before, after))
        return changed


def check_resume(directory: Path, old: dict[str, Any], new: RunRecord, step: int) -> list[str]:
    """Raise ResumeRefusedError unless the run in `directory` (its record `old`) may be resumed by `new`; return
    the settings that changed and may, as `--name old → new`.

    Example:
        >>> old = RunRecord("train", {"lr": 1e-3, "max_steps": 10}).to_json()
        >>> check_resume(Path("runs/x"), old, RunRecord("train", {"lr": 1e-3, "max_steps": 20}), step=10)
        ['--max-steps 10 → 20']
    """
    if old.get("job") != new.job:
        raise ResumeRefusedError(f"{directory} holds a {old.get('job')} run, not a {new.job} one; {_WAYS_OUT}")
    before = old.get("settings", {})
    other = [name for name in new.identity if not _same(before.get(name), new.settings.get(name))]
    if other:
        was = " ".join(f"{_option(name)} {_show(before.get(name))}" for name in new.identity)
        now = " ".join(f"{_option(name)} {_show(new.settings.get(name))}" for name in new.identity)
        raise ResumeRefusedError(f"{directory} holds a {new.job} run of {was}, not {now}; {_WAYS_OUT}")
    differences = new.differences(old)
    if differences:
        raise ResumeRefusedError(
            f"{directory} was trained to step {step} with other settings: {', '.join(differences)}; {_WAYS_OUT}"
        )
    return new.allowed_changes(old)


def move_aside(directory: Path) -> Path | None:
    """Rename a run directory to the first free `NAME.old`, `NAME.old-2`, ... beside it; None when there was no
    run there. The current working directory (or one holding it) is never moved."""
    directory = Path(directory)
    if not (directory / "checkpoints").is_dir() and not (directory / "train_settings.json").is_file():
        return None
    here = Path.cwd().resolve()
    if directory.resolve() == here or directory.resolve() in here.parents:
        raise ValueError(f"--output {directory} holds the current directory; choose another --output")
    target = directory.with_name(f"{directory.name}.old")
    number = 2
    while target.exists():
        target = directory.with_name(f"{directory.name}.old-{number}")
        number += 1
    os.replace(directory, target)
    return target


def file_fingerprint(path: str | Path) -> str:
    """"sha256:<first 16 hex digits>" of a file's bytes.

    Example:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "train.csv"; _ = file.write_text("text,label\\n")
        >>> file_fingerprint(file)
        'sha256:3d1efb1f982c7cee'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:16]}"


def json_value(value: Any) -> Any:
    """A setting's value as JSON: paths as strings, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    return value


def _same(before: Any, after: Any) -> bool:
    """Equal values, or two spellings (relative, absolute, through a link) of one existing file or directory."""
    if before == after:
        return True
    if isinstance(before, str) and isinstance(after, str) and before and after:
        try:
            return os.path.samefile(before, after)
        except OSError:  # one of them does not exist (any more)
            return False
    return False


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) and value == "" else str(value)
