"""Any labeled IQA set as a CSV: ``path,mos`` (optional ``split``); relative paths against the CSV's folder."""

from __future__ import annotations

import os
from pathlib import Path

from ftclip.data.tables import read_table
from ftclip.errors import DataError
from ftclip.tasks.iqa.formats.base import IqaFormat, IqaSample, finish, parse_mos

_SHOW = 5


class CsvScores(IqaFormat):
    name = "csv"
    looked_for = "one CSV with path,mos columns"
    has_split = True

    def detect(self, root: Path) -> bool:
        return root.is_file() and root.suffix.lower() == ".csv" or root.is_dir() and len(list(root.glob("*.csv"))) == 1

    def load(self, csv_file: Path, split: str | None, images_dir: str | Path | None) -> list[IqaSample]:
        rows = read_table(csv_file, ["path", "mos"])
        if split is not None and rows and "split" not in rows[0][1]:
            raise DataError(f"IQA CSV {csv_file} has no split column, so split={split!r} cannot be selected")
        base = csv_file.parent
        samples, errors = [], []
        for line, row in rows:
            if split is not None and row.get("split", "").lower() != split.strip().lower():
                continue
            if not row["path"]:
                errors.append(f"line {line}: empty path")
                continue
            mos = parse_mos(row["mos"])
            if mos is None:
                errors.append(f"line {line}: MOS {row['mos']!r} is not a finite number")
                continue
            p = Path(row["path"]).expanduser()
            samples.append(IqaSample(os.path.normpath(p if p.is_absolute() else base / p), mos))
        if errors:
            raise DataError(f"IQA CSV {csv_file} has {len(errors)} bad rows: {'; '.join(errors[:_SHOW])}")
        return finish(samples, f"IQA CSV {csv_file}" + (f" (split {split})" if split is not None else ""))
