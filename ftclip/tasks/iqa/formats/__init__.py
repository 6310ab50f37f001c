"""Image-quality data formats: the registry, detection and loading.

Each format returns a list of :class:`IqaSample` (absolute path, MOS in the data set's own
scale, higher = better) and knows its MOS scale (what the ``mos`` stage maps to [0, 1]).
Layouts: ``koniq10k``, ``spaq``, ``kadid10k``, ``livec`` and ``csv`` (see each file);
``images_dir`` overrides the image folder of any layout but csv (relative to ``root``).

Adding a format: one file with an :class:`~ftclip.tasks.iqa.formats.base.IqaFormat` subclass, and
one entry in :data:`REGISTRY` below.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ftclip.data.tables import resolve_csv
from ftclip.errors import ConfigError, DataError
from ftclip.tasks.iqa.formats.base import IqaFormat, IqaSample
from ftclip.tasks.iqa.formats.csv import CsvScores
from ftclip.tasks.iqa.formats.kadid10k import Kadid10k
from ftclip.tasks.iqa.formats.koniq10k import Koniq10k
from ftclip.tasks.iqa.formats.livec import LiveC
from ftclip.tasks.iqa.formats.spaq import Spaq

__all__ = ["IqaSample", "IQA_FORMATS", "load_iqa_dataset", "iqa_summary", "detect_iqa_format", "resolve_format"]

#: The formats, in auto-detection order. Name -> format.
REGISTRY: dict[str, IqaFormat] = {f.name: f for f in (Koniq10k(), Spaq(), Kadid10k(), LiveC(), CsvScores())}
IQA_FORMATS = tuple(REGISTRY)
_ALIASES = {alias: fmt.name for fmt in REGISTRY.values() for alias in fmt.aliases}


def _check_root(root: str | Path) -> Path:
    path = Path(root).expanduser().absolute()
    if not path.exists():
        raise DataError(f"IQA data root {path} does not exist: check the data set folder")
    return path


def detect_iqa_format(root: str | Path) -> str:
    """Which IQA layout ``root`` holds (DataError listing what was looked for if none)."""
    path = _check_root(root)
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise DataError(f"IQA data root {path} is a file, not a folder: pass the data set folder or a .csv file")
    for fmt in REGISTRY.values():
        if fmt.detect(path):
            return fmt.name
    raise DataError(
        f"no IQA data set layout found in {path}: looked for "
        + ", ".join(fmt.looked_for for fmt in REGISTRY.values())
    )


def resolve_format(format: str, root: str | Path, *, csv_path: str | Path | None = None) -> IqaFormat:
    """The format a (``format``, ``root``, ``csv_path``) triple means: a name or alias, or ``auto``."""
    key = str(format).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in REGISTRY and key != "auto":
        raise ConfigError(f"IQA data format {format!r} is unknown: use auto or one of {', '.join(IQA_FORMATS)}")
    if csv_path is not None and key not in ("csv", "auto"):
        raise ConfigError(f"csv_path is only used with format csv (got format {key})")
    if csv_path is not None:
        return REGISTRY["csv"]
    return REGISTRY[detect_iqa_format(root) if key == "auto" else key]


def load_iqa_dataset(
    format: str,
    root: str | Path,
    *,
    split: str | None = None,
    csv_path: str | Path | None = None,
    images_dir: str | Path | None = None,
) -> list[IqaSample]:
    """Load an IQA data set (``format`` in :data:`IQA_FORMATS`, an alias, or ``"auto"``).

    ``split`` selects KonIQ-10k's official train/val/test set (or a CSV's ``split`` column);
    None loads everything. ``images_dir`` overrides the layout's image folder.
    """
    fmt = resolve_format(format, root, csv_path=csv_path)
    path = _check_root(root)
    if fmt.name == "csv":
        if images_dir is not None:
            raise ConfigError("images_dir is not used with format csv: write paths relative to the CSV's folder")
        return fmt.load(resolve_csv(path, csv_path, "IQA CSV"), split, None)
    if not path.is_dir():
        raise DataError(f"IQA data root {path} is not a folder: pass the {fmt.name} data set folder")
    return fmt.load(path, split, images_dir)


def iqa_summary(name: str, samples: list[IqaSample]) -> str:
    """One line: image count and MOS range, mean and standard deviation."""
    if not samples:
        return f"{name}: 0 images"
    values = [s.mos for s in samples]
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return (
        f"{name}: {len(values)} images, MOS {min(values):.4g}..{max(values):.4g} "
        f"(mean {statistics.fmean(values):.4g}, std {std:.4g})"
    )
