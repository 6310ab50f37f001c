"""Recipe schema of the few-shot classification task (``task: fewshot``); docs/recipes.md lists every key.

Method defaults come from :mod:`ftclip.tasks.fewshot.methods` (each reference's values, see
docs/methods/fewshot.md). Which method a stage runs is its ``kind``; the settings of each
method live under ``strategies.<method>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from ftclip.config import EvalConfig, LoraConfig, RecipeBase
from ftclip.domains import (FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED, Each, Interval,
                            OneOf, within)
from ftclip.tasks.fewshot.coop import CLASS_TOKEN_POSITIONS
from ftclip.tasks.fewshot.formats import FEWSHOT_FORMATS
from ftclip.tasks.fewshot.methods import COOP, LINEAR_PROBE, LP_PLUS_PLUS, TipAdapterDefaults

_TIP = TipAdapterDefaults()
FORMATS = OneOf("auto", *FEWSHOT_FORMATS)


@dataclass
class FewshotDataConfig:
    format: str = within(FORMATS, "auto")
    root: Optional[str] = None  # the data set folder (format csv: may be left out when data.csv is given)
    csv: Optional[str] = None  # format csv: the path,label[,split] list (default: the one .csv in root)
    dataset: Optional[str] = None  # format dassl: which of CoOp's 11 sets (default: detected)
    classnames: Optional[str] = None  # file renaming the classes (.json or "key name" lines)
    # one folder tree / CSV without split column: share held out as test
    test_fraction: float = within(Interval(0, 1, low_open=True, high_open=True), 0.3)
    split_seed: int = within(SEED, 0)  # seed of that train/test split (fixed across the K-shot seeds)
    shots: int = within(POSITIVE_INT, 16)  # K training images per class
    val_shots: Optional[int] = within(POSITIVE_INT, None)  # val images per class; null: min(shots, 4)
    seed: Optional[int] = within(SEED, None)  # seed of the K-shot draw; null: the run's seed
    # all | base2new (first ceil(n/2) classes trained, the rest tested zero-shot)
    split: str = within(OneOf("all", "base2new"), "all")
    synthetic: bool = False  # write ftclip's synthetic set into data.root first when data.root is missing or empty
    batch_size: int = within(POSITIVE_INT, 32)
    num_workers: int = within(NON_NEGATIVE_INT, 2)
    pin_memory: bool = True
    on_bad_image: str = within(OneOf("error", "skip"), "error")
    check_images: bool = True  # decode every image the run uses once before any model is built


@dataclass
class RetainSetConfig:
    """A second labelled set, evaluated zero-shot after every stage: what fine-tuning forgets."""

    format: str = within(FORMATS, "auto")
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
    logit_scale: Optional[float] = within(POSITIVE, 100.0)  # fixed scale on the cosine; null: the model's exp(logit_scale)


@dataclass
class CoopConfig:
    n_ctx: int = within(POSITIVE_INT, COOP.n_ctx)  # learned context vectors (an init phrase sets their number)
    init: Optional[str] = COOP.init  # e.g. "a photo of a"; null: N(0, init_std)
    class_specific: bool = COOP.class_specific  # one context per class (CSC)
    position: str = within(OneOf(*CLASS_TOKEN_POSITIONS), COOP.position)  # where the class name goes
    init_std: float = within(POSITIVE, COOP.init_std)


@dataclass
class LinearProbeConfig:
    c_grid: List[float] = within(Each(POSITIVE, min_length=1), factory=lambda: list(LINEAR_PROBE.c_grid))
    search_steps: int = within(NON_NEGATIVE_INT, LINEAR_PROBE.search_steps)
    max_iter: int = within(POSITIVE_INT, LINEAR_PROBE.max_iter)


@dataclass
class LpPlusPlusConfig:
    epochs: int = within(POSITIVE_INT, LP_PLUS_PLUS.epochs)
    alpha_every: int = within(POSITIVE_INT, LP_PLUS_PLUS.alpha_every)


@dataclass
class TipAdapterConfig:
    augment_passes: int = within(POSITIVE_INT, _TIP.augment_passes)  # cache keys: mean over this many passes
    init_alpha: Optional[float] = within(NON_NEGATIVE, None)  # null: the reference's value for the data set
    init_beta: float = within(NON_NEGATIVE, _TIP.init_beta)
    # [beta, alpha] ranges searched; null: the reference's for the data set (grid i (scale - 0.1) / steps + 0.1)
    search_scale: Optional[List[float]] = within(Each(Interval(0.1, low_open=True), length=2), None)
    search_step: List[int] = within(Each(POSITIVE_INT, length=2), factory=lambda: list(_TIP.search_step))


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
    # WiSE-FT mixing weights (0 zero-shot, 1 fine-tuned) evaluated after every weight-changing stage
    alpha: List[float] = within(Each(FRACTION), factory=list)


@dataclass
class Schema(RecipeBase):
    task: str = "fewshot"
    data: FewshotDataConfig = field(default_factory=FewshotDataConfig)
    strategies: FewshotStrategies = field(default_factory=FewshotStrategies)
    eval: FewshotEvalConfig = field(default_factory=FewshotEvalConfig)
    wise: WiseConfig = field(default_factory=WiseConfig)
