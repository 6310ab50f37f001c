"""The 11 standard few-shot data sets as CoOp/Dassl lay them out (CoOp ``DATASETS.md``, ``datasets/*.py``).

Nine ship a fixed split ``split_zhou_<Name>.json`` beside their images:
``{"train": [[image path relative to the image folder, label, class name], ...], "val": [...],
"test": [...]}``. FGVCAircraft has its own lists (``variants.txt`` = class names in label order,
``images_variant_{train,val,test}.txt`` = ``<image id> <class name>`` lines, images in
``images/<id>.jpg``), and ImageNet is read from ``images/train/<wnid>/`` and ``images/val/<wnid>/``
(the val set is the test set, as in CoOp) with ``classnames.txt`` (``<wnid> <class name>`` lines,
CLIP's cleaned names; label = position of the wnid in sorted order).

``root`` is the data set's own folder (``$DATA/oxford_pets``), or ``$DATA`` with ``dataset`` naming
the set. Class names: CoOp's fixes for Caltech101 (``airplanes`` -> ``airplane``, ...) and
EuroSAT (``AnnualCrop`` -> ``Annual Crop Land``, ...) are applied when a split file still holds
the raw folder names (the published ones already hold the fixed names), then underscores become
spaces as CoOp does before prompting. Templates: CoOp's per-data-set template.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ftclip.data.images import IMAGE_EXTENSIONS
from ftclip.errors import ConfigError, DataError
from ftclip.tasks.fewshot.dataset import ClassificationData, Item, build_data, check_files_exist, few
from ftclip.tasks.fewshot.formats.base import FewshotFormat, LoadOptions
from ftclip.tasks.fewshot.templates import COOP_TEMPLATES

__all__ = ["DasslSet", "DASSL_SETS", "Dassl", "dassl_name"]

_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DasslSet:
    name: str  # Dassl's class name, e.g. "OxfordPets"
    folder: str  # the folder under $DATA (CoOp DATASETS.md)
    image_dir: str  # image folder relative to the data set folder ("" = the folder itself)
    split_file: str | None = None  # split_zhou_*.json (None: FGVCAircraft, ImageNet)
    fixes: dict[str, str] = field(default_factory=dict)  # raw class name -> CoOp's name


_CALTECH_FIXES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
_EUROSAT_FIXES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}

DASSL_SETS: tuple[DasslSet, ...] = (
    DasslSet("ImageNet", "imagenet", "images"),
    DasslSet("Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", _CALTECH_FIXES),
    DasslSet("OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json"),
    DasslSet("StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json"),
    DasslSet("OxfordFlowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    DasslSet("Food101", "food-101", "images", "split_zhou_Food101.json"),
    DasslSet("FGVCAircraft", "fgvc_aircraft", "images"),
    DasslSet("SUN397", "sun397", "SUN397", "split_zhou_SUN397.json"),
    DasslSet("DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json"),
    DasslSet("EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json", _EUROSAT_FIXES),
    DasslSet("UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
)


def _marker(ds: DasslSet) -> str:
    if ds.split_file:
        return ds.split_file
    return "variants.txt" if ds.name == "FGVCAircraft" else "classnames.txt"


def _matches(ds: DasslSet, folder: Path) -> bool:
    if ds.split_file:
        return (folder / ds.split_file).is_file()
    if ds.name == "FGVCAircraft":
        return (folder / "variants.txt").is_file() and (folder / "images_variant_train.txt").is_file()
    return (folder / "classnames.txt").is_file() and (folder / "images" / "train").is_dir()


def _lookup(name: str) -> DasslSet:
    wanted = name.strip().lower()
    for ds in DASSL_SETS:
        if wanted in (ds.name.lower(), ds.folder.lower()):
            return ds
    raise ConfigError(
        f"data.dataset {name!r} is not a Dassl data set; use one of {', '.join(d.name for d in DASSL_SETS)}"
    )


def dassl_name(name: str | None) -> str | None:
    """The Dassl name (``EuroSAT``) of a data set named by it or by its CoOp folder (``eurosat``); other names as given."""
    if name is None:
        return None
    wanted = str(name).strip().lower()
    return next((ds.name for ds in DASSL_SETS if wanted in (ds.name.lower(), ds.folder.lower())), str(name))


def _resolve(root: Path, dataset: str | None) -> tuple[DasslSet, Path]:
    if dataset is not None:
        ds = _lookup(dataset)
        for folder in (root, root / ds.folder):
            if _matches(ds, folder):
                return ds, folder
        raise DataError(
            f"no {ds.name} data found in {root} or {root / ds.folder}: expected {_marker(ds)} there "
            "(see CoOp's DATASETS.md for the layout)"
        )
    found = [ds for ds in DASSL_SETS if _matches(ds, root)]
    if len(found) == 1:
        return found[0], root
    if found:
        raise DataError(f"{root} holds several Dassl data sets ({', '.join(d.name for d in found)}): set data.dataset")
    raise DataError(
        f"no Dassl data set in {root}: looked for {', '.join(_marker(d) for d in DASSL_SETS[1:])}, "
        "or classnames.txt + images/train (ImageNet), or pass data.dataset with $DATA as root"
    )


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            split = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"Dassl split file {path} cannot be read ({err}): re-download it") from None
    if not isinstance(split, dict) or any(not isinstance(split.get(s), list) for s in _SPLITS):
        raise DataError(f"Dassl split file {path} must be a JSON object with lists 'train', 'val' and 'test'")
    return split


def _from_split_file(ds: DasslSet, folder: Path) -> tuple[list[str], dict[str, list[Item]]]:
    path = folder / ds.split_file
    split = _read_json(path)
    names: dict[int, str] = {}
    items: dict[str, list[Item]] = {}
    image_dir = folder / ds.image_dir
    for s in _SPLITS:
        items[s] = []
        for i, entry in enumerate(split[s]):
            ok = (
                isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                and isinstance(entry[1], int) and not isinstance(entry[1], bool) and entry[1] >= 0
                and isinstance(entry[2], str)
            )
            if not ok:
                raise DataError(
                    f"Dassl split file {path}: {s}[{i}] = {entry!r} is not [image path, label >= 0, class name]"
                )
            rel, label, name = entry
            if names.setdefault(label, name) != name:
                raise DataError(
                    f"Dassl split file {path}: label {label} is called both {names[label]!r} and {name!r}"
                )
            items[s].append((os.path.normpath(image_dir / rel), label))
    labels = sorted(names)
    if labels != list(range(len(labels))):
        missing = sorted(set(range(labels[-1] + 1)) - set(labels)) if labels else []
        raise DataError(f"Dassl split file {path}: labels must run 0..n-1; missing {few(missing)}")
    return [names[i] for i in labels], items


def _read_lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path} cannot be read ({err})") from None


def _fgvc(folder: Path) -> tuple[list[str], dict[str, list[Item]]]:
    classnames = _read_lines(folder / "variants.txt")
    label_of = {name: i for i, name in enumerate(classnames)}
    items: dict[str, list[Item]] = {}
    for s in _SPLITS:
        path = folder / f"images_variant_{s}.txt"
        items[s] = []
        for number, line in enumerate(_read_lines(path), start=1):
            image, _, name = line.partition(" ")
            if name not in label_of:
                raise DataError(f"{path} line {number}: class {name!r} is not in {folder / 'variants.txt'}")
            items[s].append((os.path.normpath(folder / "images" / f"{image}.jpg"), label_of[name]))
    return classnames, items


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _imagenet(folder: Path) -> tuple[list[str], list[str], dict[str, list[Item]]]:
    path = folder / "classnames.txt"
    names = {}
    for line in _read_lines(path):
        wnid, _, name = line.partition(" ")
        names[wnid] = name.strip()
    train_dir = folder / "images" / "train"
    wnids = sorted(e.name for e in os.scandir(train_dir) if e.is_dir() and not e.name.startswith("."))
    unnamed = [w for w in wnids if w not in names]
    if unnamed:
        raise DataError(f"ImageNet class folder(s) {few(unnamed)} of {train_dir} are not in {path}")
    label_of = {w: i for i, w in enumerate(wnids)}
    items: dict[str, list[Item]] = {"train": [], "val": [], "test": []}
    for split, sub in (("train", "train"), ("test", "val")):
        base = folder / "images" / sub
        if not base.is_dir():
            raise DataError(f"ImageNet folder {base} is missing: CoOp's layout has images/train and images/val")
        for entry in sorted(os.scandir(base), key=lambda e: e.name):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            if entry.name not in label_of:
                raise DataError(
                    f"ImageNet {sub} class folder {entry.path} has no training folder {train_dir / entry.name}"
                )
            files = sorted(f.name for f in os.scandir(entry.path) if f.is_file() and _is_image(f.name))
            items[split] += [(os.path.join(entry.path, f), label_of[entry.name]) for f in files]
    return wnids, [names[w] for w in wnids], items


def _load(root: Path, dataset: str | None) -> ClassificationData:
    ds, folder = _resolve(root, dataset)
    source = f"{ds.name} data set {folder}"
    if ds.name == "ImageNet":  # listed from the folders, so every path exists
        keys, names, items = _imagenet(folder)
        val = None
    else:
        keys, items = _fgvc(folder) if ds.name == "FGVCAircraft" else _from_split_file(ds, folder)
        names = [ds.fixes.get(k, k) for k in keys]
        val = items["val"] or None
        check_files_exist([*items["train"], *(val or ()), *items["test"]], source)
    return build_data(
        name=ds.name,
        root=folder,
        class_keys=keys,
        classnames=[n.replace("_", " ") for n in names],
        train=items["train"],
        val=val,
        test=items["test"],
        templates=(COOP_TEMPLATES[ds.name],),
        source=source,
    )


class Dassl(FewshotFormat):
    name = "dassl"
    looked_for = "split_zhou_*.json, variants.txt or classnames.txt + images/train (dassl)"

    def detect(self, root: Path) -> bool:
        return root.is_dir() and any(_matches(ds, root) for ds in DASSL_SETS)

    def load(self, root: Path, options: LoadOptions) -> ClassificationData:
        """One of :data:`DASSL_SETS` (``options.dataset`` = its name or CoOp folder; None: detect)."""
        return _load(root, options.dataset)
