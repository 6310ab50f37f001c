"""Any re-ID data set as one CSV (``path,pid,camid,split``): ``camid`` zero-based as given, ``split`` one of
train/query/gallery, pid -1 for junk; relative paths are resolved against the CSV's folder."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ftclip.data.tables import read_table, resolve_csv
from ftclip.errors import DataError
from ftclip.tasks.reid.formats.base import ReidFormat, ReidSample, Splits, check_missing, drop

_COLUMNS = ("path", "pid", "camid", "split")
_SPLITS = ("train", "query", "gallery")
_SHOW = 5


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _looks_like_reid_csv(path: Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = {c.strip() for c in next(csv.reader(fh), [])}
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return {"path", "pid", "split"} <= header


class CsvList(ReidFormat):
    name = "csv"
    looked_for = "one CSV file (path,pid,camid,split)"
    nested = False

    def detect(self, folder: Path) -> int:
        if folder.is_file():
            return 2 if folder.suffix.lower() == ".csv" else 0
        files = sorted(p for p in folder.glob("*.csv") if p.is_file())
        return 2 if len(files) == 1 and _looks_like_reid_csv(files[0]) else 0

    def missing_parts(self, folder: Path) -> list[str]:
        return ["one .csv file with columns path,pid,camid,split"]

    def resolve(self, root: Path, csv_path: str | Path | None) -> Path:
        return resolve_csv(root, csv_path, "re-id CSV")

    def split_sources(self, folder: Path) -> list[str]:
        return [f"the rows of {folder} with split={s}" for s in _SPLITS]

    def parse(self, csv_file: Path) -> Splits:
        splits: dict[str, list[ReidSample]] = {s: [] for s in _SPLITS}
        errors: list[str] = []
        base = csv_file.parent
        for line, row in read_table(csv_file, _COLUMNS, "re-id CSV"):
            path, pid, camid, split = (row.get(c, "") for c in _COLUMNS)
            pid_i, cam_i = _as_int(pid), _as_int(camid)
            if pid_i is None:
                errors.append(f"line {line}: pid {pid!r} is not an integer")
            elif cam_i is None:
                errors.append(f"line {line}: camid {camid!r} is not an integer")
            elif not path:
                errors.append(f"line {line}: empty path")
            elif split.lower() not in _SPLITS:
                errors.append(f"line {line}: split {split!r} must be one of {', '.join(_SPLITS)}")
            elif cam_i < 0:
                errors.append(f"line {line}: camid {cam_i} must be 0 or more (zero-based)")
            elif pid_i < -1:
                errors.append(f"line {line}: pid {pid_i} must be 0 or more (or -1 for junk)")
            else:
                full = Path(path).expanduser()
                full = full if full.is_absolute() else base / full
                splits[split.lower()].append(ReidSample(os.path.normpath(full), pid_i, cam_i))
        if errors:
            raise DataError(f"re-id CSV {csv_file} has {len(errors)} bad rows: {'; '.join(errors[:_SHOW])}")
        check_missing((s.path for split in splits.values() for s in split), f"re-id CSV {csv_file}")
        skip = frozenset({-1})
        return drop(splits["train"], skip), drop(splits["query"], skip), splits["gallery"]
