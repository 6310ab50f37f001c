"""Recipe schema of the few-shot classification task (``task: fewshot``); docs/recipes.md lists every key.

Method defaults come from :mod:`ftclip.tasks.fewshot.methods` (each reference's values, see
docs/methods/fewshot.md). Which method a stage runs is its ``kind``; the settings of each
method live under ``strategies.<method>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from ftclip.config import EvalConfig, LoraConfig, RecipeBase
from ftclip.tasks.fewshot.methods import COOP, LINEAR_PROBE, LP_PLUS_PLUS, TipAdapterDefaults

_TIP = TipAdapterDefaults()


@dataclass
class FewshotDataConfig:
    format: str = "auto"  # auto, folder, csv, dassl
    root: Optional[str] = None  # the data set folder (format csv: may be left out when data.csv is given)
    csv: Optional[str] = None  # format csv: the path,label[,split] list (default: the one .csv in root)
    dataset: Optional[str] = None  # format dassl: which of CoOp's 11 sets (default: detected)
    classnames: Optional[str] = None  # file renaming the classes (.json or "key name" lines)
    test_fraction: float = 0.3  # one folder tree / CSV without split column: share held out as test
    split_seed: int = 0  # seed of that train/test split (fixed across the K-shot seeds)
    shots: int = 16  # K training images per class
    val_shots: Optional[int] = None  # val images per class; null: min(shots, 4)
    seed: Optional[int] = None  # seed of the K-shot draw; null: the run's seed
    split: str = "all"  # all | base2new (first ceil(n/2) classes trained, the rest tested zero-shot)
    synthetic: bool = False  # write ftclip's synthetic set into data.root first when data.root is missing or empty
    batch_size: int = 32
    num_workers: int = 2
    pin_memory: bool = True
    on_bad_image: str = "error"  # error | skip
    check_images: bool = True  # decode every image the run uses once before any model is built


@dataclass
class RetainSetConfig:
    """A second labelled set, evaluated zero-shot after every stage: what fine-tuning forgets."""

    format: str = "auto"
    root: Optional[str] = None  # null: no retain set
    csv: Optional[str] = None
    dataset: Optional[str] = None
    classnames: Optional[str] = None


@dataclass
class FewshotEvalConfig(EvalConfig):
    retain: RetainSetConfig = field(default_factory=RetainSetConfig)
    captions: Optional[str] = None  # path,caption CSV: image<->text retrieval R@1/5/10 after every stage
    plots: bool = True  # confusion matrix and reliability diagram after every stage, accuracy vs WiSE alpha


@dataclass
class ZeroshotConfig:
    """The text classifier: class-name prompts through the text tower (every method that reads text)."""

    templates: Any = "default"  # default, clip_imagenet, clip_imagenet_select, dataset, "... {} ...", or a list
    logit_scale: Optional[float] = 100.0  # fixed scale on the cosine; null: the model's exp(logit_scale)


@dataclass
class CoopConfig:
    n_ctx: int = COOP.n_ctx  # learned context vectors (an init phrase sets their number)
    init: Optional[str] = COOP.init  # e.g. "a photo of a"; null: N(0, init_std)
    class_specific: bool = COOP.class_specific  # one context per class (CSC)
    position: str = COOP.position  # end, middle, front: where the class name goes
    init_std: float = COOP.init_std


@dataclass
class LinearProbeConfig:
    c_grid: List[float] = field(default_factory=lambda: list(LINEAR_PROBE.c_grid))
    search_steps: int = LINEAR_PROBE.search_steps
    max_iter: int = LINEAR_PROBE.max_iter


@dataclass
class LpPlusPlusConfig:
    epochs: int = LP_PLUS_PLUS.epochs
    alpha_every: int = LP_PLUS_PLUS.alpha_every


@dataclass
class TipAdapterConfig:
    augment_passes: int = _TIP.augment_passes  # cache keys: mean over this many augmented passes
    init_alpha: Optional[float] = None  # null: the reference's value for the data set (2 for others)
    init_beta: float = _TIP.init_beta
    search_scale: Optional[List[float]] = None  # [beta, alpha]; null: the reference's for the data set
    search_step: List[int] = field(default_factory=lambda: list(_TIP.search_step))


@dataclass
class FlypConfig:
    captions: Optional[str] = None  # path,caption CSV of training pairs; null: class prompts (every template)


@dataclass
class FewshotStrategies:
    zeroshot: ZeroshotConfig = field(default_factory=ZeroshotConfig)
    coop: CoopConfig = field(default_factory=CoopConfig)
    linear_probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    lp_plus_plus: LpPlusPlusConfig = field(default_factory=LpPlusPlusConfig)
    tip_adapter: TipAdapterConfig = field(default_factory=TipAdapterConfig)
    flyp: FlypConfig = field(default_factory=FlypConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class WiseConfig:
    alpha: List[float] = field(default_factory=list)  # WiSE-FT mixing weights evaluated after weight-changing stages


@dataclass
class Schema(RecipeBase):
    task: str = "fewshot"
    data: FewshotDataConfig = field(default_factory=FewshotDataConfig)
    strategies: FewshotStrategies = field(default_factory=FewshotStrategies)
    eval: FewshotEvalConfig = field(default_factory=FewshotEvalConfig)
    wise: WiseConfig = field(default_factory=WiseConfig)
