"""The synthetic few-shot set: deterministic bytes, the folder layout, real-word class names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ftclip.data.images import read_image
from ftclip.errors import FtclipError
from ftclip.tasks.fewshot.formats import load_classification_data
from ftclip.tasks.fewshot.protocol import few_shot_split
from ftclip.tasks.fewshot.synthetic import FEWSHOT_CLASSES, write_synthetic_fewshot

_SMALL = dict(num_classes=4, train_per_class=3, test_per_class=2, size=(32, 32))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_call_same_bytes_and_seed_matters(tmp_path: Path) -> None:
    a = _files(write_synthetic_fewshot(tmp_path / "a", **_SMALL))
    assert a == _files(write_synthetic_fewshot(tmp_path / "b", **_SMALL))
    assert a != _files(write_synthetic_fewshot(tmp_path / "c", **_SMALL, seed=1))
    more = _files(write_synthetic_fewshot(tmp_path / "d", **{**_SMALL, "num_classes": 6}))
    assert all(more[k] == v for k, v in a.items() if k != "synthetic.json")  # a class looks the same with more classes


def test_loads_as_the_folder_format(tmp_path: Path) -> None:
    root = write_synthetic_fewshot(tmp_path / "syn", **_SMALL)
    data = load_classification_data("auto", root)
    assert data.name == "folder"
    assert sorted(data.classnames) == sorted(c.name for c in FEWSHOT_CLASSES[:4])
    assert (len(data.train), len(data.test), data.val) == (12, 8, None)
    assert read_image(data.train[0][0]).shape == (32, 32, 3)
    split = few_shot_split(data, 2, seed=0)
    assert len(split.train) == 8 and len(split.val) == 4


def test_classes_differ_in_colour(tmp_path: Path) -> None:
    root = write_synthetic_fewshot(tmp_path / "syn", num_classes=3, train_per_class=4, test_per_class=1)
    means = {d.name: np.mean([read_image(p).reshape(-1, 3).mean(0) for p in sorted(d.glob("*.png"))], axis=0)
             for d in sorted((root / "train").iterdir())}
    assert means["red_circle"][0] > means["blue_square"][0] and means["blue_square"][2] > means["red_circle"][2]


def test_bad_arguments_and_existing_output(tmp_path: Path) -> None:
    with pytest.raises(FtclipError, match="num_classes=11"):
        write_synthetic_fewshot(tmp_path / "x", num_classes=11)
    with pytest.raises(FtclipError, match=r"size \(16, 16\) is too small"):
        write_synthetic_fewshot(tmp_path / "x", size=(16, 16))
    write_synthetic_fewshot(tmp_path / "y", **_SMALL)
    with pytest.raises(FtclipError, match="already holds train, test, synthetic.json"):
        write_synthetic_fewshot(tmp_path / "y", **_SMALL)
    write_synthetic_fewshot(tmp_path / "y", **{**_SMALL, "num_classes": 2}, overwrite=True)
    assert len(list((tmp_path / "y" / "train").iterdir())) == 2


def test_data_synth_fewshot_command(tmp_path: Path, capsys) -> None:
    from ftclip.cli import main

    out = tmp_path / "shapes"
    args = ["data", "synth-fewshot", str(out), "--classes", "3", "--train-per-class", "2", "--test-per-class", "1",
            "--size", "32", "48"]
    assert main(args) == 0
    data = load_classification_data("folder", out)
    assert (data.num_classes, len(data.train), len(data.test)) == (3, 6, 3)
    assert read_image(data.test[0][0]).shape == (32, 48, 3)
    assert main(args) == 2 and "already holds train, test, synthetic.json" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
