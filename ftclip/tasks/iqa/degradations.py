"""Graded synthetic degradations for QualiCLIP-style quality training.

``degrade(image, kind, level, num_levels=5, seed=None)`` applies one distortion at a fixed,
documented strength. Level 0 is the identity; levels 1..num_levels get strictly stronger.
The strength of level ``k`` depends only on ``t = k / num_levels`` (so level ``num_levels``
is always the strongest setting, whatever ``num_levels`` is):

==========  ======================================================  =================================
kind        strength at ``t = k / num_levels``                      levels 1..5 when num_levels = 5
==========  ======================================================  =================================
blur        Gaussian sigma = 4.0 t px (kernel int(3.5 sigma)*2+1)   0.8, 1.6, 2.4, 3.2, 4.0
noise       additive Gaussian per channel, std = 0.20 t x 255       10.2, 20.4, 30.6, 40.8, 51.0
jpeg        re-encode at quality round(100 x 0.05^t)                55, 30, 17, 9, 5
downscale   scale 0.125^t (area down, bilinear back up)             0.66, 0.44, 0.29, 0.19, 0.125
brightness  darken: pixel x f, f = 1 - 0.7 t                        0.86, 0.72, 0.58, 0.44, 0.30
contrast    blend with the mean grey, f = 1 - 0.8 t                 0.84, 0.68, 0.52, 0.36, 0.20
saturation  blend with the greyscale image, f = 1 - t               0.80, 0.60, 0.40, 0.20, 0.00
==========  ======================================================  =================================

:data:`HELDOUT_KINDS` are other distortion types, not in ``data.distortions``' default, so that the
synthetic transfer set (:func:`ftclip.tasks.iqa.synthetic.write_synthetic_iqa`) measures how a
model trained on the kinds above ranks distortions it never saw (they can be trained on like any
other kind; plain numpy / OpenCV):

=============  ===================================================  ==============================
kind           strength at ``t = k / num_levels``                   levels 1..5 when num_levels = 5
=============  ===================================================  ==============================
motion_blur    line kernel of length 1 + 10 t px, random direction  3, 5, 7, 9, 11
impulse_noise  salt-and-pepper on a fraction 0.12 t of the pixels   0.024, 0.048, 0.072, 0.096, 0.12
pixelate       area down by 1 / (1 + 5 t), nearest back up          0.5, 0.33, 0.25, 0.2, 0.17
quantize       round(2^(6 - 4.5 t)) grey levels per channel         34, 18, 10, 5, 3
overexpose     pixel x (1 + 1.2 t) + 40 t, clipped (highlights)     1.24, 1.48, 1.72, 1.96, 2.2
oversharpen    unsharp mask, sigma 1.5 px, amount 3 t (halos)       0.6, 1.2, 1.8, 2.4, 3.0
=============  ===================================================  ==============================

``noise``, ``impulse_noise`` and ``motion_blur`` (its direction) draw random numbers. ``seed``
makes them reproducible byte for byte, and :func:`degrade_levels` uses one draw for all levels
(level k's noise is the same field scaled by its std, level k's impulses are among level
k + 1's, the motion keeps one direction), so a level sequence differs only in intensity.

Implementation: albumentations 2.0.x transforms with their 2.x argument names and
``p=1.0`` (``GaussianBlur(sigma_limit)``, ``GaussNoise(std_range)``,
``Downscale(scale_range, interpolation_pair)``, ``ColorJitter``), each run in a
``Compose(..., seed=seed)`` built per call. JPEG is encoded with OpenCV directly, after
converting RGB to BGR: albumentations 2.0.8 ``ImageCompression`` hands the RGB array to
``cv2.imencode``, which reads it as BGR and so computes luma and chroma with the red and
blue weights swapped.

``num_levels`` is limited to 1..:data:`MAX_LEVELS` so that integer-valued settings (JPEG
quality) stay strictly monotone from one level to the next.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before albumentations is imported

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from ftclip.errors import ConfigError, DataError  # noqa: E402

__all__ = [
    "DEGRADATION_KINDS",
    "HELDOUT_KINDS",
    "ALL_KINDS",
    "MAX_LEVELS",
    "degrade",
    "degrade_levels",
    "level_strength",
]

DEGRADATION_KINDS: tuple[str, ...] = ("blur", "noise", "jpeg", "downscale", "brightness", "contrast", "saturation")
#: Other distortion types (the synthetic transfer set's); see the module docstring.
HELDOUT_KINDS: tuple[str, ...] = ("motion_blur", "impulse_noise", "pixelate", "quantize", "overexpose", "oversharpen")
ALL_KINDS: tuple[str, ...] = DEGRADATION_KINDS + HELDOUT_KINDS

#: Largest supported ``num_levels``.
MAX_LEVELS: int = 10

# Strength of the strongest level (t = 1) for each kind; see the module docstring.
_BLUR_MAX_SIGMA = 4.0
_NOISE_MAX_STD = 0.20  # fraction of 255
_JPEG_MIN_QUALITY = 5.0
_DOWNSCALE_MIN_SCALE = 0.125
_BRIGHTNESS_MAX_DROP = 0.7
_CONTRAST_MAX_DROP = 0.8
_SATURATION_MAX_DROP = 1.0


def _check_kind(kind: str) -> None:
    if kind not in ALL_KINDS:
        raise ConfigError(f"unknown degradation kind {kind!r}; choose one of {', '.join(ALL_KINDS)}")


def _check_num_levels(num_levels: int) -> None:
    is_int = isinstance(num_levels, (int, np.integer)) and not isinstance(num_levels, bool)
    if not is_int or not 1 <= num_levels <= MAX_LEVELS:
        raise ConfigError(f"num_levels must be an integer in 1..{MAX_LEVELS}, got {num_levels!r}")


def _check_level(level: int, num_levels: int) -> None:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level <= num_levels:
        raise ConfigError(
            f"degradation level must be an integer in 0..{num_levels} (0 = no degradation), got {level!r}"
        )


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DataError(f"degrade expects an RGB uint8 image of shape (H, W, 3), got {desc}")
    if min(image.shape[:2]) < 1:
        raise DataError(f"degrade got an empty image of shape {image.shape}")


def _check_seed(seed: int | None) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ConfigError(f"seed must be a non-negative integer or None, got {seed!r}")


def level_strength(kind: str, level: int, num_levels: int = 5) -> float:
    """The parameter :func:`degrade` uses for ``kind`` at ``level`` (see the module table).

    blur: Gaussian sigma (px); noise: std as a fraction of 255; jpeg: quality (1-100);
    downscale: scale factor; brightness / contrast / saturation: blend factor (1 = unchanged).
    motion_blur: kernel length (px); impulse_noise: fraction of pixels; pixelate: scale factor;
    quantize: grey levels per channel; overexpose: gain; oversharpen: unsharp-mask amount.
    Level 0 returns the identity value (sigma 0, std 0, quality 100, scale 1, factor 1, length 1,
    fraction 0, 256 levels, gain 1, amount 0).
    """
    _check_kind(kind)
    _check_num_levels(num_levels)
    _check_level(level, num_levels)
    t = level / num_levels
    if kind == "blur":
        return _BLUR_MAX_SIGMA * t
    if kind == "noise":
        return _NOISE_MAX_STD * t
    if kind == "jpeg":
        return float(round(100.0 * (_JPEG_MIN_QUALITY / 100.0) ** t))
    if kind == "downscale":
        return _DOWNSCALE_MIN_SCALE**t
    if kind == "brightness":
        return 1.0 - _BRIGHTNESS_MAX_DROP * t
    if kind == "contrast":
        return 1.0 - _CONTRAST_MAX_DROP * t
    if kind == "saturation":
        return 1.0 - _SATURATION_MAX_DROP * t
    if kind == "motion_blur":
        return 1.0 + 10.0 * t
    if kind == "impulse_noise":
        return 0.12 * t
    if kind == "pixelate":
        return 1.0 / (1.0 + 5.0 * t)
    if kind == "quantize":
        return 256.0 if level == 0 else float(round(2.0 ** (6.0 - 4.5 * t)))
    if kind == "overexpose":
        return 1.0 + 1.2 * t
    return 3.0 * t  # oversharpen


def _line_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised box of ``length`` px (fractional ends) along direction ``angle`` (degrees)."""
    size = 2 * int(np.ceil(length / 2)) + 1
    x = np.arange(size, dtype=np.float64) - size // 2
    row = np.clip(length / 2 - np.abs(x) + 0.5, 0.0, 1.0)  # 1 inside, a fractional weight at each end
    k = np.zeros((size, size), np.float32)
    k[size // 2] = row
    rot = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, 1.0)
    k = cv2.warpAffine(k, rot, (size, size), flags=cv2.INTER_LINEAR)
    return k / k.sum()


