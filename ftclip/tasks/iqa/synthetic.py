"""A deterministic synthetic image-quality set: pristine images, a graded evaluation set, a transfer set.

:func:`write_synthetic_iqa` draws clean "natural-looking" images (gradients, shaded shapes, fine
texture, thin edges), an evaluation set of other such images degraded by
:func:`ftclip.tasks.iqa.degradations.degrade` at known levels (``mos = levels - level``), and a
*transfer* set that shares neither content nor distortions with training: "urban mosaics" (flat
Voronoi facades, window grids, discs, strokes; :func:`_mosaic_image`) degraded by the
:data:`~ftclip.tasks.iqa.degradations.HELDOUT_KINDS` (motion blur, impulse noise, pixelation,
quantisation, overexposure, oversharpening). A pure function of its arguments.
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
_K_PRISTINE, _K_EVAL, _K_NOISE, _K_MOSAIC, _K_MOSAIC_NOISE = 11, 12, 13, 14, 15

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


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _mosaic_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Other content than :func:`_natural_image`: a flat-lit "urban" scene -- Voronoi facades with a
    slight shading tilt, window grids, outlined discs, polyline strokes, faint sensor grain."""
    ss = _IQA_SS
    H, W = h * ss, w * ss
    yy, xx = grid(H, W)
    n = int(rng.integers(5, 12))
    cy, cx = rng.uniform(0, H, n).astype(np.float32), rng.uniform(0, W, n).astype(np.float32)
    cell = ((yy[..., None] - cy) ** 2 + (xx[..., None] - cx) ** 2).argmin(-1)
    colours = rng.uniform(0.05, 0.95, (n, 3)).astype(np.float32)
    tilt = rng.uniform(-0.3, 0.3, (n, 2)).astype(np.float32)
    img = colours[cell] * (1 + tilt[cell, 0] * (yy / H - 0.5) + tilt[cell, 1] * (xx / W - 0.5))[..., None]
    pil = Image.fromarray(to_uint8(np.clip(img, 0, 1)))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(1, 4))):  # window grids
        x0, y0 = rng.uniform(0, W * 0.6), rng.uniform(0, H * 0.6)
        cols, rows = int(rng.integers(2, 6)), int(rng.integers(2, 6))
        size, gap = rng.uniform(2, 5) * ss, rng.uniform(1.5, 3) * ss
        fill = _colour(rng)
        for i in range(cols):
            for j in range(rows):
                a, b = x0 + i * (size + gap), y0 + j * (size + gap)
                draw.rectangle([a, b, a + size, b + size], fill=fill)
    for _ in range(int(rng.integers(2, 6))):  # outlined discs
        r, a, b = rng.uniform(3, 14) * ss, rng.uniform(0, W), rng.uniform(0, H)
        draw.ellipse([a - r, b - r, a + r, b + r], fill=_colour(rng), outline=_colour(rng), width=ss)
    for _ in range(int(rng.integers(3, 8))):  # strokes: cables, marks
        pts = [(float(rng.uniform(0, W)), float(rng.uniform(0, H))) for _ in range(int(rng.integers(2, 5)))]
        draw.line(pts, fill=_colour(rng), width=int(rng.integers(1, 3)) * ss)
    canvas = np.asarray(pil, np.float32) / 255.0 + rng.normal(0, 0.01, (H, W, 3)).astype(np.float32)
    return to_uint8(np.clip(downsample(canvas, ss), 0, 1))


def _write_graded(out: Path, folder: str, sources: list[tuple[str, np.ndarray]], kinds: Sequence[str], levels: int,
                  seed: int, noise_key: int) -> list[tuple[str, float, str, int, str]]:
    """Each clean source as is (mos = levels) and degraded by every kind at levels 1..levels (mos = levels - level)."""
    from ftclip.tasks.iqa.degradations import degrade

    (out / folder).mkdir()
    rows: list[tuple[str, float, str, int, str]] = []
    for i, (source, clean) in enumerate(sources):
        _save_png(clean, out / folder / f"{source}.png")
        rows.append((f"{folder}/{source}.png", float(levels), "none", 0, source))
        for k, kind in enumerate(kinds):
            noise_seed = int(random_stream(seed, noise_key, i, k).integers(2**31))
            for level in range(1, levels + 1):
                name = f"{source}_{kind}_{level}.png"
                _save_png(degrade(clean, kind, level, num_levels=levels, seed=noise_seed), out / folder / name)
                rows.append((f"{folder}/{name}", float(levels - level), kind, level, source))
    return rows


