"""Image quality data sets: KonIQ-10k, SPAQ, KADID-10k, LIVE Challenge, CSV, and image folders.

Each loader returns a list of :class:`IqaSample` (absolute path, MOS in the data set's own
scale, higher = better). Layouts:

* ``koniq10k``: ``koniq10k_distributions_sets.csv`` (its ``set`` column gives the official
  training/validation/test split; its ``MOS`` is on 0-100) or
  ``koniq10k_scores_and_distributions.csv`` (its ``MOS`` is the mean 1-5 rating); images in ``1024x768/`` (else ``512x384/``).
* ``spaq``: ``Annotations/MOS and Image attribute scores.xlsx`` (``Image name``, ``MOS``
  0-100; needs ``openpyxl``); images in ``TestImage/``.
* ``kadid10k``: ``dmos.csv`` (``dist_img``, ``dmos`` 1-5, higher is better); images in ``images/``.
* ``livec``: ``Data/AllImages_release.mat`` + ``Data/AllMOS_release.mat`` (the first 7
  entries, the training examples shown to raters, are dropped); images in ``Images/``.
* ``csv``: ``path,mos`` (optional ``split``); relative paths are resolved against the CSV's folder.

``images_dir`` overrides the image folder of any layout (relative to ``root``).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ftclip.data.images import IMAGE_EXTENSIONS
from ftclip.data.tables import read_table, resolve_csv
from ftclip.errors import ConfigError, DataError

__all__ = ["IqaSample", "IQA_FORMATS", "load_iqa_dataset", "list_images", "iqa_summary", "detect_iqa_format"]

IQA_FORMATS = ("koniq10k", "spaq", "kadid10k", "livec", "csv")

_ALIASES = {
    "koniq": "koniq10k",
    "koniq-10k": "koniq10k",
    "kadid": "kadid10k",
    "kadid-10k": "kadid10k",
    "live-c": "livec",
    "livechallenge": "livec",
    "clive": "livec",
}
_SHOW = 5
_KONIQ_CSVS = ("koniq10k_distributions_sets.csv", "koniq10k_scores_and_distributions.csv")
_KONIQ_IMAGE_DIRS = ("1024x768", "512x384")
_KONIQ_SPLITS = {
    "train": "training",
    "training": "training",
    "val": "validation",
    "validation": "validation",
    "test": "test",
}
_SPAQ_XLSX = Path("Annotations") / "MOS and Image attribute scores.xlsx"
_LIVEC_NAMES = Path("Data") / "AllImages_release.mat"
_LIVEC_MOS = Path("Data") / "AllMOS_release.mat"
_LIVEC_DROP = 7


@dataclass(frozen=True)
class IqaSample:
    """One image and its mean opinion score (higher = better, the data set's own scale)."""

    path: str
    mos: float


# --------------------------------------------------------------------------- helpers


def _few(items: Iterable[object]) -> str:
    items = list(items)
    text = ", ".join(str(i) for i in items[:_SHOW])
    return text + (f" and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


def _parse_mos(text: object) -> float | None:
    """A finite float, or None."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _images_dir(root: Path, images_dir: str | Path | None, defaults: Iterable[str], fmt: str) -> Path:
    if images_dir is not None:
        p = Path(images_dir).expanduser()
        p = p if p.is_absolute() else root / p
        if not p.is_dir():
            raise DataError(f"image folder {p} does not exist: check images_dir")
        return p
    defaults = list(defaults)
    for name in defaults:
        if (root / name).is_dir():
            return root / name
    raise DataError(
        f"{fmt} image folder not found in {root}: looked for {', '.join(d + '/' for d in defaults)}; "
        "extract the images there or pass images_dir"
    )


def _finish(samples: list[IqaSample], source: str) -> list[IqaSample]:
    if not samples:
        raise DataError(f"{source} lists no images: check the file (and the split)")
    missing = [s.path for s in samples if not os.path.isfile(s.path)]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(samples)} images listed in {source} do not exist: {_few(missing)}; "
            "check the image folder (images_dir)"
        )
    return samples


def _no_split(fmt: str, split: str | None) -> None:
    if split is not None:
        raise DataError(
            f"{fmt} has no official split (got split={split!r}): load it with split=None and split it yourself, "
            "or write a CSV with a split column"
        )


def _mos_error(source: Path, where: str, value: object) -> DataError:
    return DataError(f"{source} {where}: MOS {value!r} is not a finite number; fix or remove that row")


# --------------------------------------------------------------------------- layouts


def _load_koniq(root: Path, split: str | None, images_dir: str | Path | None) -> list[IqaSample]:
    table = next((root / name for name in _KONIQ_CSVS if (root / name).is_file()), None)
    if table is None:
        raise DataError(f"koniq10k score file not found in {root}: looked for {' or '.join(_KONIQ_CSVS)}")
    wanted: str | None = None
    if split is not None:
        wanted = _KONIQ_SPLITS.get(split.strip().lower())
        if wanted is None:
            raise DataError(f"koniq10k split {split!r} is unknown: use train, val or test (or None for all)")
    required = ["image_name", "MOS"] + (["set"] if wanted else [])
    if wanted and table.name != _KONIQ_CSVS[0]:
        raise DataError(
            f"koniq10k split={split!r} needs {_KONIQ_CSVS[0]} (with its set column) in {root}; found only {table.name}"
        )
    folder = _images_dir(root, images_dir, _KONIQ_IMAGE_DIRS, "koniq10k")
    samples = []
    for line, row in read_table(table, required):
        if wanted and row["set"].lower() != wanted:
            continue
        mos = _parse_mos(row["MOS"])
        if mos is None:
            raise _mos_error(table, f"line {line}", row["MOS"])
        samples.append(IqaSample(str(folder / row["image_name"]), mos))
    return _finish(samples, f"{table}" + (f" (set {wanted})" if wanted else ""))


def _load_spaq(root: Path, images_dir: str | Path | None) -> list[IqaSample]:
    xlsx = root / _SPAQ_XLSX
    if not xlsx.is_file():
        raise DataError(f"spaq score file {xlsx} not found: extract SPAQ's Annotations/ folder into {root}")
    try:
        import openpyxl
    except ImportError:
        raise DataError(f"reading {xlsx} needs the openpyxl package: pip install openpyxl (or ftclip[xlsx])") from None
    folder = _images_dir(root, images_dir, ("TestImage",), "spaq")
    try:
        book = openpyxl.load_workbook(xlsx, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises many types for damaged files
        raise DataError(f"spaq score file {xlsx} cannot be read ({type(err).__name__}: {err}): re-extract it") from None
    try:
        rows = list(book.worksheets[0].iter_rows(values_only=True))
    finally:
        book.close()
    header = [str(c).strip().lower() if c is not None else "" for c in (rows[0] if rows else ())]
    missing = [c for c in ("Image name", "MOS") if c.lower() not in header]
    if missing:
        raise DataError(f"{xlsx} lacks column(s) {', '.join(missing)} in its first row: is it SPAQ's annotation file?")
    name_col, mos_col = header.index("image name"), header.index("mos")
    samples = []
    for rownum, row in enumerate(rows[1:], start=2):
        name = row[name_col] if name_col < len(row) else None
        if name is None or str(name).strip() == "":
            continue
        value = row[mos_col] if mos_col < len(row) else None
        mos = _parse_mos(value)
        if mos is None:
            raise _mos_error(xlsx, f"row {rownum}", value)
        samples.append(IqaSample(str(folder / str(name).strip()), mos))
    return _finish(samples, str(xlsx))


def _load_kadid(root: Path, images_dir: str | Path | None) -> list[IqaSample]:
    table = root / "dmos.csv"
    if not table.is_file():
        raise DataError(f"kadid10k score file {table} not found: pass the folder that holds dmos.csv and images/")
    folder = _images_dir(root, images_dir, ("images",), "kadid10k")
    samples = []
    for line, row in read_table(table, ["dist_img", "dmos"]):
        mos = _parse_mos(row["dmos"])
        if mos is None:
            raise _mos_error(table, f"line {line}", row["dmos"])
        samples.append(IqaSample(str(folder / row["dist_img"]), mos))
    return _finish(samples, str(table))


def _mat_strings(value: object) -> list[str]:
    """Flatten a MATLAB cell array of strings (as scipy loads it) to a list of str."""
    import numpy as np

    out: list[str] = []
    if isinstance(value, str):
        out.append(value.strip())
    elif isinstance(value, np.ndarray):
        if value.dtype.kind in "US":
            out.extend(str(v).strip() for v in np.atleast_1d(value).ravel())
        else:
            for item in value.ravel(order="F"):
                out.extend(_mat_strings(item))
    else:
        raise DataError(f"unexpected entry {value!r} in a LIVE Challenge .mat file")
    return out


def _load_mat(path: Path, key: str) -> object:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(f"reading {path} needs the scipy package: pip install scipy") from None
    try:
        data = loadmat(path)
    except Exception as err:  # scipy raises several types for damaged files
        raise DataError(
            f"{path} cannot be read as a MATLAB file ({type(err).__name__}: {err}): re-extract it"
        ) from None
    if key not in data:
        found = [k for k in data if not k.startswith("__")]
        raise DataError(f"{path} has no variable {key} (found {_few(found)}): is it LIVE Challenge's file?")
    return data[key]


def _load_livec(root: Path, images_dir: str | Path | None) -> list[IqaSample]:
    import numpy as np

    names_file, mos_file = root / _LIVEC_NAMES, root / _LIVEC_MOS
    for f in (names_file, mos_file):
        if not f.is_file():
            raise DataError(f"livec file {f} not found: pass the LIVE Challenge folder (with Data/ and Images/)")
    folder = _images_dir(root, images_dir, ("Images",), "livec")
    names = _mat_strings(_load_mat(names_file, "AllImages_release"))
    mos = np.asarray(_load_mat(mos_file, "AllMOS_release"), dtype=np.float64).ravel()
    if len(names) != len(mos):
        raise DataError(
            f"{names_file} lists {len(names)} images but {mos_file} holds {len(mos)} scores: re-extract them"
        )
    samples = []
    for i, (name, value) in enumerate(zip(names[_LIVEC_DROP:], mos[_LIVEC_DROP:]), start=_LIVEC_DROP + 1):
        if not math.isfinite(value):
            raise _mos_error(mos_file, f"entry {i}", value)
        samples.append(IqaSample(str(folder / name), float(value)))
    return _finish(samples, str(mos_file))


def _load_csv(csv_file: Path, split: str | None) -> list[IqaSample]:
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
        mos = _parse_mos(row["mos"])
        if mos is None:
            errors.append(f"line {line}: MOS {row['mos']!r} is not a finite number")
            continue
        p = Path(row["path"]).expanduser()
        samples.append(IqaSample(os.path.normpath(p if p.is_absolute() else base / p), mos))
    if errors:
        raise DataError(f"IQA CSV {csv_file} has {len(errors)} bad rows: {'; '.join(errors[:_SHOW])}")
    return _finish(samples, f"IQA CSV {csv_file}" + (f" (split {split})" if split is not None else ""))


def detect_iqa_format(root: str | Path) -> str:
    """Which IQA layout ``root`` holds (DataError listing what was looked for if none)."""
    path = _check_root(root)
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise DataError(f"IQA data root {path} is a file, not a folder: pass the data set folder or a .csv file")
    if any((path / n).is_file() for n in _KONIQ_CSVS):
        return "koniq10k"
    if (path / _SPAQ_XLSX).is_file():
        return "spaq"
    if (path / "dmos.csv").is_file():
        return "kadid10k"
    if (path / _LIVEC_MOS).is_file():
        return "livec"
    if len(list(path.glob("*.csv"))) == 1:
        return "csv"
    raise DataError(
        f"no IQA data set layout found in {path}: looked for {' or '.join(_KONIQ_CSVS)} (koniq10k), "
        f"{_SPAQ_XLSX} (spaq), dmos.csv (kadid10k), {_LIVEC_MOS} (livec) or one CSV with path,mos columns"
    )


def _check_root(root: str | Path) -> Path:
    path = Path(root).expanduser().absolute()
    if not path.exists():
        raise DataError(f"IQA data root {path} does not exist: check the data set folder")
    return path


def load_iqa_dataset(
    format: str,
    root: str | Path,
    *,
    split: str | None = None,
    csv_path: str | Path | None = None,
    images_dir: str | Path | None = None,
) -> list[IqaSample]:
    """Load an IQA data set (``format`` in :data:`IQA_FORMATS` or ``"auto"``).

    ``split`` selects KonIQ-10k's official train/val/test set (or a CSV's ``split`` column);
    None loads everything. ``images_dir`` overrides the layout's image folder.
    """
    fmt = str(format).strip().lower()
    fmt = _ALIASES.get(fmt, fmt)
    if fmt not in IQA_FORMATS and fmt != "auto":
        raise ConfigError(f"IQA data format {format!r} is unknown: use auto or one of {', '.join(IQA_FORMATS)}")
    if csv_path is not None and fmt not in ("csv", "auto"):
        raise ConfigError(f"csv_path is only used with format csv (got format {fmt})")
    path = _check_root(root)
    if csv_path is not None:
        fmt = "csv"
    elif fmt == "auto":
        fmt = detect_iqa_format(path)
    if fmt == "csv":
        if images_dir is not None:
            raise ConfigError("images_dir is not used with format csv: write paths relative to the CSV's folder")
        return _load_csv(resolve_csv(path, csv_path, "IQA CSV"), split)
    if not path.is_dir():
        raise DataError(f"IQA data root {path} is not a folder: pass the {fmt} data set folder")
    if fmt == "koniq10k":
        return _load_koniq(path, split, images_dir)
    _no_split(fmt, split)
    if fmt == "spaq":
        return _load_spaq(path, images_dir)
    if fmt == "kadid10k":
        return _load_kadid(path, images_dir)
    return _load_livec(path, images_dir)


# --------------------------------------------------------------------------- folders and summary


def list_images(folder: str | Path, *, recursive: bool = True) -> list[str]:
    """Absolute paths of the images in ``folder`` (sorted; hidden files skipped).

    Raises :class:`DataError` if the folder is missing or holds no images.
    """
    root = Path(folder).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder: check the path")
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            os.path.join(dirpath, f)
            for f in filenames
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        )
        if not recursive:
            break
    if not found:
        where = "or its subfolders " if recursive else ""
        raise DataError(
            f"no images found in {root} {where}(looked for {', '.join(e[1:] for e in IMAGE_EXTENSIONS)}): "
            "check the path"
        )
    return sorted(found)


def iqa_summary(name: str, samples: list[IqaSample]) -> str:
    """One line: image count and MOS range, mean and standard deviation."""
    if not samples:
        return f"{name}: 0 images"
    values = [s.mos for s in samples]
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return (
        f"{name}: {len(values)} images, MOS {min(values):.4g}..{max(values):.4g} "
        f"(mean {statistics.fmean(values):.4g}, std {std:.4g})"
    )
