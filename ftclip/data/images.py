"""Reading and checking image files.

Every image ftclip reads -- training, evaluation, ``ftclip data check``, ``embed`` and
``score`` -- goes through :func:`read_image`, so each file is seen the same way everywhere, and
a zero-byte, truncated, corrupt or unconvertible file always ends in one
:class:`~ftclip.errors.DataError` that names the file.

:func:`read_image` returns what the image looks like in a viewer, as 8-bit RGB:

- EXIF orientation is applied with ``PIL.ImageOps.exif_transpose`` itself (Pillow already does
  it for TIFFs when they load). The reference loaders (CLIP-ReID, pyiqa, open_clip) use a plain
  ``Image.open(path).convert("RGB")`` and feed such files as stored; only files whose
  orientation tag is not 1 (typically phone photos) are read differently.
- Transparency (an alpha band, a transparent palette entry or a PNG colour key) is composited
  onto :data:`BACKGROUND`, white: what a page or viewer shows behind a transparent logo or
  product shot, and what Hugging Face's ``convert_to_rgb`` (the CLIP processors) does. Dropping
  the alpha band instead would show whatever colour the encoder left under it.
- 16-bit and 32-bit integer samples keep their top 8 bits (16-bit: ``value >> 8``), exactly as
  Pillow itself decodes 16-bit colour PNGs and TIFFs and as OpenCV's ``IMREAD_COLOR`` reads
  16-bit PNGs, so grey and colour files of one data set are scaled alike. Signed samples clip
  at 0. Pillow's own ``convert("RGB")`` clips 16-bit grey at 255 (a white image).
- Float samples (mode ``F``) are taken as 0..1 (``round(value * 255)``); any other range is a
  DataError, since there is no way to tell 0..1 from 0..255 data.
- CMYK, YCbCr, LAB, 1-bit and palette images use Pillow's conversion to RGB. Embedded ICC
  profiles are not applied: the CLIP models were pretrained, and plain open_clip and
  torchvision pipelines read, without colour management, so applying them would move ftclip
  away from what the backbone and a plain open_clip user see. Wide-gamut (Adobe RGB, P3)
  images then look slightly desaturated; convert them to sRGB beforehand if that matters.
- Multi-frame files (GIF, TIFF, animated PNG/WebP) give their first frame.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ftclip.errors import DataError, FtclipError

__all__ = ["BACKGROUND", "IMAGE_EXTENSIONS", "read_image", "check_images", "list_images"]

#: File name endings (lower case) treated as images by the loaders.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pgm",
                                     ".ppm", ".pbm", ".pnm")

#: The colour transparent pixels are composited onto (see the module docstring).
BACKGROUND: tuple[int, int, int] = (255, 255, 255)

_CHECK_POLICIES = ("error", "skip")
_SHOW = 5  # how many bad files an error message names
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_TIFF_BITS, _TIFF_SAMPLE_FORMAT, _TIFF_SIGNED = 258, 339, 2


def _decode(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode one image; raise DataError naming the file on any failure."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise DataError(f"image file {p} does not exist: check the path or the data set root") from None
    except OSError as err:
        raise DataError(f"image file {p} cannot be read ({err}): check its permissions") from None
    if not p.is_file():
        raise DataError(f"image path {p} is not a file: point to an image file")
    if size == 0:
        raise DataError(f"image file {p} is empty (0 bytes): re-copy or delete it")
    img: Image.Image | None = None
    try:
        img = Image.open(p)
        img.load()  # forces full decoding, so truncated files fail here
        ImageOps.exif_transpose(img, in_place=True)
    except _DECODE_ERRORS as err:
        if img is not None:
            img.close()
        raise DataError(
            f"image file {p} is corrupt or not a readable image ({type(err).__name__}: {err}): "
            "re-copy it, or delete it and re-run"
        ) from None
    return img


def _first(tag_value: int | tuple[int, ...]) -> int:
    """A TIFF tag's value for the first sample (Pillow gives a tuple, one per sample)."""
    return int(tag_value[0] if isinstance(tag_value, tuple) else tag_value)


def _integer_depth(img: Image.Image) -> tuple[int, bool]:
    """``(bits, signed)`` of an integer image's samples as its file stores them."""
    if img.mode != "I":  # I;16, I;16L, I;16B, I;16N: unsigned 16-bit
        return 16, False
    tags = getattr(img, "tag_v2", None)  # TIFF: int16, int32 or uint32 samples
    if tags is not None and _TIFF_BITS in tags:
        return _first(tags[_TIFF_BITS]), _first(tags.get(_TIFF_SAMPLE_FORMAT, 1)) == _TIFF_SIGNED
    return 16, False  # Pillow widens 16-bit PGM/PPM (any maxval) to mode I on 0..65535


