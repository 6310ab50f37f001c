"""Graded degradations: monotone effect per kind, documented strengths, determinism, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from ftclip.tasks.iqa.degradations import (ALL_KINDS, DEGRADATION_KINDS, HELDOUT_KINDS, MAX_LEVELS, degrade,
                                           degrade_levels, level_strength)
from ftclip.errors import ConfigError, DataError


def _textured_image(size: int = 128) -> np.ndarray:
    """Deterministic RGB test card: chirps (every frequency up to near Nyquist) and a zone plate."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    chirp_x = np.sin(2 * np.pi * (2 + 0.4 * size * x) * x)
    chirp_y = np.sin(2 * np.pi * (2 + 0.4 * size * y) * y)
    zone = np.cos(0.7 * np.pi * size * ((x - 0.5) ** 2 + (y - 0.5) ** 2))
    rgb = np.stack([128 + 70 * chirp_x * (0.6 + 0.4 * y), 128 + 70 * chirp_y * (0.6 + 0.4 * x), 128 + 70 * zone], -1)
    return np.clip(rgb, 0, 255).round().astype(np.uint8)


def _smooth_image(size: int = 128) -> np.ndarray:
    """Deterministic RGB image of slow gradients: where JPEG blocking shows (flat 8x8 steps)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    r = 128 + 80 * np.sin(2 * np.pi * (1.3 * x + 0.4 * y))
    g = 128 + 80 * np.cos(2 * np.pi * (0.5 * x - 1.1 * y))
    b = 128 + 60 * np.sin(2 * np.pi * 2.0 * np.hypot(x - 0.4, y - 0.6))
    return np.clip(np.stack([r, g, b], -1), 0, 255).round().astype(np.uint8)


IMAGE = _textured_image()
SMOOTH = _smooth_image()


def _gray(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _psnr(clean: np.ndarray, img: np.ndarray) -> float:
    mse = np.mean((clean.astype(np.float64) - img.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def _sharpness(img: np.ndarray) -> float:
    """Variance of the Laplacian of the luma."""
    return float(ndimage.laplace(_gray(img)).var())


def _noise_sigma(img: np.ndarray) -> float:
    """Immerkaer (1996) fast noise standard deviation estimate on the luma."""
    g = _gray(img)
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    response = ndimage.convolve(g, kernel)[1:-1, 1:-1]
    h, w = g.shape
    return float(np.sqrt(np.pi / 2) / (6 * (w - 2) * (h - 2)) * np.abs(response).sum())


def _blockiness(img: np.ndarray) -> float:
    """Mean absolute luma step across 8x8 block borders over the mean step inside blocks."""
    g = _gray(img)
    steps = np.concatenate([np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0)).T], axis=0)
    border = (np.arange(steps.shape[1]) % 8) == 7
    return float(steps[:, border].mean() / steps[:, ~border].mean())


def _saturation(img: np.ndarray) -> float:
    """Mean HSV saturation."""
    f = img.astype(np.float64)
    hi, lo = f.max(-1), f.min(-1)
    return float(np.mean((hi - lo) / np.maximum(hi, 1.0)))


def _strictly(values: list[float], direction: int) -> bool:
    return all((b - a) * direction > 0 for a, b in zip(values, values[1:]))


# statistic that must move monotonically with the level, its direction (+1 up, -1 down) and
# the image it is measured on (blocking is a property of smooth regions; the chirps of IMAGE
# near Nyquist make JPEG ring inside blocks as much as across their borders)
KIND_STATISTIC = {
    "blur": (_sharpness, -1, IMAGE),
    "downscale": (_sharpness, -1, IMAGE),
    "noise": (_noise_sigma, +1, IMAGE),
    "jpeg": (_blockiness, +1, SMOOTH),
    "brightness": (lambda img: float(img.mean()), -1, IMAGE),
    "contrast": (lambda img: float(_gray(img).std()), -1, IMAGE),
    "saturation": (_saturation, -1, IMAGE),
    "motion_blur": (_sharpness, -1, IMAGE),
    "impulse_noise": (lambda img: float(np.isin(img, (0, 255)).all(-1).mean()), +1, IMAGE),
    "pixelate": (lambda img: float((np.diff(_gray(img), axis=1) == 0).mean()), +1, IMAGE),  # flat runs of blocks
    "quantize": (lambda img: float((np.diff(_gray(img), axis=1) == 0).mean()), +1, SMOOTH),  # flat bands
    "overexpose": (lambda img: float((img == 255).mean()), +1, SMOOTH),  # clipped highlights
    "oversharpen": (_sharpness, +1, SMOOTH),
}


def test_every_kind_has_a_statistic() -> None:
    assert set(KIND_STATISTIC) == set(ALL_KINDS)
    assert not set(DEGRADATION_KINDS) & set(HELDOUT_KINDS)


@pytest.mark.parametrize("num_levels", [5, 3])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_psnr_strictly_decreases_with_level(kind: str, num_levels: int) -> None:
    image = SMOOTH if kind == "pixelate" else IMAGE  # blocks of the test card's near-Nyquist chirps alias
    levels = degrade_levels(image, kind, num_levels=num_levels, seed=0)
    psnr = [_psnr(image, img) for img in levels]
    assert _strictly(psnr, -1), psnr


@pytest.mark.parametrize("num_levels", [5, 3])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_kind_statistic_is_monotone(kind: str, num_levels: int) -> None:
    stat, direction, image = KIND_STATISTIC[kind]
    values = [stat(img) for img in [image, *degrade_levels(image, kind, num_levels=num_levels, seed=0)]]
    assert _strictly(values, direction), values


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_level_zero_is_identity_and_output_format(kind: str) -> None:
    original = IMAGE.copy()
    same = degrade(IMAGE, kind, 0)
    assert np.array_equal(same, IMAGE) and same is not IMAGE
    out = degrade(IMAGE, kind, 3, seed=1)
    assert out.dtype == np.uint8 and out.shape == IMAGE.shape
    assert not np.array_equal(out, IMAGE)
    assert np.array_equal(IMAGE, original)  # input untouched


def test_documented_strength_table() -> None:
    """The table in the module docstring and docs/iqa_method.md (levels 1..5 of 5)."""
    table = {
        "blur": [0.8, 1.6, 2.4, 3.2, 4.0],
        "noise": [0.04, 0.08, 0.12, 0.16, 0.20],
        "jpeg": [55, 30, 17, 9, 5],
        "downscale": [0.66, 0.44, 0.29, 0.19, 0.125],
        "brightness": [0.86, 0.72, 0.58, 0.44, 0.30],
        "contrast": [0.84, 0.68, 0.52, 0.36, 0.20],
        "saturation": [0.80, 0.60, 0.40, 0.20, 0.00],
        "motion_blur": [3, 5, 7, 9, 11],
        "impulse_noise": [0.024, 0.048, 0.072, 0.096, 0.12],
        "pixelate": [0.5, 0.333, 0.25, 0.2, 0.167],
        "quantize": [34, 18, 10, 5, 3],
        "overexpose": [1.24, 1.48, 1.72, 1.96, 2.2],
        "oversharpen": [0.6, 1.2, 1.8, 2.4, 3.0],
    }
    for kind, expected in table.items():
        got = [level_strength(kind, level, 5) for level in range(1, 6)]
        np.testing.assert_allclose(got, expected, atol=5e-3, err_msg=kind)


@pytest.mark.parametrize("num_levels", range(1, MAX_LEVELS + 1))
def test_strength_strictly_monotone_for_every_level_count(num_levels: int) -> None:
    identity = {"blur": 0.0, "noise": 0.0, "jpeg": 100.0, "downscale": 1.0, "impulse_noise": 0.0, "quantize": 256.0,
                "oversharpen": 0.0}
    rising = ("blur", "noise", "motion_blur", "impulse_noise", "overexpose", "oversharpen")
    for kind in ALL_KINDS:
        values = [level_strength(kind, level, num_levels) for level in range(num_levels + 1)]
        assert values[0] == identity.get(kind, 1.0)
        direction = 1 if kind in rising else -1
        assert _strictly(values, direction), (kind, values)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_same_seed_same_bytes(kind: str) -> None:
    a = degrade(IMAGE, kind, 2, seed=123)
    b = degrade(IMAGE, kind, 2, seed=123)
    assert a.tobytes() == b.tobytes()
    assert [x.tobytes() for x in degrade_levels(IMAGE, kind, seed=7)] == [
        degrade(IMAGE, kind, level, seed=7).tobytes() for level in range(1, 6)
    ]


def test_noise_depends_on_seed_and_levels_share_one_draw() -> None:
    assert not np.array_equal(degrade(IMAGE, "noise", 2, seed=1), degrade(IMAGE, "noise", 2, seed=2))
    for seed in (None, 5):
        levels = degrade_levels(IMAGE, "noise", num_levels=5, seed=seed)
        residuals = [lv.astype(np.float64) - IMAGE for lv in levels]
        unclipped = (IMAGE > 70) & (IMAGE < 185)  # far from 0/255 so that clipping is rare
        corr = np.corrcoef(residuals[0][unclipped], residuals[3][unclipped])[0, 1]
        assert corr > 0.95, corr


def test_no_albumentations_warnings() -> None:
    """albumentations warns (and ignores the value) on 1.x argument names: there must be none."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kind in DEGRADATION_KINDS:
            degrade(IMAGE, kind, 5, seed=0)


