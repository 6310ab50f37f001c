"""The toy task's recipe schema: the shared pieces plus its own data section."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from ftclip.config import EvalConfig, RecipeBase


@dataclass
class ToyData:
    root: str = MISSING  # a folder of images
    batch_size: int = 4
    num_workers: int = 0
    pin_memory: bool = False


@dataclass
class Schema(RecipeBase):
    task: str = "toy"
    data: ToyData = field(default_factory=ToyData)
    eval: EvalConfig = field(default_factory=EvalConfig)
