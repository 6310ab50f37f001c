"""The task registry: a task name -> the package that defines it (``ftclip/tasks/<name>/``).

Each package meets the contract of :mod:`ftclip.tasks.base` and exposes its :class:`Task` as
``TASK``. Packages are imported on first use, by name, so no task imports another.
:func:`register_task` adds one from outside ftclip (a plugin, or a test).
"""

from __future__ import annotations

import importlib

from ftclip.errors import ConfigError

TASKS: dict[str, str] = {
    "reid": "ftclip.tasks.reid",
    "iqa": "ftclip.tasks.iqa",
    "fewshot": "ftclip.tasks.fewshot",
}


def register_task(name: str, package: str) -> None:
    """Make ``task: <name>`` recipes use the task defined by ``package`` (importable, exposes ``TASK``)."""
    TASKS[str(name)] = str(package)


def task_names() -> list[str]:
    return list(TASKS)


def get_task(name: str):
    """The :class:`~ftclip.tasks.base.Task` named ``name`` (ConfigError listing the known ones)."""
    from ftclip.tasks.base import Task, TaskContractError

    if name not in TASKS:
        raise ConfigError(f"task '{name}' is not known; choose one of: {', '.join(TASKS)}")
    package = importlib.import_module(TASKS[name])
    task = getattr(package, "TASK", None)
    if not isinstance(task, Task):
        raise TaskContractError(f"task package {TASKS[name]} must define TASK, an instance of "
                                "ftclip.tasks.base.Task (the task contract)")
    if task.name != name:
        raise TaskContractError(f"task package {TASKS[name]} defines task '{task.name}', registered as '{name}'")
    return task