def _write_csv(path: Path, rows: list[tuple[str, float, str, int, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "mos", "kind", "level", "source"])
        writer.writerows(rows)


def _save_png(img: np.ndarray, path: Path) -> None:
    Image.fromarray(img).save(path, format="PNG", compress_level=6)


def write_synthetic_iqa(
    out_dir: str | Path,
    *,
    num_pristine: int = 32,
    num_eval: int = 8,
    num_transfer: int = 8,
    size: tuple[int, int] = (96, 96),
    eval_size: tuple[int, int] | None = None,
    levels: int = 5,
    kinds: Sequence[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic IQA set; return ``out_dir``.

    ``pristine/``: ``num_pristine`` clean PNG images of ``size`` (for unlabeled, QualiCLIP-style
    training). ``eval/`` + ``eval.csv``: ``num_eval`` other clean images of the same generator, each
    saved as is and degraded by every kind in ``kinds`` (default: ``DEGRADATION_KINDS``) at levels
    1..``levels``. ``transfer/`` + ``transfer.csv``: ``num_transfer`` mosaic images (other content)
    degraded by every ``HELDOUT_KINDS`` kind (other distortions). Both csv files have columns
    ``path,mos,kind,level,source`` with paths relative to ``out_dir`` and ``mos = levels - level``
    (clean: ``levels``, the highest), so they load with ``load_iqa_dataset("csv", ...)``. Evaluation
    images are drawn at ``eval_size`` (default ``size``): at the model's input size, an evaluation sees
    them at the pixel scale training crops have, as QualiCLIP evaluates at full resolution (a resize
    would change each level's visible strength). ``size`` and ``eval_size`` are (height, width).
    ``eval.csv`` is written last: its presence marks a complete set.
    """
    from ftclip.tasks.iqa.degradations import DEGRADATION_KINDS, HELDOUT_KINDS

    num_pristine = check_count("num_pristine", num_pristine, 1)
    num_eval = check_count("num_eval", num_eval, 0)
    num_transfer = check_count("num_transfer", num_transfer, 0)
    levels = check_count("levels", levels, 1)
    h, w = check_size(size, (16, 16))
    eh, ew = check_size(size if eval_size is None else eval_size, (16, 16))
    kinds = tuple(DEGRADATION_KINDS if kinds is None else kinds)
    unknown = [k for k in kinds if k not in DEGRADATION_KINDS]
    if unknown or not kinds:
        raise FtclipError(
            f"degradation kinds {list(kinds)!r} must be a non-empty subset of {', '.join(DEGRADATION_KINDS)}"
        )
    out = prepare_output(out_dir, ("pristine", "eval", "eval.csv", "transfer", "transfer.csv"), overwrite)
    (out / "pristine").mkdir()
    for i in range(num_pristine):
        _save_png(_natural_image(random_stream(seed, _K_PRISTINE, i), h, w), out / "pristine" / f"pristine_{i:04d}.png")
    mosaics = [(f"mosaic_{i:04d}", _mosaic_image(random_stream(seed, _K_MOSAIC, i), eh, ew)) for i in range(num_transfer)]
    _write_csv(out / "transfer.csv", _write_graded(out, "transfer", mosaics, HELDOUT_KINDS, levels, seed,
                                                   _K_MOSAIC_NOISE))
    sources = [(f"source_{i:04d}", _natural_image(random_stream(seed, _K_EVAL, i), eh, ew)) for i in range(num_eval)]
    _write_csv(out / "eval.csv", _write_graded(out, "eval", sources, kinds, levels, seed, _K_NOISE))
    return out
