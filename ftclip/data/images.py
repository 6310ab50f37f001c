"""Reading and checking image files.

Every image ftclip reads goes through :func:`read_image`, so a zero-byte, truncated or
corrupt file always ends in one :class:`~ftclip.errors.DataError` that names the file.
EXIF orientation is not applied (the reference pipelines do not apply it either).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ftclip.errors import DataError, FtclipError

__all__ = ["IMAGE_EXTENSIONS", "read_image", "check_images", "list_images"]

#: File name endings (lower case) treated as images by the loaders.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

_CHECK_POLICIES = ("error", "skip")
_SHOW = 5  # how many bad files an error message names
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


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
    except _DECODE_ERRORS as err:
        if img is not None:
            img.close()
        raise DataError(
            f"image file {p} is corrupt or not a readable image ({type(err).__name__}: {err}): "
            "re-copy it, or delete it and re-run"
        ) from None
    return img


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as an RGB ``uint8`` array of shape ``(height, width, 3)``.

    Raises :class:`DataError` naming the file if it is missing, empty, truncated or corrupt.
    """
    img = _decode(path)
    with img:
        try:
            rgb = img.convert("RGB")
        except (OSError, ValueError) as err:
            raise DataError(
                f"image file {path} cannot be converted to RGB ({err}): re-save it as JPEG or PNG"
            ) from None
    return np.asarray(rgb, dtype=np.uint8)


def _probe(path: str) -> str | None:
    """Return None if ``path`` decodes, else the reason it does not."""
    try:
        _decode(path).close()
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
    """Open and fully decode every image; return ``(ok_paths, [(bad_path, reason), ...])``.

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
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = list(pool.map(_probe, items, chunksize=16))
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
