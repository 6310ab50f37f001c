"""KADID-10k: ``dmos.csv`` (``dist_img``, ``dmos`` 1-5, higher is better); images in ``images/``."""

from __future__ import annotations

from pathlib import Path

from ftclip.data.tables import read_table
from ftclip.errors import DataError
from ftclip.tasks.iqa.formats.base import IqaFormat, IqaSample, finish, image_folder, mos_error, no_split, parse_mos


class Kadid10k(IqaFormat):
    name = "kadid10k"
    aliases = ("kadid", "kadid-10k")
    looked_for = "dmos.csv (kadid10k)"

    def detect(self, root: Path) -> bool:
        return (root / "dmos.csv").is_file()

    def mos_scale(self, root: Path) -> tuple[float, float] | None:
        return (1.0, 5.0)

    def load(self, root: Path, split: str | None, images_dir: str | Path | None) -> list[IqaSample]:
        no_split(self.name, split)
        table = root / "dmos.csv"
        if not table.is_file():
            raise DataError(f"kadid10k score file {table} not found: pass the folder that holds dmos.csv and images/")
        folder = image_folder(root, images_dir, ("images",), "kadid10k")
        samples = []
        for line, row in read_table(table, ["dist_img", "dmos"]):
            mos = parse_mos(row["dmos"])
            if mos is None:
                raise mos_error(table, f"line {line}", row["dmos"])
            samples.append(IqaSample(str(folder / row["dist_img"]), mos))
        return finish(samples, str(table))
