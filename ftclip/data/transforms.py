"""Image pipelines (albumentations 2.0.x) and the one resize and normalisation ftclip uses.

Resize: :func:`resize` is PIL's ``Image.resize`` to (height, width) with a bicubic or bilinear
kernel -- exactly what open_clip's inference preprocessing does to a PIL image
(``torchvision.transforms.Resize`` in ``image_transform`` with ``resize_mode='squash'``), and
what the CLIP-ReID reference does with torchvision on PIL images. Every input ftclip resizes
goes through it: evaluation, the stage-1 cache, ``ftclip embed`` / ``ftclip score``, the
training transforms (:class:`Resize`), the device cache and the IQA crop fit. PIL filters
with a support scaled to the reduction (antialiased), unlike OpenCV's ``INTER_CUBIC``.

Normalisation: :func:`normalize` is ``ToTensor`` + ``Normalize`` in torchvision's float32
arithmetic (``x / 255``, then ``(x - mean) / std``), so :func:`eval_transform` gives what an
export's open_clip ``preprocess`` gives, to the bit (tests/test_preprocess_parity.py).

Re-ID training follows CLIP-ReID: resize (PIL bicubic in the reference), horizontal flip 0.5,
pad 10 + random crop, normalise, random erasing p=0.5 in timm's "pixel" mode (the erased box is
filled with N(0, 1) noise *after* normalisation). albumentations 2.0.8's own ``Erasing`` fails
at call time (its params lack the ``seed`` its ``apply`` needs) and fills uniform [0, 1], so
:class:`PixelErasing` implements the reference behaviour.

Every random draw comes from the Compose's seeded generator: :func:`apply` re-seeds it per
sample from a seed that the sampler hands out, so augmentation is a deterministic function
of (run seed, epoch, sample) whatever the number of workers.
"""

from __future__ import annotations

import math
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image

from ftclip.config import check_interpolation

_PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def resize(image: np.ndarray, size: tuple[int, int], interpolation: str = "bicubic") -> np.ndarray:
    """An HWC uint8 RGB image resized to ``size`` (height, width) by PIL (open_clip's preprocessing)."""
    h, w = int(size[0]), int(size[1])
    if image.shape[:2] == (h, w):
        return image  # torchvision's Resize returns such an image unchanged
    out = Image.fromarray(image).resize((w, h), _PIL_FILTERS[check_interpolation(interpolation)])
    return np.asarray(out)


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    """HWC uint8 -> HWC float32 ``(x / 255 - mean) / std``, the float32 operations of torchvision's
    ``ToTensor`` + ``Normalize`` (so the result equals open_clip's preprocessing bit for bit)."""
    x = image.astype(np.float32) / np.float32(255)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


class Resize(A.ImageOnlyTransform):
    """:func:`resize` as an albumentations step (always applied)."""

    def __init__(self, height: int, width: int, interpolation: str = "bicubic"):
        super().__init__(p=1.0)
        self.height, self.width = int(height), int(width)
        self.interpolation = check_interpolation(interpolation)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return resize(img, (self.height, self.width), self.interpolation)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "interpolation")


class Normalize(A.ImageOnlyTransform):
    """:func:`normalize` as an albumentations step (always applied)."""

    def __init__(self, mean, std):
        super().__init__(p=1.0)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return normalize(img, self.mean, self.std)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("mean", "std")


