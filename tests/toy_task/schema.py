"""The toy task's recipe schema: the shared pieces plus its own data section."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from ftclip.config import EvalConfig, RecipeBase
from ftclip.domains import NON_NEGATIVE_INT, POSITIVE_INT, within


@dataclass
class ToyData:
    root: str = MISSING  # a folder of images
    batch_size: int = within(POSITIVE_INT, 4)  # every numeric key declares its domain (ftclip/domains.py)
    num_workers: int = within(NON_NEGATIVE_INT, 0)
    pin_memory: bool = False


@dataclass
class Schema(RecipeBase):
    task: str = "toy"
    data: ToyData = field(default_factory=ToyData)
    eval: EvalConfig = field(default_factory=EvalConfig)
