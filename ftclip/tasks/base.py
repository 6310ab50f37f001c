"""What every task's LightningModule shares: stages, freezing, optimizers, NaN guard.

A task subclasses :class:`StagedModule`, builds its backbone and strategies in ``__init__``,
lists its parameter groups in :meth:`parameter_groups` and implements ``training_step`` per
stage kind. The engine calls :meth:`set_stage` before each stage's ``Trainer.fit``.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

from ftclip.backbone import Backbone
from ftclip.errors import FtclipError
from ftclip.stages import ParamGroups, build_optimizer, build_scheduler, describe_trainable, freeze_for_stage


class StagedModule(L.LightningModule):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone.from_config(cfg.model)
        self.stage_name: str | None = None
        self.stage_cfg = None
        self.lora_summary = None
        self.info: dict = {}  # what the module's shape depends on; saved in checkpoints
        lora_cfg = getattr(getattr(cfg, "strategies", None), "lora", None)
        if lora_cfg is not None and lora_cfg.enabled:
            from ftclip.strategies.lora import apply_lora

            self.lora_summary = apply_lora(self.backbone, lora_cfg)

    # ------------------------------------------------------------------ groups and stages
    def parameter_groups(self) -> ParamGroups:
        """Backbone groups plus the task's own (override and extend)."""
        return self.backbone.parameter_groups()

    def set_stage(self, name: str, stage_cfg) -> str:
        """Freeze everything but the stage's groups; return the trainable-parameter line."""
        groups = self.parameter_groups()
        freeze_for_stage(groups, list(stage_cfg.train), name)
        self.stage_name, self.stage_cfg = name, stage_cfg
        self.train(self.training)  # re-apply eval mode to frozen modules
        return describe_trainable(groups, name)

    def frozen_modules(self) -> list[nn.Module]:
        """Modules with no trainable parameter: kept in eval mode (BatchNorm stats, dropout)."""
        frozen = []
        for module in self.modules():
            own = list(module.parameters(recurse=False))
            if own and not any(p.requires_grad for p in own):
                frozen.append(module)
        return frozen

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.stage_cfg is not None:
            for module in self.frozen_modules():
                module.eval()
        return self

    # ------------------------------------------------------------------ speed (see benchmarks/RESULTS.md)
    def setup(self, stage: str) -> None:
        """Before every fit/validate: channels-last ResNet image towers on CUDA; ``trainer.compile``."""
        trainer = getattr(self, "_trainer", None)
        device = trainer.strategy.root_device if trainer is not None else self.device
        if device.type == "cuda" and isinstance(self.backbone.visual, ModifiedResNet):
            self.backbone.visual.to(memory_format=torch.channels_last)  # conv weights only; same state dict keys
        if bool(getattr(self.cfg.trainer, "compile", False)):
            self.compile_towers()

    def compile_towers(self) -> None:
        """``torch.compile`` the backbone's image and text forward functions, for every stage.

        The compiled functions shadow the bound methods on the backbone *instance*
        (``reid_features``, ``encode_image``, ``encode_text_embeddings``); no submodule is
        replaced or wrapped, so parameter names, state dicts, checkpoints and exports are
        exactly those of an uncompiled run. Calling it twice does nothing.
        """
        backbone = self.backbone
        if getattr(backbone, "_ftclip_compiled", False):
            return
        for name in ("reid_features", "encode_image", "encode_text_embeddings"):
            object.__setattr__(backbone, name, torch.compile(getattr(backbone, name)))
        object.__setattr__(backbone, "_ftclip_compiled", True)

    def configure_optimizers(self):
        stage = self.stage_cfg
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        optimizer = build_optimizer(trainable, stage.optimizer)
        scheduler = build_scheduler(optimizer, stage.schedule, stage.optimizer.lr, stage.epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ------------------------------------------------------------------ helpers
    def gather_by_index(self, values: torch.Tensor, index: torch.Tensor, total: int) -> torch.Tensor:
        """Rows computed on shards of ``0..total-1`` -> all ``total`` rows in index order, on every rank.

        Shards may differ in length, so each rank pads to the longest before ``all_gather``;
        rows are then placed by their sample index, so nothing is counted twice.
        """
        index = index.to(values.device)
        if self.trainer is not None and self.trainer.world_size > 1:
            world = self.trainer.world_size
            longest = -(-total // world)
            pad = longest - len(index)
            values = torch.cat([values, values.new_zeros((pad, *values.shape[1:]))])
            index = torch.cat([index, index.new_full((pad,), -1)])
            values = self.all_gather(values).flatten(0, 1)
            index = self.all_gather(index).flatten(0, 1)
        keep = index >= 0
        values, index = values[keep], index[keep]
        if index.numel() != total or torch.unique(index).numel() != total:
            raise RuntimeError(f"evaluation gathered {index.numel()} rows for {total} samples")
        out = values.new_empty((total, *values.shape[1:]))
        out[index] = values
        return out

    def loss_weight(self, name: str, default: float = 0.0) -> float:
        return float(self.stage_cfg.losses.get(name, default))

    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop at the first non-finite loss, naming the step; the last checkpoint stays intact."""
        if torch.isfinite(loss).all():
            return
        callback = getattr(self.trainer, "checkpoint_callback", None) if self._trainer is not None else None
        last = Path(callback.dirpath) / "last.ckpt" if callback is not None and callback.dirpath else None
        if last is not None and last.is_file():
            kept = f"the last good checkpoint {last} was kept"
        else:
            kept = ("no checkpoint of this stage was written yet (trainer.ckpt_every_n_steps keeps step "
                    "checkpoints), so a resume restarts the stage")
        raise FtclipError(
            f"stage '{self.stage_name}': the loss became {loss.item()} at epoch {self.current_epoch}, "
            f"step {self.global_step}; training stopped and {kept}. Lower stages.{self.stage_name}.optimizer.lr "
            "in RUN_DIR/config.yaml (or check the data), then `ftclip fit --resume RUN_DIR`"
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ftclip"] = {"stage": self.stage_name, "backbone": self.backbone.metadata(), "info": self.info}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("ftclip", {}).get("backbone", {})
        mine = self.backbone.metadata()
        if saved and (saved.get("model_name") != mine["model_name"] or saved.get("image_size") != mine["image_size"]):
            raise FtclipError(
                f"checkpoint is for model {saved.get('model_name')} at {saved.get('image_size')}, but this run builds "
                f"{mine['model_name']} at {mine['image_size']}; use the run's own config or a matching checkpoint"
            )
