"""Task registry: each task package exposes ``Schema`` (its recipe dataclass), ``STAGE_KINDS``,
``build_datamodule(cfg)``, ``build_module(cfg, info)`` (a LightningModule) and optionally
``check_config(cfg)`` (checks that need neither data nor model)."""

from __future__ import annotations

import importlib
from types import ModuleType

from ftclip.errors import ConfigError

TASKS = {
    "reid": "ftclip.tasks.reid",
    "iqa": "ftclip.tasks.iqa",
}


def get_task(name: str) -> ModuleType:
    if name not in TASKS:
        raise ConfigError(f"task '{name}' is not known; choose one of: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])
