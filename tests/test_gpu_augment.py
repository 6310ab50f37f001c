"""The device-side re-ID augmentation matches the albumentations pipeline in distribution.

Checked on CPU (the code is the same torch ops on any device): exact geometry of flip + pad +
crop + normalise against numpy for given draws; the draws' distributions (flip rate, crop
offsets, erasing rate, box area and aspect) against albumentations' own; per-pixel mean and
std maps over thousands of augmentations of one image against the albumentations pipeline;
and the uint8 cache holds exactly what the CPU pipeline's first step (its resize) gives.
"""

from __future__ import annotations

import math

import albumentations as A
import numpy as np
import pytest
import torch

from ftclip.tasks.reid.gpu_augment import ReidDeviceAugment, build_uint8_cache, cache_nbytes
from ftclip.data.images import read_image
from ftclip.data.transforms import PixelErasing, apply, reid_train_transform
from ftclip.errors import ConfigError

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A structured test image (gradients + noise), so flips and shifts change pixel statistics."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([255 * yy / h, 255 * xx / w, 128 + 60 * np.sin(xx / 2.0)], axis=-1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _to_batch(img: np.ndarray, n: int) -> torch.Tensor:
    return torch.from_numpy(img.transpose(2, 0, 1).copy()).unsqueeze(0).expand(n, -1, -1, -1).contiguous()


def test_geometry_is_exactly_flip_then_zero_pad_and_crop_then_normalise():
    h, w, pad = 20, 12, 4
    img = _image(h, w)
    aug = ReidDeviceAugment((h, w), MEAN, STD, pad=pad, erasing_p=0.0)
    n = 64
    params = aug.sample_params(n, generator=torch.Generator().manual_seed(1))
    out = aug(_to_batch(img, n), params=params).numpy()
    for i in range(n):
        ref = img[:, ::-1] if params["flip"][i] else img
        ref = np.pad(ref, ((pad, pad), (pad, pad), (0, 0)))  # A.Pad(fill=0)
        t, l = int(params["top"][i]), int(params["left"][i])
        ref = ref[t:t + h, l:l + w]
        ref = (ref.astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)
        np.testing.assert_allclose(out[i], ref.transpose(2, 0, 1), atol=1e-5)


def test_draws_have_the_pipelines_distribution():
    aug = ReidDeviceAugment((128, 64), MEAN, STD, flip_p=0.5, pad=10, erasing_p=0.5)
    n = 40000
    p = aug.sample_params(n, generator=torch.Generator().manual_seed(0))
    assert abs(p["flip"].double().mean().item() - 0.5) < 0.01
    for key in ("top", "left"):  # A.RandomCrop on the padded image: uniform on 0..2*pad inclusive
        counts = torch.bincount(p[key], minlength=21).double()
        assert counts.numel() == 21 and p[key].min() == 0 and p[key].max() == 20
        assert (counts / n - 1 / 21).abs().max().item() < 0.006
    # box stays inside the image
    e = p["erase"]
    assert ((p["box_top"] + p["box_h"])[e] <= 128).all() and ((p["box_left"] + p["box_w"])[e] <= 64).all()
    assert (p["box_top"][e] >= 0).all() and (p["box_left"][e] >= 0).all()


