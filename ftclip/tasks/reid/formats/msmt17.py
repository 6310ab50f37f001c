"""MSMT17: ``list_train.txt`` / ``list_query.txt`` / ``list_gallery.txt`` (``path pid`` lines) over ``train/``
and ``test/`` (or ``mask_train_v2/`` and ``mask_test_v2/``). ``list_val.txt`` is merged into the training
split, as the CLIP-ReID reference does (its validation identities are training identities)."""

from __future__ import annotations

import os
from pathlib import Path

from ftclip.errors import DataError
from ftclip.tasks.reid.formats.base import ReidFormat, ReidSample, Splits, check_missing, drop

_LISTS = ("list_train.txt", "list_query.txt", "list_gallery.txt")
_IMAGE_DIRS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))


def _image_dirs(folder: Path) -> tuple[Path, Path] | None:
    for train, test in _IMAGE_DIRS:
        if (folder / train).is_dir() and (folder / test).is_dir():
            return folder / train, folder / test
    return None


def _parse_list(list_path: Path, image_dir: Path) -> list[ReidSample]:
    samples: list[ReidSample] = []
    with open(list_path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 2:
                    raise ValueError
                rel, pid = fields[0], int(fields[1])
                camid = int(os.path.basename(rel).split("_")[2])
            except (ValueError, IndexError):
                raise DataError(
                    f"{list_path} line {lineno} is not 'path pid' with an MSMT17 file name "
                    f"(e.g. 0000/0000_000_01_0303morning_0015_0.jpg 0): got {line.strip()!r}"
                ) from None
            if camid < 1:
                raise DataError(f"{list_path} line {lineno}: camera {camid} in {rel!r} must be 1 or more")
            samples.append(ReidSample(str(image_dir / rel), pid, camid - 1))
    check_missing((s.path for s in samples), str(list_path))
    return samples


class MSMT17(ReidFormat):
    name = "msmt17"
    aliases = ("msmt",)
    looked_for = "MSMT17 (list_train.txt, list_query.txt, list_gallery.txt with train/ and test/)"

    def detect(self, folder: Path) -> int:
        return 2 if all((folder / f).is_file() for f in _LISTS) and _image_dirs(folder) is not None else 0

    def missing_parts(self, folder: Path) -> list[str]:
        parts = [f for f in _LISTS if not (folder / f).is_file()]
        if _image_dirs(folder) is None:
            parts.append("train/ and test/ (or mask_train_v2/ and mask_test_v2/)")
        return parts

    def split_sources(self, folder: Path) -> list[str]:
        return [f"{folder / 'list_train.txt'} + list_val.txt", str(folder / "list_query.txt"),
                str(folder / "list_gallery.txt")]

    def parse(self, folder: Path) -> Splits:
        dirs = _image_dirs(folder)
        assert dirs is not None
        train_dir, test_dir = dirs
        train = _parse_list(folder / "list_train.txt", train_dir)
        if (folder / "list_val.txt").is_file():
            train += _parse_list(folder / "list_val.txt", train_dir)
        query = _parse_list(folder / "list_query.txt", test_dir)
        gallery = _parse_list(folder / "list_gallery.txt", test_dir)
        return drop(train, frozenset({-1})), drop(query, frozenset({-1})), gallery
