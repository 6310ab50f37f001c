"""Helpers for ftclip's deterministic generated data sets (each task draws its own in ``tasks/<task>/synthetic.py``).

Every generator is a pure function of its arguments: the same call writes the same bytes
(fixed encoder settings, no metadata, no time-based names). Each image is drawn from its own
random stream, keyed by the seed and the image's identity (:func:`random_stream`).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from ftclip.errors import FtclipError

__all__ = ["check_count", "check_size", "downsample", "grid", "prepare_output", "random_stream", "to_uint8"]



def random_stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *key])


@lru_cache(maxsize=8)
def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) of an h x w canvas, float32."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    return yy, xx


def downsample(canvas: np.ndarray, factor: int) -> np.ndarray:
    h, w, c = canvas.shape
    return canvas.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def check_size(size: Sequence[int], minimum: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s for s in size):
        raise FtclipError(f"size must be (height, width) in pixels, got {size!r}")
    h, w = int(size[0]), int(size[1])
    if h < minimum[0] or w < minimum[1]:
        raise FtclipError(f"size {size!r} is too small: use at least {minimum[0]}x{minimum[1]} (height x width)")
    return h, w


def check_count(name: str, value: int, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f"at least {minimum}"
        raise FtclipError(f"{name}={value!r} must be an integer, {bound}")
    return int(value)


def prepare_output(out_dir: str | Path, targets: Sequence[str], overwrite: bool) -> Path:
    """Create ``out_dir``; refuse (or with ``overwrite``, remove) existing generated outputs."""
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise FtclipError(f"output {out} exists and is not a folder: choose another output folder")
    present = [t for t in targets if (out / t).exists()]
    if present and not overwrite:
        raise FtclipError(
            f"{out} already holds {', '.join(present)}: choose an empty output folder "
            "or pass overwrite=True (--overwrite on the command line)"
        )
    for t in present:
        p = out / t
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out
