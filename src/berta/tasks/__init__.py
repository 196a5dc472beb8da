"""Tasks: one file each. Every module of this package is imported here, and each registers its `Task`
subclass in `berta.tasks.base.TASKS` with `@register` — so a new task is one new file (docs/architecture.md).
"""

import importlib
import pkgutil

from berta.tasks.base import TASKS, Task, create, fine_tunable, get, task_of_model

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["TASKS", "Task", "create", "fine_tunable", "get", "task_of_model"]
