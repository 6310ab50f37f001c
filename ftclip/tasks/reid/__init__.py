"""Re-identification (CLIP-ReID): ID-specific prompt learning, then image-encoder fine-tuning.

The task's folder holds everything re-ID: recipe schema, LightningModule and DataModule, data
formats, losses, metrics, heads, features, device augmentation and the synthetic set.
"""

from __future__ import annotations

from collections import defaultdict

from ftclip.backbone import model_image_kind, model_preprocess
from ftclip.errors import ConfigError
from ftclip.tasks.base import Task
from ftclip.tasks.reid.datamodule import ReidDataModule
from ftclip.tasks.reid.formats.base import few
from ftclip.tasks.reid.module import ReidModule
from ftclip.tasks.reid.schema import Schema


class ReidTask(Task):
    name = "reid"
    schema = Schema
    stage_kinds = ("prompts", "image")
    loss_settings = {"prompts": (), "image": ("id", "triplet", "i2t", "triplet_margin")}
    loss_weights = {"image": ("id", "triplet", "i2t")}
    module_class = ReidModule
    datamodule_class = ReidDataModule

    def check_config(self, cfg) -> None:
        """Stage kinds and losses; SIE only with an open_clip ViT (its class token), before any data is read."""
        super().check_config(cfg)
        kind = model_image_kind(str(cfg.model.name))
        if cfg.strategies.head.sie and kind != "vit":
            raise ConfigError(
                f"strategies.head.sie=true needs an open_clip ViT image tower (SIE is added to its class token, as "
                f"in CLIP-ReID, which has no SIE for its ResNet either); {cfg.model.name} has a {kind} tower: set "
                "strategies.head.sie=false"
            )

    def build_datamodule(self, cfg) -> ReidDataModule:
        pre = model_preprocess(cfg.model)  # the model's own mean/std/interpolation unless the recipe sets them
        datamodule = ReidDataModule(cfg, pre.image_size, pre.mean, pre.std, pre.interpolation)
        datamodule.load()
        return datamodule

    def build_module(self, cfg, info: dict) -> ReidModule:
        return ReidModule(cfg, int(info["num_ids"]), int(info["num_cameras"]), bool(info["vehicle"]))

    def data_warnings(self, cfg, splits) -> list[str]:
        """Identities with fewer than K training images; query identities without a cross-camera match."""
        warnings = []
        k = int(cfg.data.num_instances or 1)
        per_id: dict = defaultdict(int)
        for _, labels in splits["train"]:
            per_id[labels["id"]] += 1
        short = sorted(pid for pid, n in per_id.items() if n < k)
        if short:
            warnings.append(f"{len(short)} training identities have fewer than K={k} images "
                            f"(the P x K sampler repeats their images): ids {few(short)}")
        gallery: dict = defaultdict(set)
        for _, labels in splits["gallery"]:
            gallery[labels["id"]].add(labels["camera"])
        lonely = sorted({labels["id"] for _, labels in splits["query"]
                         if not (gallery.get(labels["id"], set()) - {labels["camera"]})})
        if lonely:
            warnings.append(f"{len(lonely)} query identities have no gallery image from another camera "
                            f"(they do not count in CMC/mAP): ids {few(lonely)}")
        return warnings


TASK = ReidTask()
