"""Re-identification data formats: the registry, detection and loading.

Every format returns a :class:`ReidDataset` with three splits of :class:`ReidSample`:

* ``train``: identities relabelled to ``0..num_train_pids-1`` in sorted raw-pid order;
  junk (pid -1) is skipped, and for Market-1501 also the distractor pid 0 (as the
  CLIP-ReID reference does).
* ``query``: raw pids; junk (-1) is skipped (and Market-1501's distractor 0).
* ``gallery``: raw pids, everything kept: Market-1501's junk (-1) and distractors (0)
  stay, so the evaluation must ignore pid -1 (the reference drops those files instead;
  the resulting CMC/mAP are the same) and count 0 as a non-match.

Camera ids are zero-based (Market ``c1`` -> 0).

Adding a format: one file with a :class:`~ftclip.tasks.reid.formats.base.ReidFormat` subclass,
and one entry in :data:`REGISTRY` below.
"""

from __future__ import annotations

from pathlib import Path

from ftclip.errors import ConfigError, DataError
from ftclip.tasks.reid.formats.base import ReidDataset, ReidFormat, ReidSample, few
from ftclip.tasks.reid.formats.csv import CsvList
from ftclip.tasks.reid.formats.folders import DukeMTMC, Market1501, VeRi776
from ftclip.tasks.reid.formats.msmt17 import MSMT17

__all__ = ["ReidSample", "ReidDataset", "REID_FORMATS", "load_reid_dataset", "detect_reid_format", "get_format"]

#: The formats, in auto-detection order (on a tie, the first wins). Name -> format.
REGISTRY: dict[str, ReidFormat] = {f.name: f for f in (Market1501(), DukeMTMC(), MSMT17(), VeRi776(), CsvList())}
REID_FORMATS = tuple(REGISTRY)
_ALIASES = {alias: fmt.name for fmt in REGISTRY.values() for alias in fmt.aliases}


def get_format(name: str) -> ReidFormat:
    """A format by name or alias (case-insensitive); ConfigError listing the known ones."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in REGISTRY:
        raise ConfigError(f"re-id data format {name!r} is unknown: use auto or one of {', '.join(REID_FORMATS)}")
    return REGISTRY[key]


def _check_root(root: str | Path) -> Path:
    path = Path(root).expanduser().absolute()
    if not path.exists():
        raise DataError(f"re-id data root {path} does not exist: check data.root (the data set folder)")
    return path


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _best(folder: Path, *, nested: bool) -> ReidFormat | None:
    """The best-matching format of ``folder`` itself (``nested``: only formats searched one level down)."""
    scored = [(fmt.detect(folder), -i, fmt) for i, fmt in enumerate(REGISTRY.values()) if fmt.nested or not nested]
    score, _, fmt = max(scored, key=lambda t: (t[0], t[1]))
    return fmt if score > 0 else None


def detect_reid_format(root: str | Path) -> tuple[str, Path]:
    """Find which layout ``root`` (or exactly one of its subfolders) holds: ``(format, folder)``."""
    root = _check_root(root)
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv", root
        raise DataError(f"re-id data root {root} is a file, not a folder: pass the data set folder or a .csv file")
    fmt = _best(root, nested=False)
    if fmt is not None:
        return fmt.name, root
    found = [(f.name, sub) for sub in _subdirs(root) if (f := _best(sub, nested=True)) is not None]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DataError(
            f"re-id data root {root} holds several data sets ({few(f'{s.name} ({f})' for f, s in found)}): "
            "pass the folder of the one you want"
        )
    looked_for = ", ".join(dict.fromkeys(f.looked_for for f in REGISTRY.values()))
    raise DataError(
        f"no re-id data set layout found in {root} or its subfolders; looked for {looked_for}: "
        "pass the folder that holds them, or write a CSV and use format csv"
    )


def _locate(fmt: ReidFormat, root: Path) -> Path:
    """The folder under ``root`` (itself or one subfolder) that holds the ``fmt`` layout."""
    if fmt.detect(root):
        return root
    found = [sub for sub in _subdirs(root) if fmt.detect(sub)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DataError(f"{root} holds several {fmt.name} data sets ({few(s.name for s in found)}): pass one of them")
    raise DataError(
        f"{fmt.name} layout not found in {root}: missing {', '.join(fmt.missing_parts(root))} "
        "(also looked one folder down); pass the folder that holds them, or use format auto"
    )


def _relabel(samples: list[ReidSample]) -> tuple[list[ReidSample], tuple[int, ...]]:
    """Training identities -> labels ``0..n-1`` in sorted raw-pid order; also the raw pid of each label."""
    raw = tuple(sorted({s.pid for s in samples}))
    mapping = {pid: i for i, pid in enumerate(raw)}
    return [ReidSample(s.path, mapping[s.pid], s.camid) for s in samples], raw


def _validate(fmt: ReidFormat, path: Path, train: list[ReidSample], query: list[ReidSample],
              gallery: list[ReidSample]) -> None:
    for label, split, source in zip(("train", "query", "gallery"), (train, query, gallery), fmt.split_sources(path)):
        if not split:
            raise DataError(
                f"the {label} split of {fmt.name} data is empty: {source} holds no usable images"
                f"{fmt.empty_split_hint()}; check that the images are in place"
            )
    shared = ({s.pid for s in query} & {s.pid for s in gallery}) - {-1}
    if not shared:
        raise DataError(
            f"query and gallery of {fmt.name} data at {path} share no identity "
            f"(query pids e.g. {few(sorted({s.pid for s in query}))}; gallery pids e.g. "
            f"{few(sorted({s.pid for s in gallery}))}): they must come from the same test identities"
        )


def load_reid_dataset(format: str, root: str | Path, *, csv_path: str | Path | None = None) -> ReidDataset:
    """Load a re-id data set.

    ``format`` is one of :data:`REID_FORMATS` (or an alias) or ``"auto"`` (detect from the files
    present); ``root`` is the data set folder (or a folder holding exactly one data set folder; for
    ``csv`` also the CSV file itself). Raises :class:`DataError` if the root is missing, matches no
    layout, a split is empty, or query and gallery share no identity.
    """
    auto = str(format).strip().lower() == "auto"
    fmt = None if auto else get_format(format)
    if csv_path is not None and fmt is not None and fmt.name != "csv":
        raise ConfigError(f"csv_path is only used with format csv (got format {fmt.name})")
    path = _check_root(root)
    if csv_path is not None:
        fmt = REGISTRY["csv"]
    elif fmt is None:
        name, path = detect_reid_format(path)
        fmt = REGISTRY[name]
    elif fmt.name != "csv":
        if not path.is_dir():
            raise DataError(f"re-id data root {path} is not a folder: pass the {fmt.name} data set folder")
        path = _locate(fmt, path)
    path = fmt.resolve(path, csv_path)
    train, query, gallery = fmt.parse(path)
    _validate(fmt, path, train, query, gallery)
    train, raw_pids = _relabel(train)
    return ReidDataset(name=fmt.name, root=str(path), train=train, query=query, gallery=gallery,
                       vehicle=fmt.vehicle, train_pids=raw_pids)