def _to_8bit(img: Image.Image, path: str | os.PathLike[str]) -> Image.Image:
    """A 16/32-bit integer or float grey image as mode L (or LA for a PNG colour key)."""
    values = np.asarray(img)
    if img.mode == "F":
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (np.isfinite(low) and np.isfinite(high)) or low < -0.5 / 255 or high > 1 + 0.5 / 255:
            raise DataError(
                f"image file {path} holds float samples from {low:g} to {high:g}; ftclip reads float "
                "images as 0..1: re-save it as 0..1 floats or as an 8- or 16-bit PNG"
            )
        return Image.fromarray(np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8))
    bits, signed = _integer_depth(img)
    if not signed and bits == 32:
        values = values.view(np.uint32)  # Pillow holds uint32 TIFF samples as int32 bits
    top = (1 << (bits - signed)) - 1
    if int(values.max(initial=0)) > top:
        raise DataError(
            f"image file {path} holds values up to {int(values.max())}, more than {bits} bits: "
            "re-save it as an 8- or 16-bit PNG"
        )
    shift = bits - signed - 8
    grey = Image.fromarray((np.clip(values, 0, None).astype(np.uint32) >> shift).astype(np.uint8))
    key = img.info.get("transparency")
    if isinstance(key, int):  # a 16-bit PNG's transparent grey value
        grey.putalpha(Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8)))
    return grey


def _has_alpha(img: Image.Image) -> bool:
    return "A" in img.getbands() or "a" in img.getbands() or img.info.get("transparency") is not None


def _to_rgb(img: Image.Image, path: str | os.PathLike[str]) -> Image.Image:
    if img.mode in ("F", "I") or img.mode.startswith("I;16"):
        img = _to_8bit(img, path)
    if not _has_alpha(img):
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    rgb = Image.new("RGB", rgba.size, BACKGROUND)
    rgb.paste(rgba, mask=rgba.getchannel("A"))
    return rgb


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as an RGB ``uint8`` array of shape ``(height, width, 3)``.

    Orientation, transparency, bit depth and colour space are handled as the module docstring
    says. Raises :class:`DataError` naming the file if it is missing, empty, truncated, corrupt
    or cannot be made RGB.
    """
    with _decode(path) as img:
        try:
            rgb = _to_rgb(img, path)
        except (OSError, ValueError) as err:
            raise DataError(
                f"image file {path} (mode {img.mode}) cannot be converted to RGB ({err}): "
                "re-save it as JPEG or PNG"
            ) from None
    return np.asarray(rgb, dtype=np.uint8)


def _probe(path: str) -> str | None:
    """Return None if ``path`` reads (exactly as training reads it), else the reason it does not."""
    try:
        read_image(path)
    except DataError as err:
        return str(err)
    return None


def _format_bad(bad: list[tuple[str, str]]) -> str:
    names = ", ".join(str(p) for p, _ in bad[:_SHOW])
    more = f" and {len(bad) - _SHOW} more" if len(bad) > _SHOW else ""
    return f"{names}{more}"


def check_images(
    paths: Iterable[str | os.PathLike[str]],
    *,
    policy: str = "error",
    workers: int | None = None,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Read every image with :func:`read_image`; return ``(ok_paths, [(bad_path, reason), ...])``.

    ``policy="error"`` raises one :class:`DataError` naming how many files are bad and the
    first few; ``policy="skip"`` returns them so the caller can report and drop them.
    ``workers`` threads decode in parallel (default: up to 8, one per CPU). Order is kept.
    """
    if policy not in _CHECK_POLICIES:
        raise FtclipError(f"image check policy {policy!r} is unknown: use one of {', '.join(_CHECK_POLICIES)}")
    items = [str(p) for p in paths]
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    if workers < 1:
        raise FtclipError(f"image check workers={workers} must be at least 1")
    if workers == 1 or len(items) < 2:
        reasons = [_probe(p) for p in items]
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            reasons = list(pool.map(_probe, items))
        finally:  # a signal (ftclip fit's Interrupted, Ctrl-C) stops at once: the queued decodes are dropped
            pool.shutdown(wait=True, cancel_futures=True)
    ok = [p for p, r in zip(items, reasons) if r is None]
    bad = [(p, r) for p, r in zip(items, reasons) if r is not None]
    if bad and policy == "error":
        first = bad[0][1]
        raise DataError(
            f"{len(bad)} of {len(items)} images are unreadable: {_format_bad(bad)} (first: {first}); "
            "fix or delete them, or set the image check policy to 'skip'"
        )
    return ok, bad


def list_images(folder: str | Path, *, recursive: bool = True) -> list[str]:
    """Absolute paths of the images in ``folder`` (sorted; hidden files skipped).

    Raises :class:`DataError` if the folder is missing or holds no images.
    """
    root = Path(folder).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder: check the path")
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            os.path.join(dirpath, f)
            for f in filenames
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        )
        if not recursive:
            break
    if not found:
        where = "or its subfolders " if recursive else ""
        raise DataError(
            f"no images found in {root} {where}(looked for {', '.join(e[1:] for e in IMAGE_EXTENSIONS)}): "
            "check the path"
        )
    return sorted(found)
