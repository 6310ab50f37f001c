"""Re-identification data sets: Market-1501, DukeMTMC-reID, MSMT17, VeRi-776 and CSV.

Every loader returns a :class:`ReidDataset` with three splits of :class:`ReidSample`:

* ``train``: identities relabelled to ``0..num_train_pids-1`` in sorted raw-pid order;
  junk (pid -1) is skipped, and for Market-1501 also the distractor pid 0 (as the
  CLIP-ReID reference does).
* ``query``: raw pids; junk (-1) is skipped (and Market-1501's distractor 0).
* ``gallery``: raw pids, everything kept: Market-1501's junk (-1) and distractors (0)
  stay, so the evaluation must ignore pid -1 (the reference drops those files instead;
  the resulting CMC/mAP are the same) and count 0 as a non-match.

Camera ids are zero-based (Market ``c1`` -> 0). MSMT17's ``list_val.txt`` is merged into
the training split, as the CLIP-ReID reference does (its validation identities are
training identities). A CSV (``path,pid,camid,split``) describes any other data set;
its ``camid`` is used as given (zero-based) and relative paths are resolved against the
CSV's folder.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ftclip.data.images import IMAGE_EXTENSIONS
from ftclip.data.tables import read_table, resolve_csv
from ftclip.errors import ConfigError, DataError

__all__ = ["ReidSample", "ReidDataset", "REID_FORMATS", "load_reid_dataset", "detect_reid_format"]

REID_FORMATS = ("market1501", "dukemtmc", "msmt17", "veri776", "csv")

_ALIASES = {
    "market": "market1501",
    "market-1501": "market1501",
    "duke": "dukemtmc",
    "dukemtmc-reid": "dukemtmc",
    "dukemtmcreid": "dukemtmc",
    "msmt": "msmt17",
    "veri": "veri776",
    "veri-776": "veri776",
}
_SHOW = 5  # how many offending names an error message lists

# Folder layouts: (train, query, gallery) folder names.
_BBOX_DIRS = ("bounding_box_train", "query", "bounding_box_test")
_VERI_DIRS = ("image_train", "image_query", "image_test")
_MSMT_LISTS = ("list_train.txt", "list_query.txt", "list_gallery.txt")
_MSMT_IMAGE_DIRS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))

# File name patterns: group 1 = pid, group 2 = 1-based camera.
_NAME_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "market1501": (re.compile(r"^(-?\d+)_c(\d+)s\d+_"), "PPPP_cXsY_FFFFFF_NN.jpg, e.g. 0002_c1s1_000451_03.jpg"),
    "dukemtmc": (re.compile(r"^(-?\d+)_c(\d+)_f\d+"), "PPPP_cX_fFFFFFFF.jpg, e.g. 0001_c2_f0046182.jpg"),
    "veri776": (re.compile(r"^(-?\d+)_c(\d+)_"), "PPPP_cCCC_FFFFFFFF_N.jpg, e.g. 0001_c001_00016450_0.jpg"),
}

_LOOKED_FOR = (
    "Market-1501 / DukeMTMC-reID (bounding_box_train/, query/, bounding_box_test/), "
    "VeRi-776 (image_train/, image_query/, image_test/), "
    "MSMT17 (list_train.txt, list_query.txt, list_gallery.txt with train/ and test/), "
    "or one CSV file (path,pid,camid,split)"
)


@dataclass(frozen=True)
class ReidSample:
    """One image: absolute path, identity, zero-based camera index."""

    path: str
    pid: int
    camid: int


@dataclass
class ReidDataset:
    """A re-identification data set with its train, query and gallery splits."""

    name: str
    root: str
    train: list[ReidSample]
    query: list[ReidSample]
    gallery: list[ReidSample]

    @property
    def num_train_pids(self) -> int:
        """Number of training identities (train pids are ``0..num_train_pids-1``)."""
        return len({s.pid for s in self.train})

    @property
    def num_cameras(self) -> int:
        """Largest camera index over all splits, plus one."""
        cams = [s.camid for split in (self.train, self.query, self.gallery) for s in split]
        return max(cams) + 1 if cams else 0

    def summary(self) -> str:
        """A small table: split, images, identities, cameras."""
        lines = [f"{self.name} at {self.root}", f"  {'split':<8}{'images':>9}{'ids':>8}{'cameras':>9}"]
        for label, split in (("train", self.train), ("query", self.query), ("gallery", self.gallery)):
            ids = len({s.pid for s in split if s.pid != -1})
            cams = len({s.camid for s in split})
            lines.append(f"  {label:<8}{len(split):>9}{ids:>8}{cams:>9}")
        junk = sum(1 for s in self.gallery if s.pid == -1)
        if junk:
            lines.append(f"  gallery holds {junk} junk images (pid -1), ignored by the evaluation")
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _list_image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    try:
        with os.scandir(folder) as it:
            names = sorted(
                e.name for e in it if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            )
    except OSError as err:
        raise DataError(f"folder {folder} cannot be listed ({err}): check that it exists and is readable") from None
    return [folder / n for n in names]


def _few(items: Iterable[object]) -> str:
    items = list(items)
    text = ", ".join(str(i) for i in items[:_SHOW])
    return text + (f" and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


def _relabel(samples: list[ReidSample]) -> list[ReidSample]:
    mapping = {pid: i for i, pid in enumerate(sorted({s.pid for s in samples}))}
    return [ReidSample(s.path, mapping[s.pid], s.camid) for s in samples]


def _drop(samples: list[ReidSample], pids: frozenset[int]) -> list[ReidSample]:
    return [s for s in samples if s.pid not in pids]


def _check_missing(paths: Iterable[str], source: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(
            f"{len(missing)} images listed in {source} do not exist: {_few(missing)}; "
            "check that the images were extracted next to the list"
        )


# --------------------------------------------------------------------------- layouts


def _has_layout(fmt: str, folder: Path) -> bool:
    if fmt in ("market1501", "dukemtmc"):
        return all((folder / d).is_dir() for d in _BBOX_DIRS)
    if fmt == "veri776":
        return all((folder / d).is_dir() for d in _VERI_DIRS)
    if fmt == "msmt17":
        return all((folder / f).is_file() for f in _MSMT_LISTS) and _msmt_image_dirs(folder) is not None
    raise AssertionError(fmt)


def _missing_parts(fmt: str, folder: Path) -> list[str]:
    if fmt in ("market1501", "dukemtmc"):
        return [d + "/" for d in _BBOX_DIRS if not (folder / d).is_dir()]
    if fmt == "veri776":
        return [d + "/" for d in _VERI_DIRS if not (folder / d).is_dir()]
    if fmt == "msmt17":
        parts = [f for f in _MSMT_LISTS if not (folder / f).is_file()]
        if _msmt_image_dirs(folder) is None:
            parts.append("train/ and test/ (or mask_train_v2/ and mask_test_v2/)")
        return parts
    raise AssertionError(fmt)


def _csv_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.csv") if p.is_file())


def _msmt_image_dirs(folder: Path) -> tuple[Path, Path] | None:
    for train, test in _MSMT_IMAGE_DIRS:
        if (folder / train).is_dir() and (folder / test).is_dir():
            return folder / train, folder / test
    return None


def _bbox_flavour(folder: Path) -> str | None:
    """Tell Market-1501 from DukeMTMC-reID by the file names in a bounding-box layout."""
    for d in _BBOX_DIRS:
        for path in _list_image_files(folder / d)[:20]:
            for fmt in ("market1501", "dukemtmc"):
                if _NAME_PATTERNS[fmt][0].match(path.name):
                    return fmt
    return None


def _looks_like_reid_csv(path: Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = {c.strip() for c in next(csv.reader(fh), [])}
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return {"path", "pid", "split"} <= header


def _detect_here(folder: Path, *, allow_csv: bool) -> str | None:
    if _has_layout("market1501", folder):
        return _bbox_flavour(folder) or "market1501"
    for fmt in ("veri776", "msmt17"):
        if _has_layout(fmt, folder):
            return fmt
    if allow_csv:
        files = _csv_files(folder)
        if len(files) == 1 and _looks_like_reid_csv(files[0]):
            return "csv"
    return None


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def detect_reid_format(root: str | Path) -> tuple[str, Path]:
    """Find which layout ``root`` (or exactly one of its subfolders) holds: ``(format, folder)``."""
    root = _check_root(root)
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv", root
        raise DataError(f"re-id data root {root} is a file, not a folder: pass the data set folder or a .csv file")
    fmt = _detect_here(root, allow_csv=True)
    if fmt is not None:
        return fmt, root
    found = [(f, sub) for sub in _subdirs(root) if (f := _detect_here(sub, allow_csv=False)) is not None]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DataError(
            f"re-id data root {root} holds several data sets ({_few(f'{s.name} ({f})' for f, s in found)}): "
            "pass the folder of the one you want"
        )
    raise DataError(
        f"no re-id data set layout found in {root} or its subfolders; looked for {_LOOKED_FOR}: "
        "pass the folder that holds them, or write a CSV and use format csv"
    )


def _check_root(root: str | Path) -> Path:
    path = Path(root).expanduser().absolute()
    if not path.exists():
        raise DataError(f"re-id data root {path} does not exist: check data.root (the data set folder)")
    return path


def _locate(fmt: str, root: Path) -> Path:
    """The folder under ``root`` (itself or one subfolder) that holds the ``fmt`` layout."""
    if _has_layout(fmt, root):
        return root
    found = [sub for sub in _subdirs(root) if _has_layout(fmt, sub)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DataError(f"{root} holds several {fmt} data sets ({_few(s.name for s in found)}): pass one of them")
    raise DataError(
        f"{fmt} layout not found in {root}: missing {', '.join(_missing_parts(fmt, root))} "
        "(also looked one folder down); pass the folder that holds them, or use format auto"
    )


# --------------------------------------------------------------------------- parsers


def _parse_folder(fmt: str, folder: Path) -> list[ReidSample]:
    pattern, example = _NAME_PATTERNS[fmt]
    samples: list[ReidSample] = []
    bad: list[str] = []
    for path in _list_image_files(folder):
        m = pattern.match(path.name)
        if m is None or int(m.group(2)) < 1:
            bad.append(path.name)
            continue
        samples.append(ReidSample(str(path), int(m.group(1)), int(m.group(2)) - 1))
    if bad:
        hint = " (use format auto to detect the layout)" if fmt in ("market1501", "dukemtmc") else ""
        raise DataError(
            f"{len(bad)} files in {folder} are not named like {fmt} images ({example}): {_few(bad)}; "
            f"rename or remove them{hint}"
        )
    return samples


def _load_folders(fmt: str, folder: Path) -> tuple[list[ReidSample], list[ReidSample], list[ReidSample]]:
    dirs = _VERI_DIRS if fmt == "veri776" else _BBOX_DIRS
    train, query, gallery = (_parse_folder(fmt, folder / d) for d in dirs)
    skip = frozenset({-1, 0}) if fmt == "market1501" else frozenset({-1})
    return _drop(train, skip), _drop(query, skip), gallery


def _parse_msmt_list(list_path: Path, image_dir: Path) -> list[ReidSample]:
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
    _check_missing((s.path for s in samples), str(list_path))
    return samples


def _load_msmt(folder: Path) -> tuple[list[ReidSample], list[ReidSample], list[ReidSample]]:
    dirs = _msmt_image_dirs(folder)
    assert dirs is not None
    train_dir, test_dir = dirs
    train = _parse_msmt_list(folder / "list_train.txt", train_dir)
    if (folder / "list_val.txt").is_file():
        train += _parse_msmt_list(folder / "list_val.txt", train_dir)
    query = _parse_msmt_list(folder / "list_query.txt", test_dir)
    gallery = _parse_msmt_list(folder / "list_gallery.txt", test_dir)
    return _drop(train, frozenset({-1})), _drop(query, frozenset({-1})), gallery


_CSV_COLUMNS = ("path", "pid", "camid", "split")
_CSV_SPLITS = ("train", "query", "gallery")


def _load_csv(csv_file: Path) -> tuple[list[ReidSample], list[ReidSample], list[ReidSample]]:
    splits: dict[str, list[ReidSample]] = {s: [] for s in _CSV_SPLITS}
    errors: list[str] = []
    base = csv_file.parent
    for line, row in read_table(csv_file, _CSV_COLUMNS, "re-id CSV"):
        path, pid, camid, split = (row.get(c, "") for c in _CSV_COLUMNS)
        pid_i, cam_i = _as_int(pid), _as_int(camid)
        if pid_i is None:
            errors.append(f"line {line}: pid {pid!r} is not an integer")
        elif cam_i is None:
            errors.append(f"line {line}: camid {camid!r} is not an integer")
        elif not path:
            errors.append(f"line {line}: empty path")
        elif split.lower() not in _CSV_SPLITS:
            errors.append(f"line {line}: split {split!r} must be one of {', '.join(_CSV_SPLITS)}")
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
    _check_missing((s.path for split in splits.values() for s in split), f"re-id CSV {csv_file}")
    skip = frozenset({-1})
    return _drop(splits["train"], skip), _drop(splits["query"], skip), splits["gallery"]


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _split_sources(fmt: str, path: Path) -> list[str]:
    """Where each split (train, query, gallery) comes from, for error messages."""
    if fmt == "csv":
        return [f"the rows of {path} with split={s}" for s in _CSV_SPLITS]
    if fmt == "msmt17":
        return [f"{path / 'list_train.txt'} + list_val.txt", str(path / "list_query.txt"),
                str(path / "list_gallery.txt")]
    return [str(path / d) for d in (_VERI_DIRS if fmt == "veri776" else _BBOX_DIRS)]


def _validate(
    name: str, path: Path, train: list[ReidSample], query: list[ReidSample], gallery: list[ReidSample]
) -> None:
    where = str(path)
    for label, split, source in zip(("train", "query", "gallery"), (train, query, gallery), _split_sources(name, path)):
        if not split:
            junk = " (junk pid -1 and distractor pid 0 are not counted)" if name == "market1501" else ""
            raise DataError(
                f"the {label} split of {name} data is empty: {source} holds no usable images{junk}; "
                "check that the images are in place"
            )
    shared = ({s.pid for s in query} & {s.pid for s in gallery}) - {-1}
    if not shared:
        raise DataError(
            f"query and gallery of {name} data at {where} share no identity "
            f"(query pids e.g. {_few(sorted({s.pid for s in query}))}; gallery pids e.g. "
            f"{_few(sorted({s.pid for s in gallery}))}): they must come from the same test identities"
        )


def load_reid_dataset(format: str, root: str | Path, *, csv_path: str | Path | None = None) -> ReidDataset:
    """Load a re-id data set.

    ``format`` is one of :data:`REID_FORMATS` or ``"auto"`` (detect from the files present);
    ``root`` is the data set folder (or a folder holding exactly one data set folder; for
    ``csv`` also the CSV file itself). Raises :class:`DataError` if the root is missing,
    matches no layout, a split is empty, or query and gallery share no identity.
    """
    fmt = str(format).strip().lower()
    fmt = _ALIASES.get(fmt, fmt)
    if fmt not in REID_FORMATS and fmt != "auto":
        raise ConfigError(f"re-id data format {format!r} is unknown: use auto or one of {', '.join(REID_FORMATS)}")
    if csv_path is not None and fmt not in ("csv", "auto"):
        raise ConfigError(f"csv_path is only used with format csv (got format {fmt})")
    path = _check_root(root)
    if csv_path is not None:
        fmt = "csv"
    elif fmt == "auto":
        fmt, path = detect_reid_format(path)
    elif fmt != "csv":
        if not path.is_dir():
            raise DataError(f"re-id data root {path} is not a folder: pass the {fmt} data set folder")
        path = _locate(fmt, path)

    if fmt == "csv":
        path = resolve_csv(path, csv_path, "re-id CSV")
        train, query, gallery = _load_csv(path)
    elif fmt == "msmt17":
        train, query, gallery = _load_msmt(path)
    else:
        train, query, gallery = _load_folders(fmt, path)
    _validate(fmt, path, train, query, gallery)
    return ReidDataset(name=fmt, root=str(path), train=_relabel(train), query=query, gallery=gallery)
