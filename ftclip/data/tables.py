"""CSV tables of data sets: rows with their line numbers, one clear error for missing columns."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from ftclip.errors import DataError


def read_table(path: Path, required: Iterable[str], what: str = "") -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV (``utf-8``, BOM allowed) as ``(line number, {column: stripped value})``.

    Raises one DataError naming the file (described as ``what``, e.g. "re-id CSV") and the
    missing columns when the header lacks any of ``required``.
    """
    required = list(required)
    label = f"{what} {path}" if what else str(path)
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as err:
        raise DataError(f"{label} cannot be opened ({err})") from None
    with fh:
        reader = csv.DictReader(fh)
        header = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(
                f"{label} lacks column(s) {', '.join(missing)} (header: {','.join(header) or 'empty'}): "
                f"its first line must name the columns {','.join(required)}"
            )
        reader.fieldnames = header
        return [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}) for row in reader]
