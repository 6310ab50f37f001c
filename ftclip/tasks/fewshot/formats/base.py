"""What every few-shot data format shares: the loading options and the format interface.

A format is a :class:`FewshotFormat` subclass in its own file, listed once in the registry
(``ftclip/tasks/fewshot/formats/__init__.py``). It says whether a path holds its layout
(:meth:`~FewshotFormat.detect`) and parses it (:meth:`~FewshotFormat.load`) into a
:class:`~ftclip.tasks.fewshot.dataset.ClassificationData` through
:func:`~ftclip.tasks.fewshot.dataset.build_data`, which runs the checks every format shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftclip.tasks.fewshot.dataset import ClassificationData

__all__ = ["LoadOptions", "FewshotFormat"]


@dataclass(frozen=True)
class LoadOptions:
    csv_path: str | Path | None = None  # csv: the list file (default: the one .csv in root)
    dataset: str | None = None  # dassl: which data set (default: detected)
    test_fraction: float = 0.3  # folder tree / CSV without split column: share of each class held out as test
    seed: int = 0  # seed of that split (keep it fixed across the K-shot seeds)


class FewshotFormat:
    """One on-disk layout of a classification data set (subclass per format)."""

    name: str = ""
    looked_for: str = ""  # what the layout looks like, for the "no layout found" message

    def detect(self, root: Path) -> bool:
        """Whether ``root`` (a folder or a file) holds this layout."""
        raise NotImplementedError

    def load(self, root: Path, options: LoadOptions) -> ClassificationData:
        """Parse the data set at ``root``; one DataError/ConfigError naming the culprit on bad input."""
        raise NotImplementedError
