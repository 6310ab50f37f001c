"""What every IQA data format shares: the sample, the format interface, small helpers.

A format is an :class:`IqaFormat` subclass in its own file, listed once in the registry
(``ftclip/tasks/iqa/formats/__init__.py``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ftclip.errors import DataError

_SHOW = 5


@dataclass(frozen=True)
class IqaSample:
    """One image and its mean opinion score (higher = better, the data set's own scale)."""

    path: str
    mos: float


class IqaFormat:
    """One on-disk layout of a labeled IQA data set."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    looked_for: str = ""  # the file that marks the layout, for the "no layout found" message
    has_split: bool = False  # an official split can be selected with ``split``

    def detect(self, root: Path) -> bool:
        raise NotImplementedError

    def load(self, root: Path, split: str | None, images_dir: str | Path | None) -> list[IqaSample]:
        raise NotImplementedError

    def mos_scale(self, root: Path) -> tuple[float, float] | None:
        """The (low, high) of its MOS, mapped to [0, 1] by the mos stage; None: take the data's own range."""
        return None


# --------------------------------------------------------------------------- helpers
def few(items: Iterable[object]) -> str:
    items = list(items)
    text = ", ".join(str(i) for i in items[:_SHOW])
    return text + (f" and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


def parse_mos(text: object) -> float | None:
    """A finite float, or None."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def image_folder(root: Path, override: str | Path | None, defaults: Iterable[str], fmt: str) -> Path:
    """The layout's image folder: ``override`` (relative to ``root``) or the first of ``defaults`` present."""
    if override is not None:
        p = Path(override).expanduser()
        p = p if p.is_absolute() else root / p
        if not p.is_dir():
            raise DataError(f"image folder {p} does not exist: check images_dir")
        return p
    defaults = list(defaults)
    for name in defaults:
        if (root / name).is_dir():
            return root / name
    raise DataError(
        f"{fmt} image folder not found in {root}: looked for {', '.join(d + '/' for d in defaults)}; "
        "extract the images there or pass images_dir"
    )


def finish(samples: list[IqaSample], source: str) -> list[IqaSample]:
    """The samples, if there are any and every listed image exists."""
    if not samples:
        raise DataError(f"{source} lists no images: check the file (and the split)")
    missing = [s.path for s in samples if not os.path.isfile(s.path)]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(samples)} images listed in {source} do not exist: {few(missing)}; "
            "check the image folder (images_dir)"
        )
    return samples


def no_split(fmt: str, split: str | None) -> None:
    if split is not None:
        raise DataError(
            f"{fmt} has no official split (got split={split!r}): load it with split=None and split it yourself, "
            "or write a CSV with a split column"
        )


def mos_error(source: Path, where: str, value: object) -> DataError:
    return DataError(f"{source} {where}: MOS {value!r} is not a finite number; fix or remove that row")