def _heldout(image: np.ndarray, kind: str, strength: float, t: float, seed: int) -> np.ndarray:
    """The :data:`HELDOUT_KINDS` (numpy / OpenCV); see the module docstring's second table."""
    x = image.astype(np.float32)
    rng = np.random.default_rng(seed)
    if kind == "motion_blur":
        out = cv2.filter2D(x, -1, _line_kernel(strength, rng.uniform(0.0, 180.0)), borderType=cv2.BORDER_REFLECT)
    elif kind == "impulse_noise":
        hit = rng.random(image.shape[:2]) < strength  # one uniform field: level k's impulses are among level k+1's
        salt = rng.random(image.shape[:2]) < 0.5
        out = x.copy()
        out[hit & salt], out[hit & ~salt] = 255.0, 0.0
    elif kind == "pixelate":
        h, w = image.shape[:2]
        small = cv2.resize(image, (max(1, round(w * strength)), max(1, round(h * strength))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    elif kind == "quantize":
        step = 255.0 / (strength - 1.0)
        out = np.round(x / step) * step
    elif kind == "overexpose":
        out = x * strength + 40.0 * t
    else:  # oversharpen
        out = x + strength * (x - cv2.GaussianBlur(x, (0, 0), 1.5))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _color_jitter(brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0) -> A.ColorJitter:
    return A.ColorJitter(
        brightness=(brightness, brightness),
        contrast=(contrast, contrast),
        saturation=(saturation, saturation),
        hue=(0.0, 0.0),
        p=1.0,
    )


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), (cv2.IMWRITE_JPEG_QUALITY, quality))
    if not ok:  # pragma: no cover - OpenCV only fails here on invalid input, checked above
        raise DataError(f"JPEG encoding failed for an image of shape {image.shape}")
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _transform(kind: str, strength: float, image: np.ndarray) -> A.BasicTransform:
    if kind == "blur":
        return A.GaussianBlur(sigma_limit=(strength, strength), blur_limit=0, p=1.0)
    if kind == "noise":
        return A.GaussNoise(std_range=(strength, strength), mean_range=(0.0, 0.0), per_channel=True, p=1.0)
    if kind == "downscale":
        if round(min(image.shape[:2]) * strength) < 1:
            raise DataError(
                f"image of shape {image.shape} is too small to downscale by {strength:.3f}; "
                f"use images of at least {int(np.ceil(1.0 / _DOWNSCALE_MIN_SCALE))} px per side"
            )
        return A.Downscale(
            scale_range=(strength, strength),
            interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
            p=1.0,
        )
    if kind == "brightness":
        return _color_jitter(brightness=strength)
    if kind == "contrast":
        return _color_jitter(contrast=strength)
    return _color_jitter(saturation=strength)  # saturation


