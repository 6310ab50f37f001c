"""What every few-shot data format parses into, and the checks every parsed data set passes.

A :class:`ClassificationData` holds the class list and the train / val / test items as
``(absolute image path, label)`` pairs, ``label`` indexing ``classnames``. ``class_keys`` are
the names as the data stores them (folder names, CSV labels, Dassl class names); they key the
seeded draws and the classnames file, so renaming a class never changes which images are drawn.
``classnames`` are what the prompts say.

:func:`build_data` is the one constructor the formats call: it refuses, with one
:class:`~ftclip.errors.DataError` each, a test (or val) class absent from train, duplicate class
names, an empty split and an image listed in two splits. :func:`apply_classnames_file`
renames the classes from a file (format below) and refuses one that does not match.

Classnames file: ``.json`` -- an object ``{"class key": "prompt name", ...}``; any other file --
one class per line, ``class_key prompt name words`` (split at the first run of whitespace, as
CoOp's ImageNet ``classnames.txt``: ``n01440764 tench``); blank lines and lines starting with
``#`` are skipped. It must name every class exactly once and nothing else.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ftclip.errors import DataError

__all__ = [
    "Item",
    "ClassificationData",
    "build_data",
    "check_files_exist",
    "apply_classnames_file",
    "read_classnames_file",
]

Item = tuple[str, int]
_SHOW = 5


def few(items: Iterable[object], show: int = _SHOW) -> str:
    """The first ``show`` items, comma-separated, with '... (N in all)' when there are more."""
    items = list(items)
    text = ", ".join(str(i) for i in items[:show])
    return text + (f" ... ({len(items)} in all)" if len(items) > show else "")


@dataclass(frozen=True)
class ClassificationData:
    """A parsed classification data set (see the module docstring)."""

    name: str  # "folder", "csv" or a Dassl data set name such as "OxfordPets"
    root: Path
    class_keys: tuple[str, ...]
    classnames: tuple[str, ...]
    train: tuple[Item, ...]
    val: tuple[Item, ...] | None  # None: the data set has no val split (the protocol draws one from train)
    test: tuple[Item, ...]
    templates: tuple[str, ...]  # the data set's own prompt template(s), "{}" = class name

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def summary(self) -> str:
        """One line: name, classes and split sizes."""
        val = "none (drawn from train)" if self.val is None else str(len(self.val))
        return (
            f"{self.name} ({self.root}): {self.num_classes} classes, train {len(self.train)}, "
            f"val {val}, test {len(self.test)} images"
        )


def _labels(items: Sequence[Item]) -> set[int]:
    return {label for _, label in items}


def build_data(
    name: str,
    root: Path,
    class_keys: Sequence[str],
    classnames: Sequence[str],
    train: Sequence[Item],
    val: Sequence[Item] | None,
    test: Sequence[Item],
    templates: Sequence[str],
    source: str,
) -> ClassificationData:
    """Check a parsed data set and freeze it; ``source`` names the file/folder in error messages."""
    if len(class_keys) != len(classnames):
        raise ValueError("class_keys and classnames differ in length")
    n = len(class_keys)
    if not train:
        raise DataError(f"{source} has no training images: add train images (or check the split names)")
    if not test:
        raise DataError(f"{source} has no test images: add a test split (or check the split names)")
    for split, items in (("train", train), ("val", val or ()), ("test", test)):
        bad = sorted(lbl for lbl in _labels(items) if not 0 <= lbl < n)
        if bad:
            raise ValueError(f"{source}: {split} labels {bad[:_SHOW]} are outside 0..{n - 1}")
    trained = _labels(train)
    for split, items in (("test", test), ("val", val or ())):
        absent = sorted(_labels(items) - trained)
        if absent:
            names = few(repr(class_keys[i]) for i in absent)
            raise DataError(
                f"{source}: {split} class(es) {names} have no training images: add training images "
                f"for them or remove them from the {split} split"
            )
    unused = sorted(set(range(n)) - trained)
    if unused:  # a class list (variants.txt, classnames.txt) naming a class no split has
        raise DataError(
            f"{source}: class(es) {few(repr(class_keys[i]) for i in unused)} have no images in any split: "
            "add images for them or remove them from the class list"
        )
    _check_unique(class_keys, classnames, source)
    split_of: dict[str, str] = {}
    for split, items in (("train", train), ("val", val or ()), ("test", test)):
        for path, _ in items:
            other = split_of.setdefault(path, split)
            if other != split:
                raise DataError(
                    f"{source}: image {path} is in both the {other} and the {split} split: "
                    "each image may belong to one split only"
                )
    return ClassificationData(
        name=name,
        root=Path(root),
        class_keys=tuple(class_keys),
        classnames=tuple(classnames),
        train=tuple(train),
        val=None if val is None else tuple(val),
        test=tuple(test),
        templates=tuple(templates),
    )


def check_files_exist(items: Sequence[Item], source: str) -> None:
    """One DataError counting the listed images that are not files (a stat each, no decoding)."""
    missing = [p for p, _ in items if not os.path.isfile(p)]
    if missing:
        raise DataError(
            f"{source}: {len(missing)} of {len(items)} listed images do not exist, e.g. {few(missing, 3)}: "
            "check that the images are where the list says (relative paths are read against the list's folder)"
        )


def _check_unique(class_keys: Sequence[str], classnames: Sequence[str], source: str) -> None:
    dup_keys = [k for k, c in Counter(class_keys).items() if c > 1]
    if dup_keys:
        raise DataError(f"{source}: class {dup_keys[0]!r} is listed more than once: give each class one name")
    by_name: dict[str, list[str]] = {}
    for key, name in zip(class_keys, classnames):
        by_name.setdefault(name, []).append(key)
    clashes = [(name, keys) for name, keys in by_name.items() if len(keys) > 1]
    if clashes:
        name, keys = clashes[0]
        raise DataError(
            f"{source}: classes {few(repr(k) for k in keys)} all get the class name {name!r} "
            "(folder names have underscores read as spaces): rename one of them, or give distinct "
            "names with a classnames file"
        )


def read_classnames_file(path: str | Path) -> dict[str, str]:
    """``{class key: prompt name}`` from a classnames file (format in the module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"classnames file {path} does not exist: check data.classnames")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"classnames file {path} cannot be read as UTF-8 text ({err})") from None
    if path.suffix.lower() == ".json":
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"classnames file {path} is not valid JSON ({err})") from None
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in mapping.items()
        ):
            raise DataError(
                f"classnames file {path} must hold one JSON object of non-empty strings, "
                '{"class key": "class name", ...}'
            )
        return {k: v.strip() for k, v in mapping.items()}
    mapping: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(
                f"classnames file {path} line {number}: {line!r} has no class name after the key; "
                "write 'class_key class name' (or use a .json file for keys with spaces)"
            )
        key, name = parts
        if key in mapping:
            raise DataError(f"classnames file {path} line {number}: class {key!r} is listed twice")
        mapping[key] = name.strip()
    return mapping


def apply_classnames_file(data: ClassificationData, path: str | Path) -> ClassificationData:
    """``data`` with its prompt names taken from the classnames file at ``path``."""
    mapping = read_classnames_file(path)
    missing = [k for k in data.class_keys if k not in mapping]
    extra = sorted(set(mapping) - set(data.class_keys))
    problems = [
        text for found, text in (
            (missing, f"it lacks class(es) {few(repr(k) for k in missing)}"),
            (extra, f"it names class(es) the data set does not have: {few(repr(k) for k in extra)}"),
        ) if found
    ]
    if problems:
        raise DataError(
            f"classnames file {path} does not match the {data.num_classes} classes of {data.name}: "
            f"{'; '.join(problems)}. List every class key ({few((repr(k) for k in data.class_keys), 3)}) once"
        )
    names = tuple(mapping[k] for k in data.class_keys)
    _check_unique(data.class_keys, names, f"classnames file {path}")
    return replace(data, classnames=names)
