"""Re-id layouts (Market-1501, DukeMTMC-reID, MSMT17, VeRi-776, CSV): parsing, detection, errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftclip.tasks.reid.formats import REID_FORMATS, ReidSample, detect_reid_format, load_reid_dataset
from ftclip.errors import ConfigError, DataError

_JPEG = io.BytesIO()
Image.fromarray(np.full((8, 4, 3), 128, np.uint8)).save(_JPEG, format="JPEG")


def _write(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(_JPEG.getvalue())


def _market(root: Path) -> Path:
    _write(
        root / "bounding_box_train",
        ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s2_012345_02.jpg",
         "0000_c1s1_000001_01.jpg", "-1_c1s1_000002_01.jpg"],
    )  # fmt: skip
    _write(root / "query", ["0003_c1s1_000101_00.jpg", "0005_c2s1_000201_00.jpg"])
    _write(
        root / "bounding_box_test",
        ["0003_c6s1_000301_01.jpg", "0005_c4s2_000401_02.jpg", "0000_c1s1_000501_01.jpg", "-1_c2s1_000601_01.jpg"],
    )
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")
    return root


def _duke(root: Path) -> Path:
    _write(root / "bounding_box_train", ["0001_c2_f0046182.jpg", "0001_c3_f0046290.jpg", "0005_c8_f0000001.jpg"])
    _write(root / "query", ["0010_c1_f0001000.jpg"])
    _write(root / "bounding_box_test", ["0010_c5_f0002000.jpg", "0011_c5_f0003000.jpg"])
    return root


def _veri(root: Path) -> Path:
    _write(root / "image_train", ["0001_c001_00016450_0.jpg", "0001_c012_00016455_0.jpg", "0003_c020_00000001_1.jpg"])
    _write(root / "image_query", ["0002_c002_00030600_0.jpg"])
    _write(root / "image_test", ["0002_c005_00030605_1.jpg", "0004_c005_00001000_0.jpg"])
    return root


def _msmt(root: Path) -> Path:
    lists = {
        "list_train.txt": (
            "train", ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0001/0001_011_15_0303noon_0001_1.jpg 1"]
        ),
        "list_val.txt": ("train", ["0000/0000_002_07_0303morning_0030_0.jpg 0"]),
        "list_query.txt": ("test", ["0000/0000_000_03_0303afternoon_0001_0.jpg 0"]),
        "list_gallery.txt": (
            "test", ["0000/0000_005_09_0303afternoon_0100_0.jpg 0", "0001/0001_001_02_0303noon_0001_0.jpg 1"]
        ),
    }
    for name, (folder, lines) in lists.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("\n".join(lines) + "\n")
        _write(root / folder, [line.split()[0] for line in lines])
    return root


def test_market_parsing_relabel_and_junk(tmp_path: Path) -> None:
    ds = load_reid_dataset("market1501", _market(tmp_path / "Market-1501"))
    assert ds.name == "market1501"
    # train: junk -1 and distractor 0 skipped; pids 2, 7 -> 0, 1; cameras zero-based
    assert [(Path(s.path).name, s.pid, s.camid) for s in ds.train] == [
        ("0002_c1s1_000451_03.jpg", 0, 0),
        ("0002_c2s1_000551_01.jpg", 0, 1),
        ("0007_c3s2_012345_02.jpg", 1, 2),
    ]
    assert [(s.pid, s.camid) for s in ds.query] == [(3, 0), (5, 1)]
    assert sorted(s.pid for s in ds.gallery) == [-1, 0, 3, 5]  # junk and distractor kept
    assert ds.num_train_pids == 2 and ds.num_cameras == 6
    assert all(Path(s.path).is_absolute() and Path(s.path).is_file() for s in ds.train + ds.query + ds.gallery)
    text = ds.summary()
    assert "train" in text and "gallery" in text and "1 junk" in text
    assert isinstance(ds.train[0], ReidSample)


def test_duke_veri_parsing(tmp_path: Path) -> None:
    duke = load_reid_dataset("dukemtmc", _duke(tmp_path / "duke"))
    assert [(s.pid, s.camid) for s in duke.train] == [(0, 1), (0, 2), (1, 7)]
    assert duke.num_cameras == 8 and duke.query[0].pid == 10
    veri = load_reid_dataset("veri776", _veri(tmp_path / "veri"))
    assert [(s.pid, s.camid) for s in veri.train] == [(0, 0), (0, 11), (1, 19)]
    assert veri.num_cameras == 20 and veri.num_train_pids == 2


def test_msmt_merges_val_and_reads_camera(tmp_path: Path) -> None:
    ds = load_reid_dataset("msmt17", _msmt(tmp_path / "MSMT17_V1"))
    assert len(ds.train) == 3  # list_train + list_val, as the CLIP-ReID reference does
    assert [(s.pid, s.camid) for s in ds.train] == [(0, 0), (1, 14), (0, 6)]
    assert [(s.pid, s.camid) for s in ds.query] == [(0, 2)]
    assert ds.gallery[0].path.endswith("test/0000/0000_005_09_0303afternoon_0100_0.jpg")


def test_msmt_errors_name_line_and_missing_files(tmp_path: Path) -> None:
    root = _msmt(tmp_path / "m")
    (root / "list_query.txt").write_text("0000/0000_000_03_0303afternoon_0001_0.jpg 0\nbroken-line\n")
    with pytest.raises(DataError, match=r"list_query.txt line 2"):
        load_reid_dataset("msmt17", root)
    root = _msmt(tmp_path / "m2")
    (root / "test" / "0001" / "0001_001_02_0303noon_0001_0.jpg").unlink()
    with pytest.raises(DataError, match=r"1 images listed in .*list_gallery.txt do not exist: .*0001_001_02"):
        load_reid_dataset("msmt17", root)


def test_csv_layout(tmp_path: Path) -> None:
    _write(tmp_path / "imgs", ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"])
    absolute = tmp_path / "imgs" / "e.jpg"
    (tmp_path / "reid.csv").write_text(
        "path,pid,camid,split\n"
        "imgs/a.jpg,17,0,train\n"
        "imgs/b.jpg,4,1,train\n"
        "imgs/c.jpg,9,0,query\n"
        "imgs/d.jpg,9,2,gallery\n"
        f"{absolute},-1,1,gallery\n"
    )
    for ds in (
        load_reid_dataset("csv", tmp_path / "reid.csv"),
        load_reid_dataset("csv", tmp_path),
        load_reid_dataset("csv", tmp_path, csv_path="reid.csv"),
        load_reid_dataset("auto", tmp_path / "reid.csv"),
    ):
        assert ds.name == "csv"
        assert [(Path(s.path).name, s.pid, s.camid) for s in ds.train] == [("a.jpg", 1, 0), ("b.jpg", 0, 1)]
        assert ds.gallery[0].path == str(tmp_path / "imgs" / "d.jpg")
        assert [s.pid for s in ds.gallery] == [9, -1]


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ("path,pid,split\nx.jpg,1,train\n", r"lacks column\(s\) camid"),
        ("path,pid,camid,split\nimgs/a.jpg,one,0,train\n", r"line 2: pid 'one' is not an integer"),
        ("path,pid,camid,split\nimgs/a.jpg,1,0,train\nimgs/a.jpg,1,0,test\n", r"line 3: split 'test' must be one of"),
        ("path,pid,camid,split\nimgs/a.jpg,1,-3,train\n", r"line 2: camid -3"),
        ("path,pid,camid,split\nimgs/zzz.jpg,1,0,train\n", r"do not exist: .*zzz.jpg"),
    ],
)
def test_csv_errors(tmp_path: Path, body: str, pattern: str) -> None:
    _write(tmp_path / "imgs", ["a.jpg"])
    (tmp_path / "bad.csv").write_text(body)
    with pytest.raises(DataError, match=pattern) as err:
        load_reid_dataset("csv", tmp_path / "bad.csv")
    assert "bad.csv" in str(err.value)


def test_auto_detection_and_nested_root(tmp_path: Path) -> None:
    assert detect_reid_format(_market(tmp_path / "a"))[0] == "market1501"
    assert detect_reid_format(_duke(tmp_path / "b"))[0] == "dukemtmc"
    assert detect_reid_format(_veri(tmp_path / "c"))[0] == "veri776"
    assert detect_reid_format(_msmt(tmp_path / "d"))[0] == "msmt17"
    # the data set folder one level down (as the archives extract) is found too
    _market(tmp_path / "outer" / "Market-1501-v15.09.15")
    assert load_reid_dataset("auto", tmp_path / "outer").root.endswith("Market-1501-v15.09.15")
    assert load_reid_dataset("market1501", tmp_path / "outer").num_train_pids == 2
    ds = load_reid_dataset("auto", _msmt(tmp_path / "m" / "MSMT17_V1").parent)
    assert ds.name == "msmt17"
    # several data sets side by side: ask which
    with pytest.raises(DataError, match="several"):
        load_reid_dataset("auto", tmp_path)


def test_missing_root_and_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist") as err:
        load_reid_dataset("market1501", tmp_path / "nowhere")
    assert "nowhere" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no re-id data set layout found") as err:
        load_reid_dataset("auto", tmp_path / "empty")
    for looked_for in ("bounding_box_train", "image_train", "list_train.txt", "CSV"):
        assert looked_for in str(err.value)
    _write(tmp_path / "half" / "query", ["0001_c1s1_000001_01.jpg"])
    with pytest.raises(DataError, match=r"missing bounding_box_train/, bounding_box_test/"):
        load_reid_dataset("market1501", tmp_path / "half")


def test_wrong_names_empty_split_and_no_overlap(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not named like market1501 .*0001_c2_f0046182.jpg"):
        load_reid_dataset("market1501", _duke(tmp_path / "duke"))
    root = _market(tmp_path / "empty_query")
    for f in (root / "query").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"query split of market1501 data is empty: .*empty_query/query holds no"):
        load_reid_dataset("market1501", root)
    root = _market(tmp_path / "disjoint")
    _write(root / "query", ["0099_c1s1_000001_01.jpg"])
    for name in ("0003_c1s1_000101_00.jpg", "0005_c2s1_000201_00.jpg"):
        (root / "query" / name).unlink()
    with pytest.raises(DataError, match=r"share no identity"):
        load_reid_dataset("market1501", root)


def test_bad_format_arguments(tmp_path: Path) -> None:
    root = _market(tmp_path / "m")
    with pytest.raises(ConfigError, match=r"'cuhk03' is unknown"):
        load_reid_dataset("cuhk03", root)
    with pytest.raises(ConfigError, match=r"csv_path is only used with format csv"):
        load_reid_dataset("market1501", root, csv_path="x.csv")
    assert load_reid_dataset("Market-1501", root).name == "market1501"
    assert set(REID_FORMATS) == {"market1501", "dukemtmc", "msmt17", "veri776", "csv"}
