"""Few-shot data formats (``data.format``): the registry, detection and loading.

* ``folder`` -- class folders, split into train/test[/val] folders or one tree (:mod:`.folder`);
* ``csv`` -- ``path,label[,split]`` (:mod:`.csv`);
* ``dassl`` -- CoOp/Dassl's 11 data sets (:mod:`.dassl`).

``auto`` tries them in the order of :data:`REGISTRY`: ``dassl``, ``csv`` (``root`` is a .csv, or holds
exactly one whose header names ``path`` and ``label``), then ``folder``. A ``classnames_file``
renames the classes (format in :mod:`ftclip.tasks.fewshot.dataset`). Every bad input is one
DataError or ConfigError naming the file, folder, line or class.

Adding a format: one file with a :class:`~ftclip.tasks.fewshot.formats.base.FewshotFormat`
subclass, and one entry in :data:`REGISTRY` below.
"""

from __future__ import annotations

from pathlib import Path

from ftclip.errors import ConfigError, DataError
from ftclip.tasks.fewshot.dataset import ClassificationData, apply_classnames_file
from ftclip.tasks.fewshot.formats.base import FewshotFormat, LoadOptions
from ftclip.tasks.fewshot.formats.csv import CsvList
from ftclip.tasks.fewshot.formats.dassl import Dassl
from ftclip.tasks.fewshot.formats.folder import ClassFolders

__all__ = ["LoadOptions", "REGISTRY", "FEWSHOT_FORMATS", "get_format", "detect_format", "load_classification_data"]

#: The formats, in auto-detection order. Name -> format.
REGISTRY: dict[str, FewshotFormat] = {f.name: f for f in (Dassl(), CsvList(), ClassFolders())}
FEWSHOT_FORMATS = tuple(REGISTRY)


def get_format(name: str) -> FewshotFormat:
    """A format by name (case-insensitive); ConfigError listing the known ones."""
    key = str(name).strip().lower()
    if key not in REGISTRY:
        raise ConfigError(f"data.format {name!r} is unknown: use auto or one of {', '.join(FEWSHOT_FORMATS)}")
    return REGISTRY[key]


def detect_format(root: str | Path) -> str:
    """The first format of :data:`REGISTRY` whose detector accepts ``root``."""
    path = Path(root).expanduser().absolute()
    for name, fmt in REGISTRY.items():
        if fmt.detect(path):
            return name
    raise DataError(
        f"no few-shot data layout found in {path}: looked for {'; '.join(f.looked_for for f in REGISTRY.values())}"
    )


def load_classification_data(
    format: str,
    root: str | Path,
    *,
    options: LoadOptions = LoadOptions(),
    classnames_file: str | Path | None = None,
) -> ClassificationData:
    """Parse the data set at ``root`` in ``format`` (a name in :data:`REGISTRY` or ``"auto"``)."""
    fmt = str(format).strip().lower()
    if fmt != "auto":
        fmt = get_format(fmt).name
    if options.dataset is not None and fmt not in ("dassl", "auto"):
        raise ConfigError(f"data.dataset names a Dassl data set; it is not used with data.format={fmt}")
    if options.csv_path is not None and fmt not in ("csv", "auto"):
        raise ConfigError(f"data.csv_path is only used with data.format=csv (got {fmt})")
    path = Path(root).expanduser().absolute()
    if not path.exists():
        raise DataError(f"data root {path} does not exist: check data.root")
    if fmt == "auto":
        fmt = "dassl" if options.dataset else "csv" if options.csv_path else detect_format(path)
    data = REGISTRY[fmt].load(path, options)
    return data if classnames_file is None else apply_classnames_file(data, classnames_file)
