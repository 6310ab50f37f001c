"""The toy task's module: the image tower learns to match one fixed text prompt."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ftclip.tasks.base import StagedModule

PROMPT = "a photo."


class ToyModule(StagedModule):
    def __init__(self, cfg, info: dict):
        super().__init__(cfg)
        self.info = dict(info)
        self._cosines: list[torch.Tensor] = []

    def prompt_feature(self) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(self.backbone.encode_text(self.backbone.tokenize([PROMPT])).float(), dim=-1)[0]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.encode_image(images).float(), dim=-1)

    def training_step(self, batch, batch_idx):
        loss = 1.0 - (self.embed(batch["image"]) @ self.prompt_feature()).mean()
        self.log("train/loss", loss, batch_size=len(batch["index"]))
        return self.loss_weight("cosine", 1.0) * loss

    def validation_step(self, batch, batch_idx):
        self._cosines.append(self.embed(batch["image"]) @ self.prompt_feature())

    def on_validation_epoch_end(self) -> None:
        self.log("val/cosine", torch.cat(self._cosines).mean().item())
        self._cosines = []

    def export_info(self) -> dict:
        return {"feature": "proj", "prompt": PROMPT}

    def export_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"text_features": {"prompt": self.prompt_feature().cpu()}}
