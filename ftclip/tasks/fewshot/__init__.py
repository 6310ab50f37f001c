"""Few-shot image classification with CLIP (``task: fewshot``): zero-shot, linear probe, LP++, CoOp,
CLIP-LoRA, Tip-Adapter(-F), fine-tuning and FLYP, each as its reference defines it, on one protocol.

The building blocks are pure functions on tensors and paths: ``formats/`` (folder, csv, dassl)
parse data sets into :class:`~ftclip.tasks.fewshot.dataset.ClassificationData`; ``protocol`` draws
the K-shot train and val sets and the base-to-new class split; ``templates`` holds the prompt
templates; ``heads``, ``linear_probe``, ``coop`` and ``wise`` are the methods' tensor maths;
``methods`` their reference defaults; ``metrics`` scores predictions; ``synthetic`` writes a demo
set. The Lightning wiring: ``schema``, ``datamodule``, ``module`` (one stage kind per method),
``classifier`` (the logits evaluation, ``ftclip predict`` and exports share) and ``plots``.
See docs/methods/fewshot.md.
"""

from __future__ import annotations

import torch

from ftclip.errors import ConfigError
from ftclip.tasks.base import Task
from ftclip.tasks.fewshot.classifier import classifier_logits
from ftclip.tasks.fewshot.datamodule import FewshotDataModule
from ftclip.tasks.fewshot.formats.dassl import dassl_name
from ftclip.tasks.fewshot.methods import CLIP_LORA, coop_epochs, tip_adapter_defaults
from ftclip.tasks.fewshot.module import CLASSIFIER_OF, CLOSED_FORM_KINDS, FewshotModule
from ftclip.tasks.fewshot.schema import Schema
from ftclip.tasks.fewshot.templates import template_set

_TRAINED = tuple(k for k in CLASSIFIER_OF if k not in CLOSED_FORM_KINDS)


def _coop_epochs(shots: int, dataset: str | None = None) -> int:
    return coop_epochs(shots, dassl_name(dataset))


def _clip_lora_steps(shots: int) -> int:
    return CLIP_LORA.iterations(shots)


def _tip_adapter_f_epochs(dataset: str | None = None) -> int:
    return tip_adapter_defaults(dassl_name(dataset)).epochs


class FewshotTask(Task):
    name = "fewshot"
    schema = Schema
    stage_kinds = tuple(CLASSIFIER_OF)
    closed_form_kinds = CLOSED_FORM_KINDS
    loss_settings = {**{k: () for k in CLOSED_FORM_KINDS}, **{k: ("ce",) for k in _TRAINED if k != "flyp"},
                     "flyp": ("contrastive",)}
    loss_weights = {k: v for k, v in loss_settings.items() if v}
    default_loss_kinds = _TRAINED
    outputs = ("predict",)
    recipe_resolvers = {"coop_epochs": _coop_epochs, "clip_lora_steps": _clip_lora_steps,
                        "tip_adapter_f_epochs": _tip_adapter_f_epochs}
    module_class = FewshotModule
    datamodule_class = FewshotDataModule

    def check_config(self, cfg) -> None:
        """What relates keys, or is more than a value's domain (schema.py declares those)."""
        super().check_config(cfg)
        d, s = cfg.data, cfg.strategies
        if d.root is None and d.csv is None:
            raise ConfigError("data.root is not set: give the data set folder, e.g. data.root=/data/eurosat "
                              "(format csv: or the list file, data.csv=labels.csv)")
        template_set(s.zeroshot.templates, ("{}",), "strategies.zeroshot.templates")
        kinds = {str(stage.kind) for stage in cfg.stages.values()}
        if "coop" in kinds and s.coop.class_specific and d.split == "base2new":
            raise ConfigError("strategies.coop.class_specific=true learns one context per trained class, which "
                              "new classes do not have: use the shared context with data.split=base2new")

    def build_datamodule(self, cfg) -> FewshotDataModule:
        datamodule = FewshotDataModule(cfg)
        datamodule.load()
        return datamodule

    def build_module(self, cfg, info: dict) -> FewshotModule:
        return FewshotModule(cfg, info)

    def predict(self, features, tensors, meta) -> torch.Tensor:
        """Class logits from ``encode_image`` features and the export's tensors (:mod:`.classifier`)."""
        return classifier_logits(features, tensors, meta.get("task_info") or meta)  # exports nest export_info


TASK = FewshotTask()
