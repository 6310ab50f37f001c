"""Recipe schema of the re-identification task (CLIP-ReID)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from ftclip.config import EvalConfig, LoraConfig, ModelConfig, RecipeBase
from ftclip.data.tables import DUPLICATE_POLICIES
from ftclip.domains import FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE_INT, OneOf, within


@dataclass
class ReidDataConfig:
    format: str = "auto"  # auto, market1501, dukemtmc, msmt17, veri776, csv
    root: str = MISSING
    csv: Optional[str] = None  # format=csv: the list file (path,pid,camid,split); default <root>/reid.csv
    synthetic: bool = False  # write ftclip's synthetic Market-1501-layout set to root first if it is missing
    synthetic_ids: int = within(POSITIVE_INT, 40)  # identities per split (train and test) of that synthetic set
    batch_size: int = within(POSITIVE_INT, 64)  # per device; stage 2: P identities x K images
    num_instances: int = within(POSITIVE_INT, 4)  # K
    num_workers: int = within(NON_NEGATIVE_INT, 4)
    pin_memory: bool = True
    on_bad_image: str = within(OneOf("error", "skip"), "error")
    check_images: bool = True  # decode every image once before training (bad files fail fast)
    # an image listed twice in a split (a CSV row repeated): error, or keep the first row of each
    on_duplicate: str = within(OneOf(*DUPLICATE_POLICIES), "error")
    flip_p: float = within(FRACTION, 0.5)
    pad: int = within(NON_NEGATIVE_INT, 10)
    erasing_p: float = within(FRACTION, 0.5)
    # stage 2: decode + resize every training image once into a uint8 cache on the device and augment
    # batches there (ftclip/tasks/reid/gpu_augment.py): Market-1501 at 256x128 ~1.3 GB; no JPEG/CPU work per step
    device_cache: bool = False


@dataclass
class IdPromptConfig:
    template: Optional[str] = None  # None: "A photo of a X X X X person." ("vehicle." for veri776)
    placeholder: str = "X"
    init_std: float = within(NON_NEGATIVE, 0.02)


@dataclass
class HeadConfig:
    sie: bool = False  # camera embedding added to the class token
    sie_coefficient: float = within(NON_NEGATIVE, 3.0)


@dataclass
class ReidStrategies:
    prompts: IdPromptConfig = field(default_factory=IdPromptConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class ReidEvalConfig(EvalConfig):
    max_rank: int = within(POSITIVE_INT, 50)
    metric: str = within(OneOf("sqeuclidean", "cosine"), "sqeuclidean")  # on L2-normalised features
    # final+proj (CLIP-ReID, 1280-d for ViT-B/16), final, proj (the names of ftclip.artifacts.layout.FEATURES)
    feature: str = within(OneOf("final+proj", "final", "proj"), "final+proj")


@dataclass
class ReidModelConfig(ModelConfig):
    resnet_last_stride: int = within(OneOf(1, 2), 1)  # CLIP-ReID's ResNet variant: last stage stride 1 (256x128 -> 16x8)


@dataclass
class Schema(RecipeBase):
    task: str = "reid"
    model: ReidModelConfig = field(default_factory=ReidModelConfig)
    data: ReidDataConfig = field(default_factory=ReidDataConfig)
    strategies: ReidStrategies = field(default_factory=ReidStrategies)
    eval: ReidEvalConfig = field(default_factory=ReidEvalConfig)
