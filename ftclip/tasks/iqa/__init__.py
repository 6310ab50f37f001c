"""Image quality assessment with antonym prompts: QualiCLIP-style (``qualiclip``) and CLIP-IQA+-style (``mos``).

The task's folder holds everything IQA: recipe schema, LightningModule and DataModule, data
formats, losses, metrics, degradations, antonym prompts, plots and the synthetic set.
"""

from __future__ import annotations

import torch

from ftclip.backbone import model_preprocess
from ftclip.errors import ConfigError, FtclipError
from ftclip.tasks.base import Task
from ftclip.tasks.iqa.datamodule import IqaDataModule
from ftclip.tasks.iqa.losses import MOS_LOSS_KINDS, quality_score
from ftclip.tasks.iqa.module import IqaModule
from ftclip.tasks.iqa.schema import Schema


class IqaTask(Task):
    name = "iqa"
    schema = Schema
    stage_kinds = ("qualiclip", "mos")
    #: weights and margins per stage kind (see module.py); a stage that sets no weight trains with the defaults
    loss_settings = {"qualiclip": ("cons", "pos", "neg", "margin_rank", "margin_cons"),
                     "mos": (*MOS_LOSS_KINDS, "rank_margin")}
    loss_weights = {"qualiclip": ("cons", "pos", "neg"), "mos": MOS_LOSS_KINDS}
    default_loss_kinds = ("qualiclip", "mos")
    outputs = ("score",)
    module_class = IqaModule
    datamodule_class = IqaDataModule

    def check_config(self, cfg) -> None:
        super().check_config(cfg)
        data = cfg.data  # each value is in its domain (the schema); what relates two keys is checked here
        if not float(data.min_overlap) <= float(data.max_overlap):
            raise ConfigError(f"data.min_overlap / data.max_overlap must satisfy min <= max, got "
                              f"{data.min_overlap} / {data.max_overlap}")
        if data.mos_range is not None and not data.mos_range[1] > data.mos_range[0]:
            raise ConfigError(f"data.mos_range must be [low, high] with high > low, got {list(data.mos_range)}")
        antonym = cfg.strategies.antonym
        for name, stage in cfg.stages.items():
            if "prompts" in stage.train and int(antonym.context_tokens) <= 0:
                raise ConfigError(
                    f"stages.{name}.train names 'prompts' but strategies.antonym.context_tokens is "
                    f"{antonym.context_tokens}: set it to the number of learnable context tokens (CLIP-IQA+ uses 16)"
                )

    def data_warnings(self, cfg, splits) -> list[str]:
        """Unlabeled images smaller than the crops a qualiclip stage takes (they are upscaled first)."""
        if "qualiclip" not in {str(stage.kind) for stage in cfg.stages.values()}:
            return []
        ch, cw = (int(v) for v in cfg.model.image_size)
        small = [(path, size) for path, _ in splits.get("unlabeled", []) if (size := _image_size(path))
                 and (size[0] < ch or size[1] < cw)]
        if not small:
            return []
        shown = ", ".join(f"{path} ({h}x{w})" for path, (h, w) in small[:5]) + (" ..." if len(small) > 5 else "")
        return [f"{len(small)} unlabeled image(s) are smaller than the {ch}x{cw} crops (model.image_size) the qualiclip "
                f"stage takes; they are upscaled before cropping, which blurs them beyond their degradation level: "
                f"{shown}"]

    def build_datamodule(self, cfg) -> IqaDataModule:
        self.check_config(cfg)
        pre = model_preprocess(cfg.model)  # the model's own mean/std/interpolation unless the recipe sets them
        datamodule = IqaDataModule(cfg, pre.image_size, pre.mean, pre.std, pre.interpolation)
        datamodule.load()
        return datamodule

    def build_module(self, cfg, info: dict) -> IqaModule:
        return IqaModule(cfg, info)

    def score(self, features, tensors, meta) -> torch.Tensor:
        """The antonym quality score from ``encode_image`` features and ``text_features.safetensors``."""
        text = tensors.get("text_features", {})
        missing = [k for k in ("positive", "negative") if k not in text]
        if missing:
            raise FtclipError(f"the model's text features lack {', '.join(missing)}: an IQA export holds positive "
                              "[P, D], negative [P, D] and logit_scale in text_features.safetensors; re-export the run")
        scale = float(text["logit_scale"].item()) if "logit_scale" in text else float(meta.get("logit_scale", 100.0))
        pos, neg = text["positive"].float(), text["negative"].float()
        return quality_score(features.float(), pos.to(features.device), neg.to(features.device), scale)


def _image_size(path: str) -> tuple[int, int] | None:
    """(height, width) as shown (EXIF rotation applied) from the file header; None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees when shown
                w, h = h, w
    except (OSError, ValueError):
        return None
    return h, w


TASK = IqaTask()
