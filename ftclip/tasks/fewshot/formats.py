"""Few-shot data formats (``data.format``): one table of name -> detector + parser.

* ``folder`` -- ``root/train/<class>/*``, ``root/test/<class>/*`` and optionally ``root/val/<class>/*``;
  or one tree ``root/<class>/*`` split per class into train and test by ``test_fraction``
  (seeded, see :func:`~ftclip.tasks.fewshot.protocol.stratified_split`). Images lie directly in
  the class folders (extensions of :data:`~ftclip.data.images.IMAGE_EXTENSIONS`; hidden files
  and folders skipped). Classes are the train folders in sorted order; a class name is its
  folder name with underscores read as spaces (``red_circle`` -> "red circle").
* ``csv`` -- columns ``path,label[,split]``: paths relative to the CSV's folder (or absolute), labels
  are class names (used as written), ``split`` is ``train``, ``val`` or ``test``; without a split
  column every row is split by ``test_fraction`` as a single folder tree is. Classes: the train
  rows' labels, sorted.
* ``dassl`` -- CoOp/Dassl's 11 data sets (:mod:`ftclip.tasks.fewshot.dassl`).

``auto`` tries ``dassl``, ``csv`` (``root`` is a .csv, or holds exactly one whose header names
``path`` and ``label``), then ``folder``. A ``classnames_file`` renames the classes
(format in :mod:`ftclip.tasks.fewshot.dataset`). Every bad input is one DataError or ConfigError
naming the file, folder, line or class.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ftclip.data.images import IMAGE_EXTENSIONS
from ftclip.data.tables import read_table, resolve_csv
from ftclip.errors import ConfigError, DataError
from ftclip.tasks.fewshot.dassl import detect_dassl, load_dassl
from ftclip.tasks.fewshot.dataset import (
    ClassificationData,
    Item,
    apply_classnames_file,
    build_data,
    check_files_exist,
    few,
)
from ftclip.tasks.fewshot.protocol import stratified_split
from ftclip.tasks.fewshot.templates import DEFAULT_TEMPLATE

__all__ = ["LoadOptions", "Format", "FORMATS", "detect_format", "load_classification_data"]

_SPLIT_DIRS = ("train", "val", "test")
_CSV_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LoadOptions:
    csv_path: str | Path | None = None  # csv: the list file (default: the one .csv in root)
    dataset: str | None = None  # dassl: which data set (default: detected)
    test_fraction: float = 0.3  # folder tree / CSV without split column: share of each class held out as test
    seed: int = 0  # seed of that split


@dataclass(frozen=True)
class Format:
    detect: Callable[[Path], bool]
    load: Callable[[Path, LoadOptions], ClassificationData]
    looks_for: str  # what detect looks for, for the "no layout found" message


# --------------------------------------------------------------------------- folder


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_images(folder: Path) -> list[str]:
    """Image files directly inside one class folder (sorted); DataError if there are none."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    images = sorted(str(p) for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        subdirs = len(_visible_dirs(folder))
        found = f"{len(files)} other file(s), {subdirs} sub-folder(s)" if files or subdirs else "nothing"
        raise DataError(
            f"class folder {folder} holds no images ({found}; images must lie directly in the class folder, "
            f"as {', '.join(IMAGE_EXTENSIONS)}): add images or remove the folder"
        )
    return images


def _read_tree(folder: Path) -> dict[str, list[str]]:
    """``{class folder name: image paths}`` of one split folder."""
    classes = _visible_dirs(folder)
    if not classes:
        raise DataError(f"{folder} has no class folders: put each class's images in {folder}/<class name>/")
    return {c.name: _class_images(c) for c in classes}


def _name(folder_name: str) -> str:
    return folder_name.replace("_", " ")


def _detect_folder(root: Path) -> bool:
    return root.is_dir() and bool(_visible_dirs(root))


def _load_folder(root: Path, opts: LoadOptions) -> ClassificationData:
    source = f"folder data set {root}"
    if not (root / "train").is_dir():
        stray = [d for d in ("val", "test") if (root / d).is_dir()]
        if stray:
            raise DataError(
                f"{root} has {'/'.join(stray)}/ but no train/: the folder layout is root/train/<class>/ and "
                "root/test/<class>/ (optional root/val/<class>/), or class folders directly in root"
            )
        tree = _read_tree(root)
        keys = sorted(tree)
        items = [(p, i) for i, k in enumerate(keys) for p in tree[k]]
        train, test = stratified_split(items, keys, opts.test_fraction, opts.seed, source)
        names = [_name(k) for k in keys]
        return build_data("folder", root, keys, names, train, None, test, (DEFAULT_TEMPLATE,), source)
    if not (root / "test").is_dir():
        raise DataError(
            f"{root} has train/ but no test/: add root/test/<class>/ folders (the test split), or put the "
            "class folders directly in root to split off a test set by data.test_fraction"
        )
    trees = {s: _read_tree(root / s) for s in _SPLIT_DIRS if (root / s).is_dir()}
    keys = sorted(trees["train"])
    label_of = {k: i for i, k in enumerate(keys)}
    splits: dict[str, list[Item]] = {}
    for split, tree in trees.items():
        unknown = sorted(set(tree) - set(label_of))
        if unknown:
            raise DataError(
                f"{source}: {split} class folder(s) {few(repr(u) for u in unknown)} have no folder in "
                f"{root / 'train'}: every {split} class needs training images (check the folder names)"
            )
        splits[split] = [(p, label_of[k]) for k in sorted(tree) for p in tree[k]]
    return build_data(
        "folder", root, keys, [_name(k) for k in keys], splits["train"], splits.get("val"), splits["test"],
        (DEFAULT_TEMPLATE,), source,
    )


