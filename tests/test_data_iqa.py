"""IQA layouts (KonIQ-10k, SPAQ, KADID-10k, LIVE Challenge, CSV), list_images and the summary."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftclip.data.images import list_images
from ftclip.tasks.iqa.formats import IqaSample, detect_iqa_format, iqa_summary, load_iqa_dataset
from ftclip.errors import ConfigError, DataError

_JPEG = io.BytesIO()
Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(_JPEG, format="JPEG")


def _write(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(_JPEG.getvalue())


_KONIQ_HEADER = "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore,set\n"


def _koniq(root: Path, images: str = "1024x768") -> Path:
    rows = [("10004473376.jpg", 3.9, "training"), ("10007357496.jpg", 3.2, "training"),
            ("10007903636.jpg", 2.4, "validation"), ("10009096245.jpg", 1.7, "test")]  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    (root / "koniq10k_distributions_sets.csv").write_text(
        _KONIQ_HEADER + "".join(f'"{n}",0,1,2,3,4,10,{m},0.5,50.0,{s}\n' for n, m, s in rows)
    )
    _write(root / images, [n for n, _, _ in rows])
    return root


def test_koniq_splits_and_image_folders(tmp_path: Path) -> None:
    root = _koniq(tmp_path / "koniq")
    everything = load_iqa_dataset("koniq10k", root)
    assert [s.mos for s in everything] == [3.9, 3.2, 2.4, 1.7]
    assert everything[0] == IqaSample(str(root / "1024x768" / "10004473376.jpg"), 3.9)
    assert len(load_iqa_dataset("koniq10k", root, split="train")) == 2
    assert [s.mos for s in load_iqa_dataset("koniq10k", root, split="validation")] == [2.4]
    assert [s.mos for s in load_iqa_dataset("koniq10k", root, split="test")] == [1.7]
    with pytest.raises(DataError, match="split 'dev' is unknown"):
        load_iqa_dataset("koniq10k", root, split="dev")
    # 512x384 is used when 1024x768 is absent; 1024x768 wins when both exist; images_dir overrides
    small = _koniq(tmp_path / "small", images="512x384")
    assert "512x384" in load_iqa_dataset("koniq10k", small)[0].path
    _write(root / "512x384", ["10004473376.jpg"])
    assert "1024x768" in load_iqa_dataset("koniq10k", root)[0].path
    _write(root / "mine", ["10004473376.jpg", "10007357496.jpg"])
    assert "mine" in load_iqa_dataset("koniq10k", root, split="train", images_dir="mine")[0].path


def test_koniq_scores_file_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "k"
    _write(root / "1024x768", ["a.jpg", "b.jpg"])
    (root / "koniq10k_scores_and_distributions.csv").write_text(
        "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore\n"
        "a.jpg,0,0,0,0,0,0,3.5,0.1,60\n"
        "b.jpg,0,0,0,0,0,0,n/a,0.1,60\n"
    )
    with pytest.raises(DataError, match=r"koniq10k_scores_and_distributions.csv line 3: MOS 'n/a'"):
        load_iqa_dataset("koniq10k", root)
    with pytest.raises(DataError, match="needs koniq10k_distributions_sets.csv"):
        load_iqa_dataset("koniq10k", root, split="test")
    (tmp_path / "noimages").mkdir()
    (tmp_path / "noimages" / "koniq10k_distributions_sets.csv").write_text(_KONIQ_HEADER)
    with pytest.raises(DataError, match=r"looked for 1024x768/, 512x384/"):
        load_iqa_dataset("koniq10k", tmp_path / "noimages")


def test_spaq(tmp_path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    root = tmp_path / "SPAQ"
    (root / "Annotations").mkdir(parents=True)
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"])
    sheet.append(["00001.jpg", 42.5, 1, 1, 1, 1, 1])
    sheet.append(["00002.jpg", 80, 1, 1, 1, 1, 1])
    book.save(root / "Annotations" / "MOS and Image attribute scores.xlsx")
    _write(root / "TestImage", ["00001.jpg", "00002.jpg"])
    samples = load_iqa_dataset("spaq", root)
    assert [(Path(s.path).name, s.mos) for s in samples] == [("00001.jpg", 42.5), ("00002.jpg", 80.0)]
    assert detect_iqa_format(root) == "spaq"
    sheet.append(["00003.jpg", "bad"])
    book.save(root / "Annotations" / "MOS and Image attribute scores.xlsx")
    with pytest.raises(DataError, match=r"row 4: MOS 'bad'"):
        load_iqa_dataset("spaq", root)
    with pytest.raises(DataError, match="no official split"):
        load_iqa_dataset("spaq", root, split="train")


def test_kadid(tmp_path: Path) -> None:
    root = tmp_path / "kadid10k"
    _write(root / "images", ["I01_01_01.png", "I01_01_05.png"])
    (root / "dmos.csv").write_text(
        "dist_img,ref_img,dmos,var\nI01_01_01.png,I01.png,4.57,0.496\nI01_01_05.png,I01.png,2.1,0.7\n"
    )
    samples = load_iqa_dataset("auto", root)
    assert [(Path(s.path).name, s.mos) for s in samples] == [("I01_01_01.png", 4.57), ("I01_01_05.png", 2.1)]
    (root / "dmos.csv").write_text("dist_img,ref_img,var\nI01_01_01.png,I01.png,0.4\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) dmos"):
        load_iqa_dataset("kadid10k", root)


def test_livec_drops_first_seven(tmp_path: Path) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    root = tmp_path / "ChallengeDB_release"
    (root / "Data").mkdir(parents=True)
    names = [f"trainingImages/t{i}.bmp" for i in range(1, 8)] + ["1000.JPG", "1001.JPG", "1002.JPG"]
    cell = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        cell[i, 0] = np.array([n])
    scipy_io.savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": cell})
    mos = np.arange(len(names), dtype=np.float64)[None, :] * 10.0
    scipy_io.savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos})
    _write(root / "Images", names)
    samples = load_iqa_dataset("livec", root)
    assert [(Path(s.path).name, s.mos) for s in samples] == [("1000.JPG", 70.0), ("1001.JPG", 80.0), ("1002.JPG", 90.0)]
    assert detect_iqa_format(root) == "livec"


def test_csv_layout_and_errors(tmp_path: Path) -> None:
    _write(tmp_path / "img", ["a.jpg", "b.jpg"])
    (tmp_path / "scores.csv").write_text("path,mos,split\nimg/a.jpg,0.75,train\nimg/b.jpg,12,test\n")
    samples = load_iqa_dataset("csv", tmp_path / "scores.csv")
    assert samples == [
        IqaSample(str(tmp_path / "img" / "a.jpg"), 0.75),
        IqaSample(str(tmp_path / "img" / "b.jpg"), 12.0),
    ]
    assert load_iqa_dataset("csv", tmp_path, split="test") == samples[1:]
    assert load_iqa_dataset("auto", tmp_path, csv_path="scores.csv") == samples
    cases = {
        "path,score\nimg/a.jpg,1\n": r"lacks column\(s\) mos",
        "path,mos\nimg/a.jpg,1\nimg/b.jpg,good\n": r"line 3: MOS 'good' is not a finite number",
        "path,mos\nimg/a.jpg,nan\n": r"line 2: MOS 'nan'",
        "path,mos\nimg/missing.jpg,1\n": r"1 of 1 images listed in .* do not exist: .*missing.jpg",
        "path,mos\n": r"lists no images",
    }
    for body, pattern in cases.items():
        (tmp_path / "scores.csv").write_text(body)
        with pytest.raises(DataError, match=pattern) as err:
            load_iqa_dataset("csv", tmp_path / "scores.csv")
        assert "scores.csv" in str(err.value)
    (tmp_path / "scores.csv").write_text("path,mos\nimg/a.jpg,1\n")
    with pytest.raises(DataError, match="no split column"):
        load_iqa_dataset("csv", tmp_path / "scores.csv", split="train")


def test_root_and_format_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_iqa_dataset("kadid10k", tmp_path / "gone")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no IQA data set layout found .*dmos.csv"):
        load_iqa_dataset("auto", tmp_path / "empty")
    with pytest.raises(DataError, match=r"dmos.csv not found"):
        load_iqa_dataset("kadid10k", tmp_path / "empty")
    with pytest.raises(ConfigError, match="'tid2013' is unknown"):
        load_iqa_dataset("tid2013", tmp_path / "empty")


def test_list_images(tmp_path: Path) -> None:
    _write(tmp_path, ["b.JPG", "a.png", "sub/c.webp", "sub/deep/d.tiff", ".hidden.jpg", "sub/x.bmp"])
    (tmp_path / "notes.txt").write_text("x")
    found = list_images(tmp_path)
    assert found == sorted(found)
    assert [Path(p).relative_to(tmp_path).as_posix() for p in found] == [
        "a.png", "b.JPG", "sub/c.webp", "sub/deep/d.tiff", "sub/x.bmp"
    ]  # fmt: skip
    assert [Path(p).name for p in list_images(tmp_path, recursive=False)] == ["a.png", "b.JPG"]
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no images found"):
        list_images(tmp_path / "none")
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "absent")


def test_iqa_summary() -> None:
    text = iqa_summary("koniq10k", [IqaSample("a", 1.0), IqaSample("b", 3.0)])
    assert text == "koniq10k: 2 images, MOS 1..3 (mean 2, std 1)"
    assert iqa_summary("x", []) == "x: 0 images"
