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
from ftclip.tasks.fewshot.coop import CLASS_TOKEN_POSITIONS
from ftclip.tasks.fewshot.datamodule import FewshotDataModule
from ftclip.tasks.fewshot.formats.dassl import dassl_name
from ftclip.tasks.fewshot.methods import CLIP_LORA, coop_epochs, tip_adapter_defaults
from ftclip.tasks.fewshot.module import CLASSIFIER_OF, CLOSED_FORM_KINDS, FewshotModule
from ftclip.tasks.fewshot.schema import Schema
from ftclip.tasks.fewshot.templates import template_set
from ftclip.tasks.fewshot.wise import check_alpha

_TRAINED = tuple(k for k in CLASSIFIER_OF if k not in CLOSED_FORM_KINDS)


def _coop_epochs(shots: int, dataset: str | None = None) -> int:
    return coop_epochs(shots, dassl_name(dataset))


def _clip_lora_steps(shots: int) -> int:
    return CLIP_LORA.iterations(shots)


def _tip_adapter_f_epochs(dataset: str | None = None) -> int:
    return tip_adapter_defaults(dassl_name(dataset)).epochs


def _positive(value, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")


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
        super().check_config(cfg)
        d, s = cfg.data, cfg.strategies
        _positive(d.shots, "data.shots")
        if d.val_shots is not None:
            _positive(d.val_shots, "data.val_shots")
        if d.on_bad_image not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_image must be 'error' or 'skip', got '{d.on_bad_image}'")
        if d.split not in ("all", "base2new"):
            raise ConfigError(f"data.split '{d.split}' is not one of all, base2new")
        if not 0.0 < float(d.test_fraction) < 1.0:
            raise ConfigError(f"data.test_fraction must lie between 0 and 1 (exclusive), got {d.test_fraction}")
        if d.root is None and d.csv is None:
            raise ConfigError("data.root is not set: give the data set folder, e.g. data.root=/data/eurosat "
                              "(format csv: or the list file, data.csv=labels.csv)")
        template_set(s.zeroshot.templates, ("{}",), "strategies.zeroshot.templates")
        if s.zeroshot.logit_scale is not None and not float(s.zeroshot.logit_scale) > 0:
            raise ConfigError(f"strategies.zeroshot.logit_scale must be > 0 (or null: the model's), "
                              f"got {s.zeroshot.logit_scale}")
        for alpha in cfg.wise.alpha:
            try:
                check_alpha(alpha)
            except Exception as exc:
                raise ConfigError(f"wise.alpha: {exc}") from None
        kinds = {str(stage.kind) for stage in cfg.stages.values()}
        if "coop" in kinds:
            c = s.coop
            if c.position not in CLASS_TOKEN_POSITIONS:
                raise ConfigError(f"strategies.coop.position '{c.position}' is not one of "
                                  f"{', '.join(CLASS_TOKEN_POSITIONS)}")
            if not c.init:
                _positive(c.n_ctx, "strategies.coop.n_ctx")
            if c.class_specific and d.split == "base2new":
                raise ConfigError("strategies.coop.class_specific=true learns one context per trained class, which "
                                  "new classes do not have: use the shared context with data.split=base2new")
        if kinds & {"tip_adapter", "tip_adapter_f"}:
            t = s.tip_adapter
            _positive(t.augment_passes, "strategies.tip_adapter.augment_passes")
            if len(t.search_step) != 2 or (t.search_scale is not None and len(t.search_scale) != 2):
                raise ConfigError("strategies.tip_adapter.search_step and .search_scale are [beta, alpha] pairs")

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
