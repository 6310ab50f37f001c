"""Few-shot data formats: folder, csv, dassl and the classnames file; every bad input is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fit_helpers import image, image_tree

from ftclip.errors import ConfigError, DataError
from ftclip.tasks.fewshot.formats.dassl import DASSL_SETS
from ftclip.tasks.fewshot.formats import LoadOptions, detect_format, load_classification_data
from ftclip.tasks.fewshot.templates import COOP_TEMPLATES


def _names(items, data) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path, label in items:
        out.setdefault(data.class_keys[label], []).append(Path(path).name)
    return out


# --------------------------------------------------------------------------- folder


def test_folder_layout_classes_splits_and_names(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "ds", {
        "train": {"red_circle": 3, "blue_square": 2},
        "val": {"red_circle": 1},
        "test": {"red_circle": 2, "blue_square": 1},
    })
    (root / "train" / "red_circle" / "notes.txt").write_text("not an image")
    (root / "metadata.csv").write_text("id,source\n1,web\n")  # not a path,label list
    data = load_classification_data("auto", root)
    assert detect_format(root) == "folder"
    assert data.class_keys == ("blue_square", "red_circle")  # sorted folder names
    assert data.classnames == ("blue square", "red circle")  # underscores read as spaces
    assert len(data.train) == 5 and len(data.val) == 1 and len(data.test) == 3
    assert _names(data.test, data) == {"blue_square": ["blue_square_0.png"], "red_circle": ["red_circle_0.png", "red_circle_1.png"]}
    assert all(Path(p).is_absolute() for p, _ in data.train)
    assert data.templates == ("a photo of a {}.",)


def test_folder_single_tree_split_is_seeded_and_stratified(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "ds", {"": {"cat": 10, "dog": 5, "owl": 2}})
    opts = LoadOptions(test_fraction=0.3, seed=1)
    a = load_classification_data("folder", root, options=opts)
    b = load_classification_data("folder", root, options=opts)
    assert a == b
    per_class = {k: len(v) for k, v in _names(a.test, a).items()}
    assert per_class == {"cat": 3, "dog": 2, "owl": 1}  # round(n * 0.3), half up, clamped to 1..n-1
    assert a.val is None
    assert not set(a.train) & set(a.test) and len(a.train) + len(a.test) == 17
    other = load_classification_data("folder", root, options=LoadOptions(test_fraction=0.3, seed=2))
    assert other.test != a.test


def test_folder_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "ds", {"train": {"cat": 2}, "test": {"cat": 1}})
    (root / "train" / "dog").mkdir()
    with pytest.raises(DataError, match=r"class folder .*train/dog holds no images"):
        load_classification_data("folder", root)


def test_folder_test_class_absent_from_train(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "ds", {"train": {"cat": 2}, "test": {"cat": 1, "dog": 1}})
    with pytest.raises(DataError, match=r"test class folder\(s\) 'dog' have no folder in .*train"):
        load_classification_data("folder", root)


def test_folder_duplicate_class_names(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "ds", {"train": {"red_circle": 1, "red circle": 1}, "test": {"red_circle": 1}})
    with pytest.raises(DataError, match=r"classes 'red circle', 'red_circle' all get the class name 'red circle'"):
        load_classification_data("folder", root)


def test_folder_train_without_test(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "ds", {"train": {"cat": 2}})
    with pytest.raises(DataError, match="has train/ but no test/"):
        load_classification_data("folder", root)


def test_folder_single_tree_needs_two_images_per_class(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "ds", {"": {"cat": 3, "dog": 1}})
    with pytest.raises(DataError, match=r"class 'dog' has 1 image\(s\)"):
        load_classification_data("folder", root)
    with pytest.raises(ConfigError, match="data.test_fraction"):
        load_classification_data("folder", root, options=LoadOptions(test_fraction=1.0))


# --------------------------------------------------------------------------- csv


def _csv(path: Path, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_csv_relative_paths_labels_and_splits(tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        image(tmp_path / "ds" / "img" / f"{name}.png")
    abs_d = tmp_path / "ds" / "img" / "d.png"
    _csv(tmp_path / "ds" / "list.csv", [
        "path,label,split", "img/a.png,golden retriever,train", "img/b.png,tabby cat,TRAIN",
        "img/c.png,tabby cat,test", f"{abs_d},golden retriever,val",
    ])
    data = load_classification_data("auto", tmp_path / "ds")
    assert data.name == "csv"
    assert data.class_keys == data.classnames == ("golden retriever", "tabby cat")  # labels as written, sorted
    assert [(Path(p).name, y) for p, y in data.train] == [("a.png", 0), ("b.png", 1)]
    assert [(Path(p).name, y) for p, y in data.val] == [("d.png", 0)]
    assert [(Path(p).name, y) for p, y in data.test] == [("c.png", 1)]


def test_csv_without_split_column_is_split_by_fraction(tmp_path: Path) -> None:
    rows = ["path,label"] + [f"{c}{i}.png,{c}" for c in "xy" for i in range(4)]
    for row in rows[1:]:
        image(tmp_path / row.split(",")[0])
    data = load_classification_data("csv", _csv(tmp_path / "l.csv", rows), options=LoadOptions(test_fraction=0.5))
    assert len(data.test) == 4 and len(data.train) == 4 and data.val is None


def test_csv_unknown_labels_are_named_with_lines(tmp_path: Path) -> None:
    for n in "abc":
        image(tmp_path / f"{n}.png")
    path = _csv(tmp_path / "l.csv", ["path,label,split", "a.png,cat,train", "b.png,cat,test", "c.png,dgo,test"])
    with pytest.raises(DataError, match=r"labels no train row has: 'dgo' \(line 4\)"):
        load_classification_data("csv", path)


def test_csv_bad_rows_and_missing_files(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    bad = _csv(tmp_path / "bad.csv", ["path,label,split", "a.png,cat,train", ",cat,test", "a.png,cat,test", "x.png,cat,dev"])
    with pytest.raises(DataError) as err:
        load_classification_data("csv", bad)
    msg = str(err.value)
    assert "line 3: empty path" in msg and "already listed on line 2" in msg and "'dev' is not one of" in msg
    missing = _csv(tmp_path / "missing.csv", ["path,label,split", "a.png,cat,train", "nope.png,cat,test"])
    with pytest.raises(DataError, match=r"1 of 2 listed images do not exist, e.g. .*nope.png"):
        load_classification_data("csv", missing)
    nocol = _csv(tmp_path / "nocol.csv", ["file,label", "a.png,cat"])
    with pytest.raises(DataError, match="lacks column"):
        load_classification_data("csv", nocol)


# --------------------------------------------------------------------------- dassl


def _dassl_pets(root: Path, classes: list[str], per_split: dict[str, int]) -> Path:
    """A miniature $DATA/oxford_pets with split_zhou_OxfordPets.json."""
    ds = root / "oxford_pets"
    split = {}
    for s, n in per_split.items():
        split[s] = []
        for label, name in enumerate(classes):
            for i in range(n):
                rel = f"{name}_{s}_{i}.jpg"
                image(ds / "images" / rel)
                split[s].append([rel, label, name])
    (ds / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    return ds


def test_dassl_split_file_names_templates_and_detection(tmp_path: Path) -> None:
    ds = _dassl_pets(tmp_path, ["american_bulldog", "abyssinian"], {"train": 2, "val": 1, "test": 1})
    assert detect_format(ds) == "dassl"
    for data in (load_classification_data("auto", ds),
                 load_classification_data("dassl", tmp_path, options=LoadOptions(dataset="OxfordPets"))):
        assert data.name == "OxfordPets" and data.root == ds
        assert data.class_keys == ("american_bulldog", "abyssinian")  # label order of the split file
        assert data.classnames == ("american bulldog", "abyssinian")
        assert data.templates == ("a photo of a {}, a type of pet.",)
        assert (len(data.train), len(data.val), len(data.test)) == (4, 2, 2)
        assert data.train[0] == (str(ds / "images" / "american_bulldog_train_0.jpg"), 0)


def test_dassl_fixes_raw_caltech_names(tmp_path: Path) -> None:
    ds = tmp_path / "caltech-101"
    split = {s: [[f"{c}/{s}.jpg", i, c] for i, c in enumerate(["airplanes", "Faces", "accordion"])] for s in ("train", "val", "test")}
    for entries in split.values():
        for rel, _, _ in entries:
            image(ds / "101_ObjectCategories" / rel)
    (ds / "split_zhou_Caltech101.json").write_text(json.dumps(split))
    data = load_classification_data("dassl", ds)
    assert data.name == "Caltech101" and data.classnames == ("airplane", "face", "accordion")


def test_dassl_fgvc_and_imagenet_layouts(tmp_path: Path) -> None:
    fg = tmp_path / "fgvc_aircraft"
    (fg / "images").mkdir(parents=True)
    (fg / "variants.txt").write_text("707-320\nA300B4\n")
    for s in ("train", "val", "test"):
        lines = []
        for k, v in enumerate(("707-320", "A300B4")):
            image(fg / "images" / f"{s}{k}.jpg")
            lines.append(f"{s}{k} {v}")
        (fg / f"images_variant_{s}.txt").write_text("\n".join(lines) + "\n")
    data = load_classification_data("auto", fg)
    assert data.name == "FGVCAircraft" and data.classnames == ("707-320", "A300B4")
    assert data.templates == ("a photo of a {}, a type of aircraft.",) and len(data.val) == 2

    inet = tmp_path / "imagenet"
    (inet / "classnames.txt").parent.mkdir(parents=True)
    (inet / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\n")
    for sub in ("train", "val"):
        for wnid in ("n01443537", "n01440764"):
            image(inet / "images" / sub / wnid / f"{wnid}_{sub}.JPEG")
    data = load_classification_data("auto", inet)
    assert data.name == "ImageNet" and data.class_keys == ("n01440764", "n01443537")
    assert data.classnames == ("tench", "goldfish") and data.val is None  # ImageNet: val folder = test
    assert [Path(p).parent.parent.name for p, _ in data.test] == ["val", "val"]


def test_dassl_bad_inputs(tmp_path: Path) -> None:
    ds = _dassl_pets(tmp_path, ["a", "b"], {"train": 1, "val": 1, "test": 1})
    with pytest.raises(ConfigError, match="'Pets' is not a Dassl data set"):
        load_classification_data("dassl", ds, options=LoadOptions(dataset="Pets"))
    split = json.loads((ds / "split_zhou_OxfordPets.json").read_text())
    split["test"].append(["b_test_0.jpg", 1, "c"])
    (ds / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    with pytest.raises(DataError, match="label 1 is called both 'b' and 'c'"):
        load_classification_data("dassl", ds)
    (ds / "split_zhou_OxfordPets.json").write_text(json.dumps({"train": [["x.jpg", 0, "a"]], "val": [], "test": [["gone.jpg", 0, "a"]]}))
    with pytest.raises(DataError, match="listed images do not exist"):
        load_classification_data("dassl", ds)


def test_every_dassl_set_has_its_coop_template() -> None:
    assert sorted(d.name for d in DASSL_SETS) == sorted(COOP_TEMPLATES)


# --------------------------------------------------------------------------- classnames file, errors


def test_classnames_file_txt_and_json(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "ds", {"train": {"n01": 1, "n02": 1}, "test": {"n01": 1, "n02": 1}})
    txt = tmp_path / "classnames.txt"
    txt.write_text("# wnid name\nn02 great white shark\nn01 tench\n")
    assert load_classification_data("folder", root, classnames_file=txt).classnames == ("tench", "great white shark")
    js = tmp_path / "names.json"
    js.write_text(json.dumps({"n01": "tench", "n02": "goldfish"}))
    data = load_classification_data("folder", root, classnames_file=js)
    assert data.classnames == ("tench", "goldfish") and data.class_keys == ("n01", "n02")


def test_classnames_file_that_does_not_match(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "ds", {"train": {"n01": 1, "n02": 1}, "test": {"n01": 1}})
    txt = tmp_path / "classnames.txt"
    txt.write_text("n01 tench\nn03 goldfish\n")
    with pytest.raises(DataError, match=r"does not match .* lacks class\(es\) 'n02'; it names class\(es\) the data set does not have: 'n03'"):
        load_classification_data("folder", root, classnames_file=txt)
    txt.write_text("n01 tench\nn02 tench\n")
    with pytest.raises(DataError, match="all get the class name 'tench'"):
        load_classification_data("folder", root, classnames_file=txt)
    txt.write_text("n01\n")
    with pytest.raises(DataError, match="line 1: 'n01' has no class name"):
        load_classification_data("folder", root, classnames_file=txt)


def test_bad_format_root_and_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.format 'imagefolder' is unknown"):
        load_classification_data("imagefolder", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_classification_data("auto", tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="data.dataset names a Dassl data set"):
        load_classification_data("folder", tmp_path, options=LoadOptions(dataset="DTD"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no few-shot data layout found"):
        load_classification_data("auto", tmp_path / "empty")
