"""Recipe schema of the image-quality task (antonym prompts: QualiCLIP-style and CLIP-IQA+-style)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ftclip.config import EvalConfig, LoraConfig, RecipeBase
from ftclip.data.tables import DUPLICATE_POLICIES
from ftclip.domains import (FINITE, FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, Each, Interval,
                            OneOf, within)
from ftclip.strategies.prompts import CONTEXT_INITS, CONTEXT_LAYOUTS
from ftclip.tasks.iqa.degradations import ALL_KINDS, MAX_LEVELS

OVERLAP = Interval(0, 1, low_open=True)


@dataclass
class IqaDataConfig:
    # stage qualiclip: unlabeled (pristine) images, one folder or a list of folders, searched recursively
    images: Any = None
    levels: int = within(Interval(2, MAX_LEVELS, integer=True), 5)  # L: degradation levels per distortion
    distortions: List[str] = within(Each(OneOf(*ALL_KINDS), min_length=1), factory=lambda: [
        "blur", "noise", "jpeg", "downscale", "brightness", "contrast", "saturation"])
    min_overlap: float = within(OVERLAP, 0.5)  # the two crops of an image share at least this fraction of their area
    max_overlap: float = within(OVERLAP, 0.9)  # ... and at most this fraction (so they are not identical)
    # stage mos: a labeled set (koniq10k, spaq, kadid10k, livec, csv or auto) with mean opinion scores
    format: str = "auto"
    root: Optional[str] = None
    split: Optional[str] = None  # koniq10k: train|val|test; csv: its split column; None: everything
    csv: Optional[str] = None  # format=csv: the list file (path,mos[,split]); default the one .csv in root
    images_dir: Optional[str] = None  # override the layout's image folder (relative to root)
    # [lo, hi] -> MOS mapped to [0, 1]; None: the format's scale
    mos_range: Optional[List[float]] = within(Each(FINITE, length=2), None)
    flip_p: float = within(FRACTION, 0.5)  # stage mos: horizontal flip (CLIP-IQA+ uses flips only)
    # ftclip's synthetic set (pristine/, eval.csv, transfer.csv), written to synthetic_dir if missing
    synthetic: bool = False
    synthetic_dir: str = "runs/_data/iqa_synthetic"
    synthetic_images: int = within(POSITIVE_INT, 32)  # pristine training images
    synthetic_eval_images: int = within(POSITIVE_INT, 8)  # eval sources (each degraded by every kind at every level)
    # transfer sources: other content, degraded by the held-out kinds
    synthetic_transfer_images: int = within(POSITIVE_INT, 8)
    # pristine images [height, width]
    synthetic_size: List[int] = within(Each(POSITIVE_INT, length=2), factory=lambda: [96, 96])
    # eval and transfer images [height, width]; null: model.image_size (evaluated at their own pixel scale, as the
    # training crops are, not resized)
    synthetic_eval_size: Optional[List[int]] = within(Each(POSITIVE_INT, length=2), None)
    batch_size: int = within(POSITIVE_INT, 16)  # per device; stage qualiclip: images (each 2 x L crops)
    num_workers: int = within(NON_NEGATIVE_INT, 4)
    pin_memory: bool = True
    on_bad_image: str = within(OneOf("error", "skip"), "error")
    check_images: bool = True  # decode every image once before training (bad files fail fast)
    # an image listed twice in one set (a CSV row repeated): error, or keep the first row of each
    on_duplicate: str = within(OneOf(*DUPLICATE_POLICIES), "error")


@dataclass
class EvalSetConfig:
    """One labeled evaluation set."""

    format: str = "auto"
    root: Optional[str] = None
    split: Optional[str] = None
    csv: Optional[str] = None
    images_dir: Optional[str] = None


@dataclass
class IqaEvalConfig(EvalConfig):
    # names of the sets to evaluate on; each is a key below (or under `extra`)
    sets: List[str] = field(default_factory=list)
    koniq: EvalSetConfig = field(default_factory=lambda: EvalSetConfig(format="koniq10k", split="test"))
    spaq: EvalSetConfig = field(default_factory=lambda: EvalSetConfig(format="spaq"))
    kadid: EvalSetConfig = field(default_factory=lambda: EvalSetConfig(format="kadid10k"))
    livec: EvalSetConfig = field(default_factory=lambda: EvalSetConfig(format="livec"))
    csv: EvalSetConfig = field(default_factory=lambda: EvalSetConfig(format="csv"))
    # root null: <data.synthetic_dir>/eval.csv (ftclip's graded synthetic set, MOS = levels - level)
    synthetic: EvalSetConfig = field(default_factory=lambda: EvalSetConfig(format="csv"))
    # root null: <data.synthetic_dir>/transfer.csv (other content, distortions training never saw)
    synthetic_transfer: EvalSetConfig = field(default_factory=lambda: EvalSetConfig(format="csv"))
    extra: Dict[str, EvalSetConfig] = field(default_factory=dict)  # any other named sets


@dataclass
class AntonymConfig:
    pairs: List[List[str]] = field(default_factory=lambda: [["Good photo.", "Bad photo."]])
    logit_scale: Optional[float] = within(POSITIVE, 100.0)  # fixed scale on cosine similarity; null: the model's own
    # > 0: N learnable context vectors around each prompt (group `prompts`), CLIP-IQA+ uses 16
    context_tokens: int = within(NON_NEGATIVE_INT, 0)
    # pyiqa's CLIP-IQA+ (the defaults): one context per prompt, N/2 before and N/2 after its tokens, started from the
    # "X" token's embedding; CoOp's: context_per_prompt false, context_layout front, context_init normal (init_std)
    context_per_prompt: bool = True
    context_layout: str = within(OneOf(*CONTEXT_LAYOUTS), "middle")  # middle | front
    context_init: str = within(OneOf(*CONTEXT_INITS), "token")  # token | normal
    init_std: float = within(NON_NEGATIVE, 0.02)


@dataclass
class IqaStrategies:
    antonym: AntonymConfig = field(default_factory=AntonymConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class Schema(RecipeBase):
    task: str = "iqa"
    data: IqaDataConfig = field(default_factory=IqaDataConfig)
    strategies: IqaStrategies = field(default_factory=IqaStrategies)
    eval: IqaEvalConfig = field(default_factory=IqaEvalConfig)
