"""SPAQ: ``Annotations/MOS and Image attribute scores.xlsx`` (``Image name``, ``MOS`` 0-100; needs
``openpyxl``); images in ``TestImage/``."""

from __future__ import annotations

from pathlib import Path

from ftclip.errors import DataError
from ftclip.tasks.iqa.formats.base import IqaFormat, IqaSample, finish, image_folder, mos_error, no_split, parse_mos

_XLSX = Path("Annotations") / "MOS and Image attribute scores.xlsx"


class Spaq(IqaFormat):
    name = "spaq"
    looked_for = f"{_XLSX} (spaq)"

    def detect(self, root: Path) -> bool:
        return (root / _XLSX).is_file()

    def mos_scale(self, root: Path) -> tuple[float, float] | None:
        return (0.0, 100.0)

    def load(self, root: Path, split: str | None, images_dir: str | Path | None) -> list[IqaSample]:
        no_split(self.name, split)
        xlsx = root / _XLSX
        if not xlsx.is_file():
            raise DataError(f"spaq score file {xlsx} not found: extract SPAQ's Annotations/ folder into {root}")
        try:
            import openpyxl
        except ImportError:
            raise DataError(f"reading {xlsx} needs the openpyxl package: pip install openpyxl (or ftclip[xlsx])") from None
        folder = image_folder(root, images_dir, ("TestImage",), "spaq")
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
            mos = parse_mos(value)
            if mos is None:
                raise mos_error(xlsx, f"row {rownum}", value)
            samples.append(IqaSample(str(folder / str(name).strip()), mos))
        return finish(samples, str(xlsx))
