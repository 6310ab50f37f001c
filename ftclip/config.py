"""The recipe schema pieces every task shares (dataclasses; omegaconf structured configs).

A task's schema (``ftclip/tasks/<task>/schema.py``) extends :class:`RecipeBase` with its own
``data``, ``strategies`` and ``eval`` sections. Reading, composing and validating a recipe
against a task's schema is :mod:`ftclip.recipe`'s job; this module knows no task.

Every numeric key declares its allowed values next to it (``within(POSITIVE_INT, 64)``, see
:mod:`ftclip.domains`); recipe validation checks them all before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from ftclip.domains import (FINITE, FRACTION, NAME, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED, Each,
                            Interval, OneOf, within)
from ftclip.stages import OPTIMIZERS, SCHEDULE_INTERVALS, SCHEDULES
from ftclip.errors import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent


INTERPOLATIONS = ("bicubic", "bilinear")  # PIL resize kernels open_clip's preprocessing (and so an export) can record
LORA_ENCODERS = ("image", "text")
LORA_TARGETS = ("attn", "qkv", "mlp")  # q, k, v and out / q, k, v only (CLIP-LoRA) / the MLP
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")  # trainer.logger (ftclip/logs.py builds them)
#: stages.<s>.epochs; 0 is what users write to mean "evaluate only", so the message says how
EPOCHS = Interval(1, integer=True)
EPOCHS.text += " (to evaluate without training, use `ftclip eval RECIPE` or `ftclip eval RUN_DIR`)"
#: Lightning 2.6's precision names (tests/test_domains.py compares them with Lightning's own list)
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "32", "16", "bf16", "64")


# --------------------------------------------------------------------------- schema pieces
@dataclass
class ModelConfig:
    """The open_clip backbone."""

    name: str = MISSING  # any open_clip model name, e.g. ViT-B-16, or an ftclip tiny model
    pretrained: Optional[str] = None  # open_clip tag (openai, laion2b_s34b_b88k) or a local file
    image_size: List[int] = within(Each(POSITIVE_INT, length=2), factory=lambda: [224, 224])  # [height, width]
    # None: the pretrained tag's, else the architecture's own (MobileCLIP: mean 0, std 1, bilinear;
    # SigLIP: 0.5 / 0.5), else CLIP's (OpenAI mean/std, bicubic); see backbone.model_preprocess
    mean: Optional[List[float]] = within(Each(FINITE, length=3), None)
    std: Optional[List[float]] = within(Each(POSITIVE, length=3), None)
    # resize kernel of evaluation, inference and the export's open_clip preprocessing (PIL, squash to
    # image_size): bicubic | bilinear; None: the pretrained tag's (open_clip's), else the architecture's own, else bicubic
    interpolation: Optional[str] = within(OneOf(*INTERPOLATIONS), None)
    # resize kernel of training inputs; None: model.interpolation
    train_interpolation: Optional[str] = within(OneOf(*INTERPOLATIONS), None)
    quick_gelu: Optional[bool] = None  # None: what the model config / pretrained tag says
    cache_dir: Optional[str] = None  # where open_clip looks for downloaded weights
    download: bool = False  # fetch a missing pretrained tag from the network (off: never wait on a network)
    grad_checkpointing: bool = False
    # ResNet towers: stride of the last stage. 2 is open_clip's; 1 is CLIP-ReID's variant (twice the grid,
    # non-square input allowed, the attention pool's positional embedding resized); re-ID recipes default to 1
    resnet_last_stride: int = within(OneOf(1, 2), 2)
    # BatchNorm layers of the backbone (ResNet, FastViT) update their running statistics only in stages that
    # train them with at least this many images per device; below it, and when frozen, they stay in eval mode
    batchnorm_min_batch: int = within(NON_NEGATIVE_INT, 8)


@dataclass
class LoraConfig:
    """peft LoRA adapters on the encoders (see docs/lora.md for defaults and their sources)."""

    enabled: bool = False
    encoders: List[str] = within(Each(OneOf(*LORA_ENCODERS), min_length=1), factory=lambda: ["image"])
    targets: List[str] = within(Each(OneOf(*LORA_TARGETS), min_length=1), factory=lambda: ["attn"])
    # "all", an int N (last N blocks) or a list of block indices
    blocks: Any = within(OneOf("all") | POSITIVE_INT | Each(NON_NEGATIVE_INT, min_length=1), "all")
    r: int = within(POSITIVE_INT, 16)
    alpha: float = within(POSITIVE, 16.0)
    dropout: float = within(Interval(0, 1, high_open=True), 0.1)
    rslora: bool = False  # scaling alpha / sqrt(r) (rsLoRA, as CLIP-LoRA) instead of alpha / r


@dataclass
class OptimizerConfig:
    name: str = within(OneOf(*OPTIMIZERS), "adam")
    lr: float = within(POSITIVE, 1e-4)
    weight_decay: float = within(NON_NEGATIVE, 1e-4)
    # lr x this for every parameter named *bias* (in_proj_bias too); CLIP-ReID stage 2: 2.0
    bias_lr_factor: float = within(POSITIVE, 1.0)
    momentum: float = within(FRACTION, 0.9)  # sgd only
    eps: float = within(POSITIVE, 1e-8)  # adam/adamw (Tip-Adapter-F uses 1e-4)
    fused: Optional[bool] = None  # None: fused on CUDA, off on CPU


@dataclass
class ScheduleConfig:
    name: str = within(OneOf(*SCHEDULES), "constant")  # formulas in ftclip/stages.py
    # the epoch number t the schedule is evaluated at for the first epoch (ftclip/stages.py): 1 as CLIP-ReID
    # steps its schedulers (then the first epoch is already one warm-up step above warmup_lr / warmup_factor
    # and the warm-up lasts warmup_epochs - 1 epochs); 0 as torch's schedulers stepped after each epoch (pyiqa)
    first_epoch: int = within(OneOf(0, 1), 1)
    warmup_epochs: int = within(NON_NEGATIVE_INT, 0)  # warm-up length: epochs, or steps with interval step
    warmup_lr: float = within(NON_NEGATIVE, 1e-5)  # cosine: the absolute lr the warm-up line starts from (t = 0)
    warmup_factor: float = within(FRACTION, 0.1)  # warmup_multistep: the factor the warm-up line starts from (t = 0)
    min_lr: float = within(NON_NEGATIVE, 1e-6)  # cosine floor (dassl_cosine: its eta_min; warmup_cosine: added)
    milestones: List[int] = within(Each(NON_NEGATIVE_INT), factory=list)  # epoch numbers t from which gamma applies once more
    gamma: float = within(POSITIVE, 0.1)
    interval: str = within(OneOf(*SCHEDULE_INTERVALS), "epoch")  # the schedule advances per epoch or per optimizer step


@dataclass
class EarlyStoppingConfig:
    """Stop a stage when ``monitor`` has not improved for ``patience`` evaluations (Lightning EarlyStopping)."""

    patience: int = within(POSITIVE_INT, 3)  # evaluations without improvement (eval_every epochs apart)
    min_delta: float = within(NON_NEGATIVE, 0.0)  # smallest change that counts as an improvement


@dataclass
class StageConfig:
    """One stage: what it trains (everything else frozen), how, and for how long."""

    kind: str = MISSING  # the task's objective for this stage (reid: prompts|image; iqa: qualiclip|mos)
    # parameter groups to train, e.g. [prompts] or [image, head]; empty for a task's closed-form kinds (recipe.py)
    train: List[str] = within(Each(NAME), factory=list)
    epochs: int = within(EPOCHS, 1)
    batch_size: Optional[int] = within(POSITIVE_INT, None)  # None: data.batch_size
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # loss name -> weight (or margin); the names a stage kind takes are the task's loss_settings
    losses: Dict[str, float] = within(Each(NON_NEGATIVE, mapping=True), factory=dict)
    eval_every: Optional[int] = within(NON_NEGATIVE_INT, None)  # epochs between evaluations; None: eval.every
    max_steps: int = within(OneOf(-1) | POSITIVE_INT, -1)  # cap on optimizer steps (smoke runs); -1: no cap
    # a metric the task logs as val/<name> (mAP, synthetic/srcc, accuracy, ...): keeps checkpoints/<stage>/best.ckpt
    monitor: Optional[str] = within(NAME, None)
    monitor_mode: str = within(OneOf("max", "min"), "max")  # which direction of `monitor` is better
    early_stopping: Optional[EarlyStoppingConfig] = None  # needs `monitor`, e.g. {patience: 5}


@dataclass
class TrainerConfig:
    """Passed to lightning.Trainer (see docs/distributed.md)."""

    accelerator: str = within(OneOf(*ACCELERATORS), "auto")  # whether this machine has one: engine.check_trainer
    # an int (-1: all), "auto", or a list of device ids
    devices: Any = within(OneOf("auto", -1) | POSITIVE_INT | Each(NON_NEGATIVE_INT, min_length=1), 1)
    num_nodes: int = within(POSITIVE_INT, 1)
    strategy: str = "auto"  # auto, ddp, ddp_find_unused_parameters_true, fsdp, ... (Lightning's names: engine.check_trainer)
    precision: Optional[str] = within(OneOf(*PRECISIONS), None)  # None: bf16-mixed on CUDA with bf16, else 32-true
    deterministic: bool = False
    log_every_n_steps: int = within(POSITIVE_INT, 10)
    gradient_clip_val: Optional[float] = within(NON_NEGATIVE, None)
    ckpt_every_n_steps: int = within(NON_NEGATIVE_INT, 0)  # 0: checkpoint at every epoch end only
    # divergence: a trainable tensor whose max |w| exceeds this many times its value at the stage's start
    # (taken as at least 1) is not written to a checkpoint and stops training; 0: off (NaN/inf always stop)
    max_weight_growth: float = within(NON_NEGATIVE, 1000.0)
    compile: bool = False  # torch.compile the image encoder
    enable_progress_bar: bool = True
    # a fraction of the batches in (0, 1], or a number of batches
    limit_train_batches: Optional[float] = within(Interval(0, 1, low_open=True) | POSITIVE_INT, None)
    # csv (always written: plots, report and resume read it), tensorboard, wandb (offline), mlflow; or a list
    logger: Any = within(OneOf(*LOGGERS) | Each(OneOf(*LOGGERS), min_length=1), "csv")


EXPORT_FORMATS = ("open_clip", "onnx", "hf")  # ftclip/artifacts/export.py; open_clip is always written
HF_TEXT_LAYERS = ("last", "penultimate")  # --format hf: what text_encoder/ outputs (ftclip/artifacts/hf.py)


def check_interpolation(interpolation: str, key: str = "model.interpolation") -> str:
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"{key} '{interpolation}' is not one of {', '.join(INTERPOLATIONS)} "
                          "(the resize kernels open_clip's preprocessing, and so an export, can record)")
    return interpolation


@dataclass
class RunConfig:
    dir: Optional[str] = None  # None: <root>/<name>/<timestamp>
    root: str = "runs"
    export: List[str] = within(Each(OneOf(*EXPORT_FORMATS)), factory=list)  # formats exported at the end
    hf_text_layer: str = within(OneOf(*HF_TEXT_LAYERS), "last")  # hf export: last (SD 1.x) | penultimate (SD 2.x)


@dataclass
class EvalConfig:
    every: int = within(NON_NEGATIVE_INT, 0)  # epochs between evaluations during a stage; 0: only at the end of each stage
    before: bool = True  # evaluate the untrained model first (zero-shot baseline)
    batch_size: int = within(POSITIVE_INT, 256)
    plots: bool = True  # the task's plots of each evaluation into plots/ (re-ID rank list + CMC, IQA scatter + grid)


@dataclass
class RecipeBase:
    """Keys every recipe has; each task adds ``data``, ``strategies`` and its own ``eval``."""

    task: str = MISSING
    name: str = MISSING
    seed: int = within(SEED, 0)
    seeds: List[int] = within(Each(SEED), factory=list)  # one run per seed + a mean/std summary (commands/fit.py)
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: Dict[str, StageConfig] = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=RunConfig)