class PixelErasing(A.ImageOnlyTransform):
    """timm RandomErasing, mode 'pixel', one box: area in ``scale`` of the image, log-uniform
    aspect ratio in ``ratio``, up to 10 attempts; box filled with N(0, 1) values."""

    def __init__(self, scale: tuple[float, float] = (0.02, 1 / 3), ratio: tuple[float, float] = (0.3, 1 / 0.3),
                 p: float = 0.5):
        super().__init__(p=p)
        self.scale = scale
        self.ratio = ratio

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = self.py_random.uniform(*self.scale) * area
            aspect = math.exp(self.py_random.uniform(*log_ratio))
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if 0 < h < height and 0 < w < width:
                top = self.py_random.randint(0, height - h)
                left = self.py_random.randint(0, width - w)
                noise = self.random_generator.standard_normal((h, w, params["shape"][2])).astype(np.float32)
                return {"box": (top, left, h, w), "noise": noise}
        return {"box": None, "noise": None}

    def apply(self, img: np.ndarray, box=None, noise=None, **params: Any) -> np.ndarray:
        if box is None:
            return img
        top, left, h, w = box
        out = img.copy()
        out[top:top + h, left:left + w] = noise.astype(img.dtype)
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "ratio")


def reid_train_transform(size: tuple[int, int], mean, std, *, flip_p: float = 0.5, pad: int = 10,
                         erasing_p: float = 0.5, interpolation: str = "bicubic") -> A.Compose:
    h, w = size
    steps: list[A.BasicTransform] = [Resize(h, w, interpolation), A.HorizontalFlip(p=flip_p)]
    if pad > 0:
        steps += [A.Pad(padding=pad, fill=0, border_mode=cv2.BORDER_CONSTANT), A.RandomCrop(h, w)]
    steps.append(Normalize(mean, std))
    if erasing_p > 0:
        steps.append(PixelErasing(p=erasing_p))
    return A.Compose(steps, seed=0)


class RandomResizedCrop(A.RandomResizedCrop):
    """torchvision's ``RandomResizedCrop`` on PIL images (CoOp/Dassl, CLIP-LoRA, Tip-Adapter, WiSE-FT): a crop of
    area in ``scale`` of the image and log-uniform aspect in ``ratio`` (10 tries, then the centre crop),
    sampled by albumentations' ``RandomResizedCrop``, resized to ``size`` by :func:`resize` (PIL) instead of
    OpenCV."""

    def __init__(self, height: int, width: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), interpolation: str = "bicubic"):
        super().__init__(size=(int(height), int(width)), scale=tuple(scale), ratio=tuple(ratio))
        self.pil_interpolation = check_interpolation(interpolation)

    def apply(self, img: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        from albumentations.augmentations.crops import functional as fcrops

        return resize(fcrops.crop(img, *crop_coords), self.size, self.pil_interpolation)


def crop_train_transform(size: tuple[int, int], mean, std, *, scale: tuple[float, float], flip_p: float,
                         interpolation: str = "bicubic") -> A.Compose:
    """:class:`RandomResizedCrop` to ``size``, horizontal flip, normalise (the few-shot references' training input)."""
    h, w = size
    return A.Compose([RandomResizedCrop(h, w, scale, interpolation=interpolation), A.HorizontalFlip(p=flip_p),
                      Normalize(mean, std)], seed=0)


def eval_transform(size: tuple[int, int], mean, std, *, interpolation: str = "bicubic") -> A.Compose:
    """Evaluation and inference input: exactly an export's open_clip ``preprocess`` (see module docstring)."""
    h, w = size
    return A.Compose([Resize(h, w, interpolation), Normalize(mean, std)], seed=0)


def seed_transform(transform: A.Compose, seed: int) -> None:
    """Seed ``transform`` and give each of its steps its own stream derived from ``seed``.

    albumentations 2.0.8's ``Compose.set_random_seed`` seeds every child with the *same*
    seed, so their first draws are equal: flip and random erasing (both p=0.5) would fire
    together on every image and the crop offset would follow the erasing box. Independent
    per-step seeds (``SeedSequence([seed, step])``) keep each step's draws independent.
    """
    transform.set_random_seed(seed)
    for step, child in enumerate(transform.transforms):
        child.set_random_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


def apply(transform: A.Compose, image: np.ndarray, seed: int | None = None) -> torch.Tensor:
    """Run ``transform`` on an HWC uint8 image (re-seeded with ``seed`` if given) -> CHW float tensor."""
    if seed is not None:
        seed_transform(transform, int(seed))
    out = transform(image=image)["image"]
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))
