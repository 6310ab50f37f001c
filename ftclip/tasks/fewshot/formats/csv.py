"""``csv``: columns ``path,label[,split]``.

Paths are relative to the CSV's folder (or absolute); labels are class names (used as written);
``split`` is ``train``, ``val`` or ``test`` (any case). Without a split column every row is split by
``test_fraction`` as a single folder tree is. Classes: the train rows' labels, sorted.
"""

from __future__ import annotations

import os
from pathlib import Path

from ftclip.data.tables import read_table, resolve_csv
from ftclip.errors import DataError
from ftclip.tasks.fewshot.dataset import ClassificationData, build_data, check_files_exist, few
from ftclip.tasks.fewshot.formats.base import FewshotFormat, LoadOptions
from ftclip.tasks.fewshot.protocol import stratified_split
from ftclip.tasks.fewshot.templates import DEFAULT_TEMPLATE

_SPLITS = ("train", "val", "test")


def _has_columns(path: Path) -> bool:
    """Whether the first line of ``path`` names the columns path and label."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            header = {c.strip() for c in fh.readline().split(",")}
    except (OSError, UnicodeDecodeError):
        return False
    return {"path", "label"} <= header


class CsvList(FewshotFormat):
    name = "csv"
    looked_for = "one .csv with path,label[,split] columns (csv)"

    def detect(self, root: Path) -> bool:
        if root.is_file():
            return root.suffix.lower() == ".csv"
        files = [p for p in root.glob("*.csv") if p.is_file()] if root.is_dir() else []
        return len(files) == 1 and _has_columns(files[0])  # a stray metadata.csv beside class folders is no list

    def load(self, root: Path, options: LoadOptions) -> ClassificationData:
        path = resolve_csv(root, options.csv_path, "few-shot CSV")
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
            elif has_split and split not in _SPLITS:
                errors.append(f"line {line}: split {row.get('split', '')!r} is not one of {', '.join(_SPLITS)}")
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
        items = {s: [(p, label_of[lbl]) for _, p, lbl, split in parsed if split == s] for s in (*_SPLITS, "all")}
        check_files_exist([(p, 0) for _, p, _, _ in parsed], source)
        if has_split:
            train, val, test = items["train"], items["val"] or None, items["test"]
        else:
            train, test = stratified_split(items["all"], keys, options.test_fraction, options.seed, source)
            val = None
        return build_data("csv", path, keys, keys, train, val, test, (DEFAULT_TEMPLATE,), source)
