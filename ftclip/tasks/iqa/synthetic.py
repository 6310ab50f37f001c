"""A deterministic synthetic image-quality set: pristine images + a graded-degradation evaluation set.

:func:`write_synthetic_iqa` draws clean "natural-looking" images (gradients, shaded shapes, fine
texture, thin edges) and an evaluation set degraded by :func:`ftclip.tasks.iqa.degradations.degrade`
at known levels, with ``mos = levels - level``. A pure function of its arguments.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ftclip.data.synthetic import check_count, check_size, grid, prepare_output, random_stream, to_uint8, downsample
from ftclip.errors import FtclipError

__all__ = ["write_synthetic_iqa"]

_IQA_SS = 2  # IQA images are drawn at 2x and averaged down (anti-aliased edges)

# Stream keys for np.random.default_rng([seed, key, ...]).
_K_PRISTINE, _K_EVAL, _K_NOISE = 11, 12, 13

def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in -1..1: a coarse random grid upsampled bicubically."""
    coarse = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    up = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(up, np.float32) / 127.5 - 1.0


def _polygon_mask(points: list[tuple[float, float]], h: int, w: int) -> np.ndarray:
    pil = Image.new("L", (w, h), 0)
    ImageDraw.Draw(pil).polygon(points, fill=255)
    return np.asarray(pil) > 127


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, scale: float) -> np.ndarray:
    """Fine texture in about -1..1: a grating, cross-hatching, or grain (sharp at output scale)."""
    kind = int(rng.integers(3))
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(2.5, 6.0) * scale
    u = xx * np.cos(angle) + yy * np.sin(angle)
    if kind == 0:
        return np.sin(2 * np.pi * u / period).astype(np.float32)
    if kind == 1:
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        return (0.5 * (np.sin(2 * np.pi * u / period) + np.sin(2 * np.pi * v / period))).astype(np.float32)
    grain = rng.normal(0, 1, (yy.shape[0] // int(scale), yy.shape[1] // int(scale))).astype(np.float32)
    return np.clip(np.kron(grain, np.ones((int(scale), int(scale)), np.float32)), -2, 2) * 0.5


def _natural_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A clean RGB uint8 image: sky/ground gradients, shaded shapes, fine texture, thin edges."""
    ss = _IQA_SS
    H, W = h * ss, w * ss
    yy, xx = grid(H, W)
    horizon = rng.uniform(0.3, 0.7) * H
    sky_top, sky_low = rng.uniform(0.3, 1.0, 3), rng.uniform(0.3, 1.0, 3)
    ground_near, ground_far = rng.uniform(0.05, 0.7, 3), rng.uniform(0.1, 0.8, 3)
    t_sky = np.clip(yy / horizon, 0, 1)[..., None]
    t_ground = np.clip((yy - horizon) / (H - horizon), 0, 1)[..., None]
    img = np.where(
        (yy < horizon)[..., None],
        sky_top * (1 - t_sky) + sky_low * t_sky,
        ground_far * (1 - t_ground) + ground_near * t_ground,
    ).astype(np.float32)
    img += 0.08 * _smooth_noise(rng, H, W, int(rng.integers(3, 7)))[..., None]  # clouds, soft shading
    ground = yy >= horizon
    if rng.random() < 0.7:  # textured ground (grass, gravel, fabric)
        img += (0.12 * _texture(rng, yy, xx, ss) * ground)[..., None]
    for _ in range(int(rng.integers(3, 8))):
        colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        cy, cx = rng.uniform(0.1, 0.95) * H, rng.uniform(0, 1) * W
        ry, rx = rng.uniform(0.08, 0.3) * H, rng.uniform(0.08, 0.3) * W
        shape = int(rng.integers(3))
        if shape == 0:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        elif shape == 1:
            mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
            pts = [(float(cx + rx * np.cos(a)), float(cy + ry * np.sin(a))) for a in angles]
            mask = _polygon_mask(pts, H, W)
        # a linear light gradient across the shape
        g = rng.uniform(-1, 1, 2)
        light = 1.0 + 0.35 * ((yy - cy) * g[0] / (ry + 1) + (xx - cx) * g[1] / (rx + 1)) / 2
        layer = colour * np.clip(light, 0.4, 1.4)[..., None]
        if rng.random() < 0.4:
            layer = layer + (0.15 * _texture(rng, yy, xx, ss))[..., None]
        img[mask] = layer[mask]
    for _ in range(int(rng.integers(2, 6))):  # thin dark or bright lines: twigs, wires, outlines
        pil = Image.new("L", (W, H), 0)
        pts = [(float(rng.uniform(0, W)), float(rng.uniform(0, H))) for _ in range(2)]
        ImageDraw.Draw(pil).line(pts, fill=255, width=int(ss * rng.integers(1, 3)))
        m = np.asarray(pil) > 127
        img[m] = rng.choice([0.05, 0.95]) + rng.uniform(-0.05, 0.05, 3)
    return to_uint8(np.clip(downsample(img, ss), 0, 1))


def _save_png(img: np.ndarray, path: Path) -> None:
    Image.fromarray(img).save(path, format="PNG", compress_level=6)


def write_synthetic_iqa(
    out_dir: str | Path,
    *,
    num_pristine: int = 32,
    num_eval: int = 8,
    size: tuple[int, int] = (96, 96),
    levels: int = 5,
    kinds: Sequence[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic IQA set; return ``out_dir``.

    ``pristine/``: ``num_pristine`` clean PNG images (for unlabeled, QualiCLIP-style training).
    ``eval/`` + ``eval.csv``: ``num_eval`` other clean images, each saved as is and degraded
    by every kind in ``kinds`` (default: all of ``DEGRADATION_KINDS``) at levels
    1..``levels``. ``eval.csv`` has columns ``path,mos,kind,level,source`` with paths
    relative to ``out_dir`` and ``mos = levels - level`` (pristine: ``levels``, the highest),
    so it loads with ``load_iqa_dataset("csv", out_dir / "eval.csv")``. ``size`` is
    (height, width). ``eval.csv`` is written last: its presence marks a complete set.
    """
    from ftclip.tasks.iqa.degradations import DEGRADATION_KINDS, degrade

    num_pristine = check_count("num_pristine", num_pristine, 1)
    num_eval = check_count("num_eval", num_eval, 0)
    levels = check_count("levels", levels, 1)
    h, w = check_size(size, (16, 16))
    kinds = tuple(DEGRADATION_KINDS if kinds is None else kinds)
    unknown = [k for k in kinds if k not in DEGRADATION_KINDS]
    if unknown or not kinds:
        raise FtclipError(
            f"degradation kinds {list(kinds)!r} must be a non-empty subset of {', '.join(DEGRADATION_KINDS)}"
        )
    out = prepare_output(out_dir, ("pristine", "eval", "eval.csv"), overwrite)
    (out / "pristine").mkdir()
    (out / "eval").mkdir()
    for i in range(num_pristine):
        _save_png(_natural_image(random_stream(seed, _K_PRISTINE, i), h, w), out / "pristine" / f"pristine_{i:04d}.png")
    rows: list[tuple[str, float, str, int, str]] = []
    for i in range(num_eval):
        source = f"source_{i:04d}"
        clean = _natural_image(random_stream(seed, _K_EVAL, i), h, w)
        _save_png(clean, out / "eval" / f"{source}.png")
        rows.append((f"eval/{source}.png", float(levels), "none", 0, source))
        for k, kind in enumerate(kinds):
            noise_seed = int(random_stream(seed, _K_NOISE, i, k).integers(2**31))
            for level in range(1, levels + 1):
                img = degrade(clean, kind, level, num_levels=levels, seed=noise_seed)
                name = f"{source}_{kind}_{level}.png"
                _save_png(img, out / "eval" / name)
                rows.append((f"eval/{name}", float(levels - level), kind, level, source))
    with open(out / "eval.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "mos", "kind", "level", "source"])
        writer.writerows(rows)
    return out
