"""The recipe schema pieces every task shares (dataclasses; omegaconf structured configs).

A task's schema (``ftclip/tasks/<task>/schema.py``) extends :class:`RecipeBase` with its own
``data``, ``strategies`` and ``eval`` sections. Reading, composing and validating a recipe
against a task's schema is :mod:`ftclip.recipe`'s job; this module knows no task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from ftclip.errors import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent


# --------------------------------------------------------------------------- schema pieces
@dataclass
class ModelConfig:
    """The open_clip backbone."""

    name: str = MISSING  # any open_clip model name, e.g. ViT-B-16, or an ftclip tiny model
    pretrained: Optional[str] = None  # open_clip tag (openai, laion2b_s34b_b88k) or a local file
    image_size: List[int] = field(default_factory=lambda: [224, 224])  # [height, width]
    mean: Optional[List[float]] = None  # None: from the pretrained tag, else OpenAI's
    std: Optional[List[float]] = None
    # resize kernel of evaluation, inference and the export's open_clip preprocessing (PIL, squash to
    # image_size): bicubic | bilinear; None: the pretrained tag's (open_clip's), else bicubic
    interpolation: Optional[str] = None
    train_interpolation: Optional[str] = None  # resize kernel of training inputs; None: model.interpolation
    quick_gelu: Optional[bool] = None  # None: what the model config / pretrained tag says
    cache_dir: Optional[str] = None  # where open_clip looks for downloaded weights
    download: bool = False  # fetch a missing pretrained tag from the network (off: never wait on a network)
    grad_checkpointing: bool = False


@dataclass
class LoraConfig:
    """peft LoRA adapters on the encoders (see docs/lora.md for defaults and their sources)."""

    enabled: bool = False
    encoders: List[str] = field(default_factory=lambda: ["image"])  # image, text
    targets: List[str] = field(default_factory=lambda: ["attn"])  # attn, mlp
    blocks: Any = "all"  # "all", an int N (last N blocks) or a list of block indices
    r: int = 16
    alpha: float = 16.0
    dropout: float = 0.1


@dataclass
class OptimizerConfig:
    name: str = "adam"  # adam, adamw, sgd
    lr: float = 1e-4
    weight_decay: float = 1e-4
    bias_lr_factor: float = 1.0  # lr x this for every parameter named *bias* (in_proj_bias too); CLIP-ReID stage 2: 2.0
    momentum: float = 0.9  # sgd only
    fused: Optional[bool] = None  # None: fused on CUDA, off on CPU


@dataclass
class ScheduleConfig:
    name: str = "constant"  # constant, cosine, warmup_multistep
    # the epoch number t the schedule is evaluated at for the first epoch (ftclip/stages.py): 1 as CLIP-ReID
    # steps its schedulers (then the first epoch is already one warm-up step above warmup_lr / warmup_factor
    # and the warm-up lasts warmup_epochs - 1 epochs); 0 as torch's schedulers stepped after each epoch (pyiqa)
    first_epoch: int = 1
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5  # cosine: the absolute lr the warm-up line starts from (t = 0)
    warmup_factor: float = 0.1  # warmup_multistep: the factor the warm-up line starts from (t = 0)
    min_lr: float = 1e-6  # cosine floor
    milestones: List[int] = field(default_factory=list)  # epoch numbers t from which gamma applies once more
    gamma: float = 0.1


@dataclass
class StageConfig:
    """One stage: what it trains (everything else frozen), how, and for how long."""

    kind: str = MISSING  # the task's objective for this stage (reid: prompts|image; iqa: qualiclip|mos)
    train: List[str] = MISSING  # parameter groups to train, e.g. [prompts] or [image, head]
    epochs: int = 1
    batch_size: Optional[int] = None  # None: data.batch_size
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    losses: Dict[str, float] = field(default_factory=dict)  # loss name -> weight
    eval_every: Optional[int] = None  # epochs between evaluations; None: eval.every
    max_steps: int = -1  # cap on optimizer steps (smoke runs); -1: no cap


@dataclass
class TrainerConfig:
    """Passed to lightning.Trainer (see docs/distributed.md)."""

    accelerator: str = "auto"
    devices: Any = 1  # int, "auto", or a list of device ids
    num_nodes: int = 1
    strategy: str = "auto"  # auto, ddp, ddp_find_unused_parameters_true, fsdp, ...
    precision: Optional[str] = None  # None: bf16-mixed on CUDA with bf16, else 32-true
    deterministic: bool = False
    log_every_n_steps: int = 10
    gradient_clip_val: Optional[float] = None
    ckpt_every_n_steps: int = 0  # 0: checkpoint at every epoch end only
    compile: bool = False  # torch.compile the image encoder
    enable_progress_bar: bool = True
    limit_train_batches: Optional[float] = None
    num_sanity_val_steps: int = 0


EXPORT_FORMATS = ("open_clip", "onnx")  # ftclip/artifacts/export.py; open_clip is always written
INTERPOLATIONS = ("bicubic", "bilinear")  # PIL resize kernels open_clip's preprocessing can record


def check_interpolation(interpolation: str, key: str = "model.interpolation") -> str:
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"{key} '{interpolation}' is not one of {', '.join(INTERPOLATIONS)} "
                          "(the resize kernels open_clip's preprocessing, and so an export, can record)")
    return interpolation


@dataclass
class RunConfig:
    dir: Optional[str] = None  # None: <root>/<name>/<timestamp>
    root: str = "runs"
    export: List[str] = field(default_factory=list)  # formats exported at the end: open_clip, onnx


@dataclass
class EvalConfig:
    every: int = 0  # epochs between evaluations during a stage; 0: only at the end of each stage
    before: bool = True  # evaluate the untrained model first (zero-shot baseline)
    batch_size: int = 256


@dataclass
class RecipeBase:
    """Keys every recipe has; each task adds ``data``, ``strategies`` and its own ``eval``."""

    task: str = MISSING
    name: str = MISSING
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: Dict[str, StageConfig] = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=RunConfig)
