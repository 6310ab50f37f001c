"""Re-identification (CLIP-ReID): ID-specific prompt learning, then image-encoder fine-tuning."""

from __future__ import annotations

from ftclip.tasks.reid.datamodule import ReidDataModule
from ftclip.tasks.reid.module import ReidModule
from ftclip.stages import check_stage_losses
from ftclip.tasks.reid.schema import LOSS_SETTINGS, LOSS_WEIGHTS, STAGE_KINDS, Schema

__all__ = ["Schema", "STAGE_KINDS", "check_config", "build_datamodule", "build_module"]


def check_config(cfg) -> None:
    """Task-specific config checks that need neither data nor model."""
    check_stage_losses(cfg.stages, LOSS_SETTINGS, LOSS_WEIGHTS)


def build_datamodule(cfg) -> ReidDataModule:
    """Parse and check the data (no model yet): bad data fails before any model is built."""
    size = tuple(int(s) for s in cfg.model.image_size)
    datamodule = ReidDataModule(cfg, size, cfg.model.mean, cfg.model.std, cfg.model.interpolation)
    datamodule.load()
    return datamodule


def build_module(cfg, info: dict) -> ReidModule:
    """``info``: what the module's shape depends on (``datamodule.info``, also stored in checkpoints)."""
    return ReidModule(cfg, int(info["num_ids"]), int(info["num_cameras"]), bool(info["vehicle"]))
