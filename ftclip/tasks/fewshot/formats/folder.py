"""``folder``: ``root/train/<class>/*``, ``root/test/<class>/*`` and optionally ``root/val/<class>/*``;
or one tree ``root/<class>/*`` split per class into train and test by ``test_fraction`` (seeded, see
:func:`~ftclip.tasks.fewshot.protocol.stratified_split`).

Images lie directly in the class folders (extensions of :data:`~ftclip.data.images.IMAGE_EXTENSIONS`;
hidden files and folders skipped). Classes are the train folders in sorted order; a class name is
its folder name with underscores read as spaces (``red_circle`` -> "red circle").
"""

from __future__ import annotations

from pathlib import Path

from ftclip.data.images import IMAGE_EXTENSIONS
from ftclip.errors import DataError
from ftclip.tasks.fewshot.dataset import ClassificationData, Item, build_data, few
from ftclip.tasks.fewshot.formats.base import FewshotFormat, LoadOptions
from ftclip.tasks.fewshot.protocol import stratified_split
from ftclip.tasks.fewshot.templates import DEFAULT_TEMPLATE

_SPLIT_DIRS = ("train", "val", "test")


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


class ClassFolders(FewshotFormat):
    name = "folder"
    looked_for = "train/<class>/ + test/<class>/ or <class>/ folders (folder)"

    def detect(self, root: Path) -> bool:
        return root.is_dir() and bool(_visible_dirs(root))

    def load(self, root: Path, options: LoadOptions) -> ClassificationData:
        source = f"folder data set {root}"
        if not (root / "train").is_dir():
            return self._single_tree(root, options, source)
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

    def _single_tree(self, root: Path, options: LoadOptions, source: str) -> ClassificationData:
        stray = [d for d in ("val", "test") if (root / d).is_dir()]
        if stray:
            raise DataError(
                f"{root} has {'/'.join(stray)}/ but no train/: the folder layout is root/train/<class>/ and "
                "root/test/<class>/ (optional root/val/<class>/), or class folders directly in root"
            )
        tree = _read_tree(root)
        keys = sorted(tree)
        items = [(p, i) for i, k in enumerate(keys) for p in tree[k]]
        train, test = stratified_split(items, keys, options.test_fraction, options.seed, source)
        names = [_name(k) for k in keys]
        return build_data("folder", root, keys, names, train, None, test, (DEFAULT_TEMPLATE,), source)