def test_bad_kind_names_value_and_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown degradation kind 'gaussian'.*blur, noise, jpeg"):
        degrade(IMAGE, "gaussian", 1)
    with pytest.raises(ConfigError, match="'haze'"):
        degrade_levels(IMAGE, "haze")


@pytest.mark.parametrize("level", [-1, 6, 2.0, True])
def test_bad_level(level: object) -> None:
    with pytest.raises(ConfigError, match=r"level must be an integer in 0\.\.5"):
        degrade(IMAGE, "blur", level)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_levels", [0, MAX_LEVELS + 1])
def test_bad_num_levels(num_levels: int) -> None:
    with pytest.raises(ConfigError, match=rf"num_levels must be an integer in 1\.\.{MAX_LEVELS}"):
        degrade_levels(IMAGE, "blur", num_levels=num_levels)


def test_bad_image_and_seed() -> None:
    with pytest.raises(DataError, match=r"RGB uint8 image"):
        degrade(IMAGE.astype(np.float32), "blur", 1)
    with pytest.raises(DataError, match=r"RGB uint8 image"):
        degrade(IMAGE[..., 0], "blur", 1)
    with pytest.raises(DataError, match="too small to downscale"):
        degrade(IMAGE[:4, :4], "downscale", 5)
    with pytest.raises(ConfigError, match="seed"):
        degrade(IMAGE, "noise", 1, seed=-3)
