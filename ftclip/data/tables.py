"""CSV tables of data sets: rows with their line numbers, one clear error for missing columns,
and the policy for an image listed twice (``data.on_duplicate``)."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

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


def resolve_csv(root: Path, csv_path: str | Path | None, what: str) -> Path:
    """The list file of a ``format: csv`` data set: ``csv_path`` (absolute, or relative to the
    working directory or to ``root``), ``root`` itself if it is a file, else the one ``.csv`` in ``root``."""
    if csv_path is not None:
        path = Path(csv_path).expanduser()
        if not path.is_absolute() and not path.exists() and root.is_dir():
            path = root / path
        if not path.is_file():
            raise DataError(f"{what} {path.absolute()} does not exist: check csv_path")
        return path.absolute()
    if root.is_file():
        return root
    files = sorted(p for p in root.glob("*.csv") if p.is_file())
    if len(files) != 1:
        names = ", ".join(f.name for f in files[:5]) + (" ..." if len(files) > 5 else "")
        found = f"found {names}" if files else "found none"
        raise DataError(f"format csv needs exactly one .csv file in {root} ({found}): pass csv_path")
    return files[0]


#: ``data.on_duplicate``: an image listed more than once in a split is an error, or only its first row is kept
DUPLICATE_POLICIES = ("error", "first")
_SHOW = 5
T = TypeVar("T")


def drop_repeats(items: list[T], key: Callable[[T], str], policy: str, source: str) -> tuple[list[T], str | None]:
    """``items`` without the later repeats of a ``key`` (an image path): a repeated image would count
    twice in training and in the metrics.

    Policy ``error``: one DataError naming ``source`` and the repeated images; ``first``: keep the first
    item of each key. Returns the items kept and a note of what was dropped (None if nothing was).
    """
    counts = Counter(key(item) for item in items)
    repeated = {k: n for k, n in counts.items() if n > 1}
    if not repeated:
        return items, None
    listed = ", ".join(f"{k} ({n} times)" for k, n in list(repeated.items())[:_SHOW])
    listed += f" and {len(repeated) - _SHOW} more" if len(repeated) > _SHOW else ""
    if policy != "first":
        raise DataError(
            f"{source} lists {len(repeated)} image(s) more than once: {listed}; a repeated image counts twice in "
            "training and in the metrics: remove the repeated rows, or set data.on_duplicate=first to keep the "
            "first row of each"
        )
    seen: set[str] = set()
    kept = [item for item in items if not (key(item) in seen or seen.add(key(item)))]
    return kept, (f"{source}: dropped {len(items) - len(kept)} repeated row(s) of {len(repeated)} image(s) "
                  f"(data.on_duplicate=first): {listed}")
