"""Re-ID layouts of three image folders whose file names carry the identity and camera.

Market-1501 and DukeMTMC-reID (``bounding_box_train/``, ``query/``, ``bounding_box_test/``) and
VeRi-776 (``image_train/``, ``image_query/``, ``image_test/``) differ only in their folder and file
names and in which identities are junk or distractors; each is one :class:`FolderLayout`.
"""

from __future__ import annotations

import re
from pathlib import Path

from ftclip.errors import DataError
from ftclip.tasks.reid.formats.base import ReidFormat, ReidSample, Splits, drop, few, list_image_files


class FolderLayout(ReidFormat):
    """Train/query/gallery folders; ``pattern`` group 1 = pid, group 2 = 1-based camera."""

    dirs: tuple[str, str, str] = ("", "", "")
    pattern: re.Pattern[str] = re.compile("")
    example: str = ""
    skip_pids: frozenset[int] = frozenset({-1})  # dropped from train and query; the gallery keeps everything

    def detect(self, folder: Path) -> int:
        if not all((folder / d).is_dir() for d in self.dirs):
            return 0
        names = [path.name for d in self.dirs for path in list_image_files(folder / d)[:20]]
        return 2 if any(self.pattern.match(name) for name in names) else 1

    def missing_parts(self, folder: Path) -> list[str]:
        return [d + "/" for d in self.dirs if not (folder / d).is_dir()]

    def split_sources(self, folder: Path) -> list[str]:
        return [str(folder / d) for d in self.dirs]

    def parse(self, folder: Path) -> Splits:
        train, query, gallery = (self._parse_folder(folder / d) for d in self.dirs)
        return drop(train, self.skip_pids), drop(query, self.skip_pids), gallery

    def _parse_folder(self, folder: Path) -> list[ReidSample]:
        samples: list[ReidSample] = []
        bad: list[str] = []
        for path in list_image_files(folder):
            m = self.pattern.match(path.name)
            if m is None or int(m.group(2)) < 1:
                bad.append(path.name)
                continue
            samples.append(ReidSample(str(path), int(m.group(1)), int(m.group(2)) - 1))
        if bad:
            raise DataError(
                f"{len(bad)} files in {folder} are not named like {self.name} images ({self.example}): {few(bad)}; "
                f"rename or remove them{self.rename_hint}"
            )
        return samples

    rename_hint = ""


_BBOX_DIRS = ("bounding_box_train", "query", "bounding_box_test")
_BBOX_LOOKED_FOR = "Market-1501 / DukeMTMC-reID (bounding_box_train/, query/, bounding_box_test/)"


class Market1501(FolderLayout):
    name = "market1501"
    aliases = ("market", "market-1501")
    dirs = _BBOX_DIRS
    pattern = re.compile(r"^(-?\d+)_c(\d+)s\d+_")
    example = "PPPP_cXsY_FFFFFF_NN.jpg, e.g. 0002_c1s1_000451_03.jpg"
    skip_pids = frozenset({-1, 0})  # junk and the distractors (pid 0000), as the CLIP-ReID reference does
    looked_for = _BBOX_LOOKED_FOR
    rename_hint = " (use format auto to detect the layout)"

    def empty_split_hint(self) -> str:
        return " (junk pid -1 and distractor pid 0 are not counted)"


class DukeMTMC(FolderLayout):
    name = "dukemtmc"
    aliases = ("duke", "dukemtmc-reid", "dukemtmcreid")
    dirs = _BBOX_DIRS
    pattern = re.compile(r"^(-?\d+)_c(\d+)_f\d+")
    example = "PPPP_cX_fFFFFFFF.jpg, e.g. 0001_c2_f0046182.jpg"
    looked_for = _BBOX_LOOKED_FOR
    rename_hint = " (use format auto to detect the layout)"


class VeRi776(FolderLayout):
    name = "veri776"
    aliases = ("veri", "veri-776")
    vehicle = True
    dirs = ("image_train", "image_query", "image_test")
    pattern = re.compile(r"^(-?\d+)_c(\d+)_")
    example = "PPPP_cCCC_FFFFFFFF_N.jpg, e.g. 0001_c001_00016450_0.jpg"
    looked_for = "VeRi-776 (image_train/, image_query/, image_test/)"
