"""What every re-ID data format shares: samples, the data set, the format interface, small helpers.

A format is a :class:`ReidFormat` subclass in its own file, listed once in the registry
(``ftclip/tasks/reid/formats/__init__.py``). It says whether a folder holds its layout
(:meth:`~ReidFormat.detect`), what is missing when it does not (:meth:`~ReidFormat.missing_parts`),
and parses it into raw ``(train, query, gallery)`` samples (:meth:`~ReidFormat.parse`); the
registry relabels the training identities and validates the splits for every format alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ftclip.data.images import IMAGE_EXTENSIONS
from ftclip.errors import DataError

_SHOW = 5  # how many offending names an error message lists

Splits = tuple[list["ReidSample"], list["ReidSample"], list["ReidSample"]]


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
    vehicle: bool = False  # vehicles (VeRi-776): the prompt template says "vehicle"
    train_pids: tuple[int, ...] = ()  # the data set's own identity of each training label (label -> raw pid)

    def identity(self, label: int) -> int:
        """The data set's identity (raw pid) of training label ``label`` (the label itself if unknown)."""
        return self.train_pids[label] if 0 <= label < len(self.train_pids) else label

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


class ReidFormat:
    """One on-disk layout of a re-ID data set (subclass per format; see the module docstring)."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    vehicle: bool = False
    looked_for: str = ""  # what the layout looks like, for the "no layout found" message
    nested: bool = True  # auto-detection also looks one folder down

    def detect(self, folder: Path) -> int:
        """How well ``folder`` matches: 0 no, 1 the layout, 2 the layout and its file names."""
        raise NotImplementedError

    def missing_parts(self, folder: Path) -> list[str]:
        """What ``folder`` lacks for this layout (for error messages)."""
        raise NotImplementedError

    def split_sources(self, folder: Path) -> list[str]:
        """Where the train, query and gallery splits come from (for error messages)."""
        raise NotImplementedError

    def parse(self, folder: Path) -> Splits:
        """Raw samples (original pids) of ``folder``; junk/distractors already dropped from train/query."""
        raise NotImplementedError

    def resolve(self, root: Path, csv_path: str | Path | None) -> Path:
        """The folder (or file) to parse, given the data root (default: the root itself)."""
        return root

    def empty_split_hint(self) -> str:
        return ""


# --------------------------------------------------------------------------- helpers
def list_image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    try:
        with os.scandir(folder) as it:
            names = sorted(
                e.name for e in it if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            )
    except OSError as err:
        raise DataError(f"folder {folder} cannot be listed ({err}): check that it exists and is readable") from None
    return [folder / n for n in names]


def few(items: Iterable[object]) -> str:
    items = list(items)
    text = ", ".join(str(i) for i in items[:_SHOW])
    return text + (f" and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


def drop(samples: list[ReidSample], pids: frozenset[int]) -> list[ReidSample]:
    return [s for s in samples if s.pid not in pids]


def check_missing(paths: Iterable[str], source: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(
            f"{len(missing)} images listed in {source} do not exist: {few(missing)}; "
            "check that the images were extracted next to the list"
        )