def _albumentations_boxes(h: int, w: int, n: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Erasing rate, box areas and h/w ratios of ftclip's PixelErasing, read off the erased pixels."""
    transform = A.Compose([PixelErasing(p=0.5)], seed=0)
    zeros = np.zeros((h, w, 3), np.float32)
    areas, ratios, erased = [], [], 0
    for i in range(n):
        transform.set_random_seed(i)
        mask = transform(image=zeros)["image"][..., 0] != 0
        if mask.any():
            erased += 1
            rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
            bh, bw = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
            areas.append(bh * bw)
            ratios.append(bh / bw)
    return erased / n, np.asarray(areas, np.float64), np.asarray(ratios, np.float64)


def test_erasing_rate_and_box_distribution_match_pixel_erasing():
    h, w, n = 128, 64, 6000
    ref_rate, ref_area, ref_ratio = _albumentations_boxes(h, w, n)
    aug = ReidDeviceAugment((h, w), MEAN, STD, erasing_p=0.5)
    p = aug.sample_params(200000, generator=torch.Generator().manual_seed(3))
    e = p["erase"]
    rate = e.double().mean().item()
    area = (p["box_h"][e] * p["box_w"][e]).double().numpy()
    ratio = (p["box_h"][e].double() / p["box_w"][e].double()).numpy()
    assert abs(rate - ref_rate) < 4 * math.sqrt(0.25 / n) + 0.002
    qs = np.linspace(0.05, 0.95, 19)
    # quantiles of box area (as a share of the image) and of log aspect agree (two-sample, n = 3,000 vs 100,000)
    assert np.abs(np.quantile(area, qs) - np.quantile(ref_area, qs)).max() / (h * w) < 0.02
    assert np.abs(np.quantile(np.log(ratio), qs) - np.quantile(np.log(ref_ratio), qs)).max() < 0.1
    assert abs(area.mean() - ref_area.mean()) / (h * w) < 0.006


@pytest.mark.parametrize("sparse_noise", [True, False], ids=["sparse-noise(cpu)", "dense-noise(gpu)"])
def test_per_pixel_mean_and_std_maps_match_albumentations(sparse_noise):
    h, w, pad, n = 32, 16, 4, 4000
    img = _image(h, w, seed=1)
    transform = reid_train_transform((h, w), MEAN, STD, flip_p=0.5, pad=pad, erasing_p=0.5)
    ref = torch.stack([apply(transform, img, seed) for seed in range(n)]).double()
    aug = ReidDeviceAugment((h, w), MEAN, STD, flip_p=0.5, pad=pad, erasing_p=0.5)
    aug.sparse_noise = sparse_noise  # both ways of drawing the erased values (the GPU default is dense)
    ours = aug(_to_batch(img, n), generator=torch.Generator().manual_seed(7)).double()
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    m_ref, m_ours = ref.mean(0), ours.mean(0)
    s_ref, s_ours = ref.std(0), ours.std(0)
    z = (m_ours - m_ref) / torch.sqrt((s_ref**2 + s_ours**2) / n)
    # same distribution: each pixel's z is ~N(0, 1) (pixels share the flip/crop draws, so not independent);
    # flip and erasing drawn together, or a crop off by one, give |z| > 10 here
    assert z.abs().max().item() < 5.0
    assert z.abs().mean().item() < 1.6
    rel = (s_ours - s_ref).abs() / s_ref
    assert rel.mean().item() < 0.025 and rel.max().item() < 0.25


def test_cpu_pipeline_draws_flip_and_erasing_independently():
    """albumentations seeds every step alike; ``apply`` must not let flip and erasing share one draw."""
    h, w = 32, 16
    transform = reid_train_transform((h, w), (0.5,) * 3, (0.5,) * 3, flip_p=0.5, pad=0, erasing_p=0.5)
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :4] = 255  # a white stripe on the left: flipped images have it on the right
    flips, erased = [], []
    for seed in range(600):
        out = apply(transform, img, seed).numpy()
        erased.append(bool((np.abs(np.abs(out) - 1) > 1e-4).any()))  # noise is not one of the two normalised values
        flips.append(bool((out[0, :, -4:] == 1).mean() > (out[0, :, :4] == 1).mean()))
    flips, erased = np.asarray(flips), np.asarray(erased)
    assert 0.42 < flips.mean() < 0.58 and 0.42 < erased.mean() < 0.58
    assert abs(erased[flips].mean() - erased[~flips].mean()) < 0.15


def test_no_augmentation_is_plain_normalisation():
    img = _image(16, 8)
    aug = ReidDeviceAugment((16, 8), MEAN, STD, flip_p=0.0, pad=0, erasing_p=0.0)
    out = aug(_to_batch(img, 3), generator=torch.Generator().manual_seed(0))
    ref = (img.astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)
    for i in range(3):
        np.testing.assert_allclose(out[i].numpy(), ref.transpose(2, 0, 1), atol=1e-6)


def test_same_seed_same_batch():
    img = _image(16, 8)
    aug = ReidDeviceAugment((16, 8), MEAN, STD, pad=2)
    batch = _to_batch(img, 8)
    a = aug(batch, generator=aug.generator(torch.device("cpu"), 5))
    b = aug(batch, generator=aug.generator(torch.device("cpu"), 5))
    c = aug(batch, generator=aug.generator(torch.device("cpu"), 6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ConfigError, match="flip_p"):
        ReidDeviceAugment((16, 8), MEAN, STD, flip_p=1.5)
    with pytest.raises(ConfigError, match="pad"):
        ReidDeviceAugment((16, 8), MEAN, STD, pad=-1)
    aug = ReidDeviceAugment((16, 8), MEAN, STD)
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros(2, 3, 16, 8))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_uint8_cache_holds_exactly_the_resized_images(tiny_reid_root, interpolation):
    paths = sorted(str(p) for p in (tiny_reid_root / "bounding_box_train").glob("*.jpg"))[:6]
    cache = build_uint8_cache(paths, (64, 32), interpolation, workers=2)
    assert cache.dtype == torch.uint8 and cache.shape == (6, 3, 64, 32)
    assert cache.numel() == cache_nbytes(6, (64, 32))
    resize = reid_train_transform((64, 32), MEAN, STD, interpolation=interpolation).transforms[0]  # the step it replaces
    for i, path in enumerate(paths):
        ref = resize(image=read_image(path))["image"].transpose(2, 0, 1)
        assert np.array_equal(cache[i].numpy(), ref)
    same = build_uint8_cache(paths, (128, 64), workers=1)  # native size: no resize at all
    assert np.array_equal(same[0].numpy(), read_image(paths[0]).transpose(2, 0, 1))
