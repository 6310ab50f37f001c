"""Image quality assessment with antonym prompts: QualiCLIP-style (``qualiclip``) and CLIP-IQA+-style (``mos``)."""

from __future__ import annotations

from ftclip.tasks.iqa.datamodule import IqaDataModule
from ftclip.tasks.iqa.module import IqaModule
from ftclip.tasks.iqa.schema import STAGE_KINDS, Schema

__all__ = ["Schema", "STAGE_KINDS", "build_datamodule", "build_module"]


def build_datamodule(cfg) -> IqaDataModule:
    """Parse and check the data (no model yet): bad data or config fails before any model is built."""
    size = tuple(int(s) for s in cfg.model.image_size)
    datamodule = IqaDataModule(cfg, size, cfg.model.mean, cfg.model.std, cfg.model.interpolation)
    datamodule.load()
    return datamodule


def build_module(cfg, info: dict) -> IqaModule:
    """``info``: ``datamodule.info`` (also stored in checkpoints); the module's shape does not depend on it."""
    return IqaModule(cfg, info)
