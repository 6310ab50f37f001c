"""The task contract: what the engine, ``ftclip data check``, export and inference need from a task.

A task family is one package under ``ftclip/tasks/<name>/`` that defines

* a :class:`Task` subclass (its ``name``, recipe ``schema``, ``stage_kinds``, loss settings, and
  how to build its datamodule and module), instantiated once as ``TASK`` in the package's
  ``__init__.py`` and named in the registry (``ftclip/tasks/__init__.py``);
* a :class:`StagedModule` subclass (the LightningModule): parameter groups, ``training_step`` per
  stage kind, validation, and the hooks export and inference call (:meth:`StagedModule.embed`,
  :meth:`StagedModule.export_info`, :meth:`StagedModule.export_tensors`);
* a :class:`ftclip.data.module.StagedDataModule` subclass (the LightningDataModule).

Nothing probes a task for optional parts: every hook is declared here, with a default where one
makes sense. A task class that misses a required part fails when its package is imported, with
a message naming the part (see :meth:`Task.__init_subclass__`).
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

from ftclip.backbone import Backbone
from ftclip.data.module import StagedDataModule
from ftclip.errors import ConfigError, DivergedError, FtclipError
from ftclip.stages import (ParamGroups, build_optimizer, build_scheduler, check_stage_losses, describe_trainable,
                           freeze_for_stage)
from ftclip.towers import batchnorm_layers


class TaskContractError(TypeError):
    """A task package does not meet the contract of ftclip/tasks/base.py (a programming error)."""


class Task(ABC):
    """One task family. Subclass it once per task and instantiate it as ``TASK`` in the package."""

    #: the ``task:`` value of its recipes
    name: ClassVar[str]
    #: its recipe dataclass (extends :class:`ftclip.config.RecipeBase`)
    schema: ClassVar[type]
    #: the values ``stages.<name>.kind`` may take
    stage_kinds: ClassVar[tuple[str, ...]]
    #: per stage kind: the keys ``stages.<name>.losses`` may set (weights and other loss settings)
    loss_settings: ClassVar[Mapping[str, tuple[str, ...]]]
    #: per stage kind: which of those keys are weights (a stage must give one of them a positive value)
    loss_weights: ClassVar[Mapping[str, tuple[str, ...]]]
    #: stage kinds whose module has default weights when a stage sets none
    default_loss_kinds: ClassVar[tuple[str, ...]] = ()
    #: stage kinds fitted without an optimizer (closed form, or nothing to fit): their stage trains no
    #: group (``train: []``), the engine runs it with 0 optimizer steps and the module fits it in its
    #: ``on_fit_start`` hook; evaluation, checkpoint and ``metrics.json`` are as for any stage
    closed_form_kinds: ClassVar[tuple[str, ...]] = ()
    #: resolvers its recipes may call as ``${<task name>.<resolver>:args}`` (e.g. a method's reference
    #: epochs as a function of ``${data.shots}``); the resolved numbers are what config.yaml records
    recipe_resolvers: ClassVar[Mapping[str, Callable[..., Any]]] = {}
    #: what its models compute at inference beyond ``embed``: "score" (:meth:`score`), "predict" (:meth:`predict`)
    outputs: ClassVar[tuple[str, ...]] = ()
    #: its LightningModule and LightningDataModule classes (checked for the contract at import)
    module_class: ClassVar[type]
    datamodule_class: ClassVar[type]

    _REQUIRED = ("name", "schema", "stage_kinds", "loss_settings", "loss_weights", "module_class", "datamodule_class")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        missing = [attr for attr in cls._REQUIRED if not hasattr(cls, attr)]
        if missing:
            raise TaskContractError(f"task class {cls.__qualname__} lacks {', '.join(missing)} "
                                    "(the task contract, ftclip/tasks/base.py)")
        for attr, base in (("module_class", StagedModule), ("datamodule_class", StagedDataModule)):
            klass = getattr(cls, attr)
            if not (isinstance(klass, type) and issubclass(klass, base)):
                raise TaskContractError(f"task '{cls.name}': {attr} must be a subclass of {base.__name__}")
            if inspect.isabstract(klass):
                gaps = ", ".join(sorted(klass.__abstractmethods__))
                raise TaskContractError(f"task '{cls.name}': {klass.__name__} does not implement {gaps} "
                                        "(the task contract, ftclip/tasks/base.py)")

    # ------------------------------------------------------------------ before any work
    def check_config(self, cfg) -> None:
        """Checks that need neither data nor model: stage kinds and loss settings (extend, calling super)."""
        for name, stage in cfg.stages.items():
            if stage.kind not in self.stage_kinds:
                raise ConfigError(f"stages.{name}.kind '{stage.kind}' is not a stage of task '{self.name}'; "
                                  f"choose one of: {', '.join(self.stage_kinds)}")
        check_stage_losses(cfg.stages, self.loss_settings, self.loss_weights, self.default_loss_kinds)

    # ------------------------------------------------------------------ building
    @abstractmethod
    def build_datamodule(self, cfg) -> StagedDataModule:
        """Parse and check the data (no model yet): bad data fails before any model is built."""

    @abstractmethod
    def build_module(self, cfg, info: dict) -> "StagedModule":
        """The module; ``info`` is ``datamodule.info`` (also stored in every checkpoint)."""

    # ------------------------------------------------------------------ ftclip data check
    def data_warnings(self, cfg, splits: dict[str, list[tuple[str, dict]]]) -> list[str]:
        """Task-specific warnings of ``ftclip data check`` over ``datamodule.check_splits()``."""
        return []

    # ------------------------------------------------------------------ inference over runs and exports
    def require_output(self, output: str, command: str) -> None:
        """One clear error, before any work, when ``command`` needs an output this task does not compute."""
        if output not in self.outputs:
            what = {"score": "a quality score (iqa)", "predict": "class predictions (fewshot)"}.get(output, output)
            raise FtclipError(f"`ftclip {command}` needs a task with {what}; this is a '{self.name}' model")

    def score(self, features: torch.Tensor, tensors: dict[str, dict[str, torch.Tensor]], meta: dict) -> torch.Tensor:
        """Scores ``[B]`` of image features ``[B, D]`` (``encode_image`` output) with the export's tensors."""
        self.require_output("score", "score")
        raise NotImplementedError(f"task '{self.name}' lists 'score' in its outputs but does not implement score()")

    def predict(self, features: torch.Tensor, tensors: dict[str, dict[str, torch.Tensor]], meta: dict) -> torch.Tensor:
        """Class logits ``[B, C]`` of image features ``[B, D]`` with the export's tensors."""
        self.require_output("predict", "predict")
        raise NotImplementedError(f"task '{self.name}' lists 'predict' in its outputs but does not implement predict()")


