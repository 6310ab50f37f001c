"""A deterministic few-shot demo set in the ``folder`` layout: procedurally drawn shapes.

:func:`write_synthetic_fewshot` writes ``train/<class>/*.png`` and ``test/<class>/*.png`` (and
``synthetic.json`` last, marking a complete set). The classes are real words -- "red circle",
"striped square", ... (folders ``red_circle``, ``striped_square``) -- told apart by shape, colour
and texture; every image varies position, size, rotation, colour shade and a noisy,
low-saturation background. It is a pure function of its arguments: each image is drawn from its
own random stream keyed by (seed, class, split, index), PNGs carry no metadata, so the same
call writes the same bytes and a class looks the same whatever ``num_classes`` is.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ftclip.data.synthetic import check_count, check_size, downsample, grid, prepare_output, to_uint8
from ftclip.io import atomic_write, atomic_write_text

__all__ = ["FEWSHOT_CLASSES", "write_synthetic_fewshot"]

_SS = 2  # drawn at 2x and averaged down: anti-aliased edges
_SPLITS = {"train": 1, "test": 2}
_K_IMAGE = 21


@dataclass(frozen=True)
class _Class:
    name: str
    shape: str  # circle, square, triangle, star, cross, ring, diamond
    colour: tuple[float, float, float]
    pattern: str = "solid"  # solid, stripes, dots, checks (patterns alternate colour and white)


FEWSHOT_CLASSES: tuple[_Class, ...] = (
    _Class("red circle", "circle", (0.85, 0.12, 0.12)),
    _Class("blue square", "square", (0.15, 0.30, 0.85)),
    _Class("green triangle", "triangle", (0.15, 0.65, 0.20)),
    _Class("yellow star", "star", (0.95, 0.85, 0.15)),
    _Class("purple cross", "cross", (0.55, 0.20, 0.70)),
    _Class("orange ring", "ring", (0.95, 0.55, 0.10)),
    _Class("striped square", "square", (0.05, 0.05, 0.05), "stripes"),
    _Class("dotted circle", "circle", (0.10, 0.10, 0.35), "dots"),
    _Class("checkered triangle", "triangle", (0.05, 0.05, 0.05), "checks"),
    _Class("cyan diamond", "diamond", (0.10, 0.75, 0.80)),
)


def _outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[list[tuple[float, float]]]:
    """Polygons (outer first; a second one is a hole) of a shape of radius ``r`` turned by ``angle``."""

    def turn(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    def ngon(n: int, radius: float, offset: float = 0.0) -> list[tuple[float, float]]:
        angles = [offset + 2 * math.pi * k / n for k in range(n)]
        return [(radius * math.cos(t), radius * math.sin(t)) for t in angles]

    if shape == "circle":
        return [turn(ngon(64, r))]
    if shape == "ring":
        return [turn(ngon(64, r)), turn(ngon(64, 0.55 * r))]
    if shape == "square":
        return [turn(ngon(4, r, math.pi / 4))]
    if shape == "triangle":
        return [turn(ngon(3, r, -math.pi / 2))]
    if shape == "diamond":  # a rhombus, 2:1 diagonals, so no rotation turns it into the square
        return [turn([(0.0, -r), (0.5 * r, 0.0), (0.0, r), (-0.5 * r, 0.0)])]
    if shape == "star":
        return [turn([(p * (1.0 if k % 2 == 0 else 0.45), q * (1.0 if k % 2 == 0 else 0.45))
                      for k, (p, q) in enumerate(ngon(10, r, -math.pi / 2))])]
    if shape == "cross":
        a, b = r, 0.33 * r
        arm = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b),
               (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
        return [turn(arm)]
    raise ValueError(shape)


def _mask(polygons: list[list[tuple[float, float]]], h: int, w: int) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon(polygons[0], fill=255)
    for hole in polygons[1:]:
        draw.polygon(hole, fill=0)
    return np.asarray(canvas) > 127


def _pattern(kind: str, h: int, w: int, r: float, rng: np.random.Generator) -> np.ndarray:
    """Where the pattern shows its base colour (True) rather than white, on an h x w grid."""
    yy, xx = grid(h, w)
    if kind == "solid":
        return np.ones((h, w), bool)
    angle = rng.uniform(0, math.pi)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    period = r * rng.uniform(0.35, 0.5)
    if kind == "stripes":
        return np.floor(u / (period / 2)) % 2 == 0
    if kind == "checks":
        return (np.floor(u / (period / 2)) + np.floor(v / (period / 2))) % 2 == 0
    if kind == "dots":  # white dots on the colour
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        return du * du + dv * dv > (0.3 * period) ** 2
    raise ValueError(kind)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-saturation, low-frequency colour noise in 0..1."""
    grey = rng.uniform(0.35, 0.75)
    cells = int(rng.integers(3, 7))
    coarse = np.clip(grey + rng.uniform(-0.12, 0.12, (cells, cells, 3)), 0, 1)
    up = Image.fromarray((coarse * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(up, np.float32) / 255.0


def _draw(cls: _Class, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    H, W = h * _SS, w * _SS
    img = _background(rng, H, W)
    r = rng.uniform(0.22, 0.36) * min(H, W)
    cx, cy = rng.uniform(r, W - r), rng.uniform(r, H - r)
    mask = _mask(_outline(cls.shape, cx, cy, r, rng.uniform(0, 2 * math.pi)), H, W)
    colour = np.clip(np.array(cls.colour) + rng.uniform(-0.07, 0.07, 3), 0, 1).astype(np.float32)
    on = _pattern(cls.pattern, H, W, r, rng)
    fill = np.where(on[..., None], colour, np.float32(0.95))
    img[mask] = fill[mask]
    small = downsample(img, _SS)
    return to_uint8(small + rng.normal(0.0, 0.03, small.shape))


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_synthetic_fewshot(
    out_dir: str | Path,
    *,
    num_classes: int = 8,
    train_per_class: int = 20,
    test_per_class: int = 16,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the set (module docstring) with the first ``num_classes`` of :data:`FEWSHOT_CLASSES`
    (2..10); ``size`` is (height, width), at least 32 x 32. Returns ``out_dir``."""
    num_classes = check_count("num_classes", num_classes, 2, len(FEWSHOT_CLASSES))
    counts = {
        "train": check_count("train_per_class", train_per_class, 1),
        "test": check_count("test_per_class", test_per_class, 1),
    }
    h, w = check_size(size, (32, 32))
    check_count("seed", seed, 0)
    out = prepare_output(out_dir, (*_SPLITS, "synthetic.json"), overwrite)
    classes = FEWSHOT_CLASSES[:num_classes]
    for split, stream in _SPLITS.items():
        for c, cls in enumerate(classes):
            folder = out / split / cls.name.replace(" ", "_")
            for i in range(counts[split]):
                img = _draw(cls, np.random.default_rng([seed, _K_IMAGE, c, stream, i]), h, w)
                data = _png(img)
                atomic_write(folder / f"{folder.name}_{i:04d}.png", lambda tmp, data=data: Path(tmp).write_bytes(data))
    meta = {
        "layout": "folder",
        "classes": [cls.name for cls in classes],
        "train_per_class": counts["train"],
        "test_per_class": counts["test"],
        "size": [h, w],
        "seed": seed,
    }
    atomic_write_text(out / "synthetic.json", json.dumps(meta, indent=2) + "\n")
    return out
