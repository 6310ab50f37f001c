"""Re-identification (CLIP-ReID): ID-specific prompt learning, then image-encoder fine-tuning.

The task's folder holds everything re-ID: recipe schema, LightningModule and DataModule, data
formats, losses, metrics, heads, features, device augmentation and the synthetic set.
"""

from __future__ import annotations

from collections import defaultdict

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

    def build_datamodule(self, cfg) -> ReidDataModule:
        size = tuple(int(s) for s in cfg.model.image_size)
        datamodule = ReidDataModule(cfg, size, cfg.model.mean, cfg.model.std, cfg.model.interpolation)
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