class StagedModule(L.LightningModule, ABC):
    """What every task's LightningModule shares: stages, freezing, optimizers, NaN guard, the export hooks.

    A task subclasses it, builds its strategies in ``__init__``, lists its parameter groups in
    :meth:`parameter_groups` and implements ``training_step`` per stage kind. The engine calls
    :meth:`set_stage` before each stage's ``Trainer.fit``.
    """

    #: whether an ONNX export includes the text encoder (re-ID: no, its text side is fixed features)
    export_text_encoder: ClassVar[bool] = True

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone.from_config(cfg.model)
        self.stage_name: str | None = None
        self.stage_cfg = None
        self.lora_summary = None
        self.info: dict = {}  # what the module's shape depends on; saved in checkpoints
        self._unchecked_losses: list[tuple[int, int, torch.Tensor]] = []  # (epoch, step, loss): check_finite
        self._weight_scale: dict[str, float] | None = None  # max |w| per trainable tensor at the stage's start
        self._restored_scale: dict | None = None  # the same, as a resumed checkpoint recorded it
        self.step_log: dict[str, torch.Tensor] = {}  # this step's train/* values, for the run's history
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
        self._unchecked_losses = []
        self.train(self.training)  # re-apply eval mode to frozen modules
        line = describe_trainable(groups, name)
        if self.small_batch_stage() and batchnorm_layers(self.backbone):
            line += (f"; backbone BatchNorm keeps its running statistics ({self.stage_batch_size()} images per step "
                     f"< model.batchnorm_min_batch={int(self.cfg.model.batchnorm_min_batch)})")
        return line

    def frozen_modules(self) -> list[nn.Module]:
        """Modules kept in eval mode (BatchNorm statistics, dropout): a module whose parameters (its own and
        its children's) are all frozen, and a parameter-free module (e.g. a LoRA adapter's dropout) inside one;
        and every BatchNorm of the backbone when the stage's batch is smaller than ``model.batchnorm_min_batch``
        images per device (too few for batch statistics).

        A parameter-free module under a module that trains (a ViT's patch dropout in a trained tower) keeps
        training mode."""
        frozen: list[nn.Module] = []

        def visit(module: nn.Module, parent_frozen: bool) -> None:
            params = list(module.parameters())
            is_frozen = not any(p.requires_grad for p in params) and (bool(params) or parent_frozen)
            if is_frozen:
                frozen.append(module)
            for child in module.children():
                visit(child, is_frozen)

        visit(self, False)
        if self.small_batch_stage():
            seen = {id(m) for m in frozen}
            frozen += [m for m in batchnorm_layers(self.backbone) if id(m) not in seen]
        return frozen

    def small_batch_stage(self) -> bool:
        """A stage with fewer images per device than ``model.batchnorm_min_batch`` (backbone BatchNorm in eval)."""
        if self.stage_cfg is None:
            return False
        return self.stage_batch_size() < int(getattr(self.cfg.model, "batchnorm_min_batch", 0))

    def stage_batch_size(self) -> int:
        """Images per device in a training step of the current stage (``stages.<s>.batch_size`` or ``data.batch_size``)."""
        data = getattr(self.cfg, "data", None)
        return int(self.stage_cfg.batch_size or getattr(data, "batch_size", 0) or 0)

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
        (``encode_image``, ``encode_text_embeddings``); no submodule is replaced or wrapped, so
        parameter names, state dicts, checkpoints and exports are exactly those of an uncompiled
        run. A task that runs other forward functions compiles them in its override. Calling it
        twice does nothing.
        """
        backbone = self.backbone
        if backbone.compiled:
            return
        for name in ("encode_image", "encode_text_embeddings"):
            object.__setattr__(backbone, name, torch.compile(getattr(backbone, name)))
        object.__setattr__(backbone, "compiled", True)

    def configure_optimizers(self):
        """The stage's optimizer and schedule (``schedule.interval``: per epoch, or per step over the
        stage's total steps); none for a closed-form stage (:attr:`Task.closed_form_kinds`), which
        trains no parameter."""
        stage = self.stage_cfg
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if not trainable and not stage.train:
            return None
        optimizer = build_optimizer(trainable, stage.optimizer)
        interval = str(stage.schedule.interval)
        length = self.stage_steps() if interval == "step" else int(stage.epochs)
        scheduler = build_scheduler(optimizer, stage.schedule, length)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def stage_steps(self) -> int:
        """Optimizer steps of the stage, for per-step schedules: Lightning's estimate, or -- for a loader without
        ``len()`` (P x K epochs vary in length) and no ``max_steps`` -- the epochs times the loader's upper
        bound of batches per epoch (the schedule may then end a little before its last value)."""
        steps = self.trainer.estimated_stepping_batches  # max_steps (-1: none) for a loader without len()
        if math.isfinite(steps) and steps > 0:
            return int(steps)
        bound = getattr(getattr(self.trainer.train_dataloader, "batch_sampler", None), "max_batches", None)
        if bound is None:
            raise ConfigError(f"stages.{self.stage_name}.schedule.interval=step needs the stage's number of steps: "
                              f"set stages.{self.stage_name}.max_steps")
        accumulate = max(1, int(self.trainer.accumulate_grad_batches))
        return max(1, int(bound()) * int(self.stage_cfg.epochs) // accumulate)

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

    def log(self, name: str, value, *args, **kwargs) -> None:
        """Lightning's ``log``; a ``train/*`` value is also kept for the stage's history file (ftclip/logs.py)."""
        if name.startswith("train/") and isinstance(value, (torch.Tensor, int, float)):
            self.step_log[name] = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        super().log(name, value, *args, **kwargs)

    def loss_weight(self, name: str, default: float = 0.0) -> float:
        return float(self.stage_cfg.losses.get(name, default))

    # ------------------------------------------------------------------ NaN guard
    #: Training steps between two reads of the loss on the host (each read waits for the GPU).
    finite_check_every = 16

    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop at the first non-finite loss, naming its step; no checkpoint written after it.

        Reading the loss on the host (``if torch.isfinite(loss)``) makes the CPU wait for the
        GPU to finish the step before it may queue the next one. So each step only keeps the
        detached loss and the losses are read together: every :attr:`finite_check_every`
        steps, at the end of every training epoch, before validation and before every
        checkpoint is written (:meth:`raise_if_not_finite`). A checkpoint is therefore only
        written when every loss since the stage started was finite: the last checkpoint on
        disk predates the first bad step. The steps between a bad loss and the next read still
        run (their weights never reach a file); the error names the first bad step.
        """
        self._unchecked_losses.append((self.current_epoch, self.global_step, loss.detach()))
        if len(self._unchecked_losses) >= self.finite_check_every:
            self.raise_if_not_finite()

    def raise_if_not_finite(self) -> None:
        """Read the losses kept since the last read (one host sync); raise at the first non-finite one."""
        pending, self._unchecked_losses = self._unchecked_losses, []
        if not pending:
            return
        bad = torch.stack([~torch.isfinite(loss).all() for _, _, loss in pending])
        if not bool(bad.any()):
            return
        epoch, step, loss = pending[int(bad.to(torch.int8).argmax())]
        raise DivergedError(f"stage '{self.stage_name}': the loss became {loss.float().item()} at epoch {epoch}, "
                            f"step {step}; training stopped. {self._after_divergence()}")

    def on_train_start(self) -> None:
        """Each trainable tensor's max |w| at the stage's start (kept across a resume in the checkpoint):
        what :meth:`check_before_save` measures growth against."""
        restored, self._restored_scale = self._restored_scale, None
        if restored and restored.get("stage") == self.stage_name:
            self._weight_scale = dict(restored["max_abs"])
            return
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        values = torch.stack([p.detach().abs().max().float() for _, p in trainable]).tolist() if trainable else []
        self._weight_scale = {n: float(v) for (n, _), v in zip(trainable, values)}

    def check_before_save(self, checkpoint: dict) -> None:
        """The one check before any checkpoint is written (every save, step, epoch-end, interruption or
        final, goes through ``on_save_checkpoint``), so the checkpoint a resume uses never holds
        diverged weights: the losses not read yet must be finite (:meth:`raise_if_not_finite`); and as a
        loss can be finite while the update it drove is not, the weights are checked too: every tensor
        must be finite, and no trainable tensor may have grown beyond ``trainer.max_weight_growth``
        times its max |w| at the stage's start (at least 1). A finite but exploded update (lr=1e6 multiplies weights by ~1e5 in one Adam step) leaves a
        checkpoint from which every next gradient is NaN, whatever the lr: it must not be the one kept.
        """
        self.raise_if_not_finite()  # the losses kept since the last read (no checkpoint after a bad loss)
        tensors = [(k, v) for k, v in checkpoint.get("state_dict", {}).items()
                   if isinstance(v, torch.Tensor) and v.is_floating_point()]
        if tensors and not bool(torch.stack([torch.isfinite(v).all() for _, v in tensors]).all()):
            bad = [k for k, v in tensors if not bool(torch.isfinite(v).all())]
            self._diverged(f"the weights are not finite after the update of step {self.global_step} "
                           f"(epoch {self.current_epoch}): NaN/inf in {_first(bad)}")
        growth = float(getattr(self.cfg.trainer, "max_weight_growth", 0) or 0)
        scale = self._weight_scale
        if growth <= 0 or not scale:
            return
        params = dict(self.named_parameters())
        names = [n for n in scale if n in params]
        now = torch.stack([params[n].detach().abs().max().float() for n in names]).tolist() if names else []
        over = [(n, scale[n], v) for n, v in zip(names, now) if v > growth * max(scale[n], 1.0)]
        if over:
            name, before, after = max(over, key=lambda item: item[2] / max(item[1], 1.0))
            self._diverged(
                f"the weights exploded in the update of step {self.global_step} (epoch {self.current_epoch}): "
                f"max |w| of {name} went from {before:.3g} at the stage's start to {after:.3g} "
                f"(trainer.max_weight_growth={growth:g} allows {growth * max(before, 1.0):.3g}); "
                f"{len(over)} tensor(s) grew like this: {_first([n for n, _, _ in over])}")

    def _diverged(self, what: str) -> None:
        raise DivergedError(f"stage '{self.stage_name}': {what}; that checkpoint was not written and training "
                            f"stopped. {self._after_divergence()}")

    def _after_divergence(self) -> str:
        """Which checkpoint a resume continues from, and the resume command with a lower lr."""
        callback = getattr(self.trainer, "checkpoint_callback", None) if self._trainer is not None else None
        folder = Path(callback.dirpath) if callback is not None and callback.dirpath else None
        run = folder.parent.parent if folder is not None else "RUN_DIR"
        if folder is not None and (folder / "last.ckpt").is_file():
            kept = f"The last finite checkpoint {folder / 'last.ckpt'} was kept; a resume continues from it"
        else:
            kept = f"No checkpoint of stage '{self.stage_name}' was written yet, so a resume starts the stage again"
        lower = float(self.stage_cfg.optimizer.lr) / 10 if self.stage_cfg is not None else 1e-5
        return (f"{kept}. Lower the lr (or check the data) and resume: "
                f"ftclip fit --resume {run} stages.{self.stage_name}.optimizer.lr={lower:g}")

    def on_train_epoch_end(self) -> None:
        self.raise_if_not_finite()

    @property
    def progress_bar_shown(self) -> bool:
        """Whether a progress bar displays ``train/loss`` (``trainer.enable_progress_bar``).

        Lightning 2.6 turns every ``prog_bar=True`` metric into a Python number after every
        training batch, shown or not: a host sync per step. So the loss is logged for the bar
        only when there is a bar (benchmarks/RESULTS.md, gpu_suite stage1).
        """
        return self._trainer is not None and self.trainer.progress_bar_callback is not None

    def on_validation_start(self) -> None:
        self.raise_if_not_finite()  # weights after a bad step would give NaN features, not this message

    # ------------------------------------------------------------------ the hooks export and inference call
    @abstractmethod
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The feature the task evaluates with, L2-normalised ``[B, D]`` (export checks it against the
        reloaded open_clip model; ``ftclip embed`` computes it)."""

    @abstractmethod
    def export_info(self) -> dict[str, Any]:
        """JSON-able facts for the export manifest: at least ``{"feature": one of artifacts.layout.FEATURES}``."""

    @abstractmethod
    def export_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """The task's tensors an export stores, by kind (``text_features``, ``prompts``, ``heads``; CPU)."""

    def model_card(self, meta: dict) -> str:
        """The task's section of the export's model card (markdown; may be empty)."""
        return ""

    def load_export_tensors(self, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        """The inverse of :meth:`export_tensors`: put an export's task tensors back into this module
        (``ftclip eval EXPORT`` evaluates an export through the module's own validation)."""
        raise FtclipError(f"task '{self.cfg.task}' cannot evaluate an export (its module does not implement "
                          "load_export_tensors); evaluate the run directory instead: ftclip eval RUN_DIR")

    def on_stage_end(self, run, stage: str) -> None:
        """After each evaluation is recorded in the run directory (rank 0 only), e.g. task plots."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_before_save(checkpoint)
        checkpoint["ftclip"] = {"stage": self.stage_name, "backbone": self.backbone.metadata(), "info": self.info}
        if self._weight_scale:
            checkpoint["ftclip"]["weight_scale"] = {"stage": self.stage_name, "max_abs": dict(self._weight_scale)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._restored_scale = checkpoint.get("ftclip", {}).get("weight_scale")
        saved = checkpoint.get("ftclip", {}).get("backbone", {})
        mine = self.backbone.metadata()
        if saved and (saved.get("model_name") != mine["model_name"] or saved.get("image_size") != mine["image_size"]):
            raise FtclipError(
                f"checkpoint is for model {saved.get('model_name')} at {saved.get('image_size')}, but this run builds "
                f"{mine['model_name']} at {mine['image_size']}; use the run's own config or a matching checkpoint"
            )


def _first(names: list[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