def degrade(
    image: np.ndarray,
    kind: str,
    level: int,
    *,
    num_levels: int = 5,
    seed: int | None = None,
) -> np.ndarray:
    """Degrade ``image`` with ``kind`` at ``level`` (0 = unchanged, ``num_levels`` = strongest).

    Args:
        image: RGB uint8 array (H, W, 3). Not modified.
        kind: one of :data:`ALL_KINDS`.
        level: integer in 0..num_levels; strength grows strictly with the level.
        num_levels: number of non-identity levels, 1..:data:`MAX_LEVELS`.
        seed: makes the random draw (``noise``, ``impulse_noise``, ``motion_blur``) reproducible; same seed, same bytes.

    Returns:
        A new RGB uint8 array of the same shape.

    Raises:
        ConfigError: unknown kind, level or num_levels out of range, bad seed.
        DataError: the image is not an RGB uint8 (H, W, 3) array, or too small to downscale.
    """
    _check_kind(kind)
    _check_num_levels(num_levels)
    _check_level(level, num_levels)
    _check_seed(seed)
    _check_image(image)
    if level == 0:
        return image.copy()
    strength = level_strength(kind, level, num_levels)
    if kind == "jpeg":
        return _jpeg(image, int(strength))
    if kind in HELDOUT_KINDS:
        draw = int(np.random.SeedSequence().generate_state(1)[0]) if seed is None else int(seed)
        return _heldout(image, kind, strength, level / num_levels, draw)
    pipeline = A.Compose([_transform(kind, strength, image)], seed=None if seed is None else int(seed))
    out: np.ndarray = pipeline(image=image)["image"]
    return out


def degrade_levels(
    image: np.ndarray,
    kind: str,
    num_levels: int = 5,
    seed: int | None = None,
) -> list[np.ndarray]:
    """Levels 1..num_levels of :func:`degrade`, sharing one random draw.

    With ``seed=None`` a seed is drawn once (from fresh OS entropy) and used for every
    level, so the noise field is the same at every level and only its strength changes.
    """
    _check_kind(kind)
    _check_num_levels(num_levels)
    _check_seed(seed)
    _check_image(image)
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    return [degrade(image, kind, level, num_levels=num_levels, seed=seed) for level in range(1, num_levels + 1)]