# --------------------------------------------------------------------------- csv


def _has_columns(path: Path) -> bool:
    """Whether the first line of ``path`` names the columns path and label."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            header = {c.strip() for c in fh.readline().split(",")}
    except (OSError, UnicodeDecodeError):
        return False
    return {"path", "label"} <= header


def _detect_csv(root: Path) -> bool:
    if root.is_file():
        return root.suffix.lower() == ".csv"
    files = [p for p in root.glob("*.csv") if p.is_file()] if root.is_dir() else []
    return len(files) == 1 and _has_columns(files[0])  # a stray metadata.csv beside class folders is not a list


def _load_csv(root: Path, opts: LoadOptions) -> ClassificationData:
    path = resolve_csv(root, opts.csv_path, "few-shot CSV")
    source = f"few-shot CSV {path}"
    rows = read_table(path, ["path", "label"], "few-shot CSV")
    if not rows:
        raise DataError(f"{source} has a header but no rows: add one 'path,label[,split]' row per image")
    has_split = "split" in rows[0][1]
    errors: list[str] = []
    parsed: list[tuple[int, str, str, str]] = []  # line, path, label, split
    first_line: dict[str, int] = {}
    for line, row in rows:
        split = row.get("split", "").lower() if has_split else "all"
        if not row["path"]:
            errors.append(f"line {line}: empty path")
        elif not row["label"]:
            errors.append(f"line {line}: empty label")
        elif has_split and split not in _CSV_SPLITS:
            errors.append(f"line {line}: split {row.get('split', '')!r} is not one of {', '.join(_CSV_SPLITS)}")
        else:
            p = Path(row["path"]).expanduser()
            full = os.path.normpath(p if p.is_absolute() else path.parent / p)
            if full in first_line:
                errors.append(f"line {line}: image {row['path']!r} is already listed on line {first_line[full]}")
                continue
            first_line[full] = line
            parsed.append((line, full, row["label"], split))
    if errors:
        raise DataError(f"{source} has {len(errors)} bad row(s): {'; '.join(errors[:5])}")
    pool = "train" if has_split else "all"
    keys = sorted({label for _, _, label, split in parsed if split == pool})
    if not keys:
        raise DataError(f"{source} has no rows with split 'train': mark the training images with split=train")
    label_of = {k: i for i, k in enumerate(keys)}
    unknown = [(line, label) for line, _, label, _ in parsed if label not in label_of]
    if unknown:
        shown = few(f"{label!r} (line {line})" for line, label in unknown)
        raise DataError(
            f"{source}: {len(unknown)} row(s) have labels no train row has: {shown}. Every val/test label "
            "must also label training images (check the spelling)"
        )
    items = {s: [(p, label_of[lbl]) for _, p, lbl, split in parsed if split == s] for s in (*_CSV_SPLITS, "all")}
    check_files_exist([(p, 0) for _, p, _, _ in parsed], source)
    if has_split:
        train, val, test = items["train"], items["val"] or None, items["test"]
    else:
        train, test = stratified_split(items["all"], keys, opts.test_fraction, opts.seed, source)
        val = None
    return build_data("csv", path, keys, keys, train, val, test, (DEFAULT_TEMPLATE,), source)


# --------------------------------------------------------------------------- registry


def _load_dassl(root: Path, opts: LoadOptions) -> ClassificationData:
    return load_dassl(root, opts.dataset)


FORMATS: dict[str, Format] = {  # "auto" tries them in this order
    "dassl": Format(detect_dassl, _load_dassl, "split_zhou_*.json, variants.txt or classnames.txt (dassl)"),
    "csv": Format(_detect_csv, _load_csv, "one .csv with path,label[,split] columns (csv)"),
    "folder": Format(_detect_folder, _load_folder, "train/<class>/ + test/<class>/ or <class>/ folders (folder)"),
}


def detect_format(root: str | Path) -> str:
    """The first format of :data:`FORMATS` whose detector accepts ``root``."""
    path = Path(root).expanduser().absolute()
    for name, fmt in FORMATS.items():
        if fmt.detect(path):
            return name
    raise DataError(
        f"no few-shot data layout found in {path}: looked for {'; '.join(f.looks_for for f in FORMATS.values())}"
    )


def load_classification_data(
    format: str,
    root: str | Path,
    *,
    options: LoadOptions = LoadOptions(),
    classnames_file: str | Path | None = None,
) -> ClassificationData:
    """Parse the data set at ``root`` in ``format`` (a name in :data:`FORMATS` or ``"auto"``)."""
    fmt = str(format).strip().lower()
    if fmt != "auto" and fmt not in FORMATS:
        raise ConfigError(f"data.format {format!r} is unknown: use auto or one of {', '.join(FORMATS)}")
    if options.dataset is not None and fmt not in ("dassl", "auto"):
        raise ConfigError(f"data.dataset names a Dassl data set; it is not used with data.format={fmt}")
    if options.csv_path is not None and fmt not in ("csv", "auto"):
        raise ConfigError(f"data.csv_path is only used with data.format=csv (got {fmt})")
    path = Path(root).expanduser().absolute()
    if not path.exists():
        raise DataError(f"data root {path} does not exist: check data.root")
    if fmt == "auto":
        fmt = "dassl" if options.dataset else "csv" if options.csv_path else detect_format(path)
    data = FORMATS[fmt].load(path, options)
    return data if classnames_file is None else apply_classnames_file(data, classnames_file)
