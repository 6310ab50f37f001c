"""LIVE Challenge: ``Data/AllImages_release.mat`` + ``Data/AllMOS_release.mat`` (the first 7 entries, the
training examples shown to raters, are dropped); images in ``Images/``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ftclip.errors import DataError
from ftclip.tasks.iqa.formats.base import IqaFormat, IqaSample, few, finish, image_folder, mos_error, no_split

_NAMES = Path("Data") / "AllImages_release.mat"
_MOS = Path("Data") / "AllMOS_release.mat"
_DROP = 7


def _mat_strings(value: object) -> list[str]:
    """Flatten a MATLAB cell array of strings (as scipy loads it) to a list of str."""
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
        raise DataError(f"{path} has no variable {key} (found {few(found)}): is it LIVE Challenge's file?")
    return data[key]


class LiveC(IqaFormat):
    name = "livec"
    aliases = ("live-c", "livechallenge", "clive")
    looked_for = f"{_MOS} (livec)"

    def detect(self, root: Path) -> bool:
        return (root / _MOS).is_file()

    def mos_scale(self, root: Path) -> tuple[float, float] | None:
        return (0.0, 100.0)

    def load(self, root: Path, split: str | None, images_dir: str | Path | None) -> list[IqaSample]:
        no_split(self.name, split)
        names_file, mos_file = root / _NAMES, root / _MOS
        for f in (names_file, mos_file):
            if not f.is_file():
                raise DataError(f"livec file {f} not found: pass the LIVE Challenge folder (with Data/ and Images/)")
        folder = image_folder(root, images_dir, ("Images",), "livec")
        names = _mat_strings(_load_mat(names_file, "AllImages_release"))
        mos = np.asarray(_load_mat(mos_file, "AllMOS_release"), dtype=np.float64).ravel()
        if len(names) != len(mos):
            raise DataError(
                f"{names_file} lists {len(names)} images but {mos_file} holds {len(mos)} scores: re-extract them"
            )
        samples = []
        for i, (name, value) in enumerate(zip(names[_DROP:], mos[_DROP:]), start=_DROP + 1):
            if not math.isfinite(value):
                raise mos_error(mos_file, f"entry {i}", value)
            samples.append(IqaSample(str(folder / name), float(value)))
        return finish(samples, str(mos_file))
