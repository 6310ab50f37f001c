"""KonIQ-10k: ``koniq10k_distributions_sets.csv`` (its ``set`` column gives the official
training/validation/test split; its ``MOS`` is on 0-100) or ``koniq10k_scores_and_distributions.csv``
(its ``MOS`` is the mean 1-5 rating); images in ``1024x768/`` (else ``512x384/``)."""

from __future__ import annotations

from pathlib import Path

from ftclip.data.tables import read_table
from ftclip.errors import DataError
from ftclip.tasks.iqa.formats.base import IqaFormat, IqaSample, finish, image_folder, mos_error, parse_mos

CSVS = ("koniq10k_distributions_sets.csv", "koniq10k_scores_and_distributions.csv")
_IMAGE_DIRS = ("1024x768", "512x384")
_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation",
           "test": "test"}
#: MOS scale per score file: CLIP-IQA+ trains on the 0-100 MOS / 100; the other file has mean 1-5 ratings.
_SCALES = {CSVS[0]: (0.0, 100.0), CSVS[1]: (1.0, 5.0)}


def _table(root: Path) -> Path | None:
    return next((root / name for name in CSVS if (root / name).is_file()), None)


class Koniq10k(IqaFormat):
    name = "koniq10k"
    aliases = ("koniq", "koniq-10k")
    looked_for = f"{' or '.join(CSVS)} (koniq10k)"
    has_split = True

    def detect(self, root: Path) -> bool:
        return _table(root) is not None

    def mos_scale(self, root: Path) -> tuple[float, float] | None:
        table = _table(root)
        return _SCALES[table.name] if table is not None else None

    def load(self, root: Path, split: str | None, images_override: str | Path | None) -> list[IqaSample]:
        table = _table(root)
        if table is None:
            raise DataError(f"koniq10k score file not found in {root}: looked for {' or '.join(CSVS)}")
        wanted: str | None = None
        if split is not None:
            wanted = _SPLITS.get(split.strip().lower())
            if wanted is None:
                raise DataError(f"koniq10k split {split!r} is unknown: use train, val or test (or None for all)")
        required = ["image_name", "MOS"] + (["set"] if wanted else [])
        if wanted and table.name != CSVS[0]:
            raise DataError(
                f"koniq10k split={split!r} needs {CSVS[0]} (with its set column) in {root}; found only {table.name}"
            )
        folder = image_folder(root, images_override, _IMAGE_DIRS, "koniq10k")
        samples = []
        for line, row in read_table(table, required):
            if wanted and row["set"].lower() != wanted:
                continue
            mos = parse_mos(row["MOS"])
            if mos is None:
                raise mos_error(table, f"line {line}", row["MOS"])
            samples.append(IqaSample(str(folder / row["image_name"]), mos))
        return finish(samples, f"{table}" + (f" (set {wanted})" if wanted else ""))
