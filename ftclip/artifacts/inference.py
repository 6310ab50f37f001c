"""The one inference path: load a run directory or an export, read inputs, feed images through it.

Every inference command (``ftclip embed``, ``ftclip score``, ...) goes through here::

    from ftclip.artifacts.inference import collect_inputs, iter_image_batches, load_for_inference

    inf = load_for_inference("exports/reid")          # or a run directory; device="cuda"
    inputs = collect_inputs(["photos/", "more.csv"])  # files, folders (recursive), CSV lists
    for batch_paths, images in iter_image_batches(inputs.paths, inf.preprocess, batch_size=64, on_bad=print):
        feats = inf.encode(images)                    # [B, D], L2-normalised task feature
        scores = inf.score(images)                    # tasks with a score (IQA): [B]
    inf.tensors()   # the task's tensors by kind: {"text_features": {...}, "prompts": {...}, "heads": {...}}
    inf.meta        # model name, image size, mean/std, interpolation, task, feature, ...

``inf.encode(images, feature="proj")`` returns one of :data:`~ftclip.artifacts.layout.FEATURES`:
``proj`` is open_clip's ``encode_image``; ``final`` is the pooled feature before the projection (ViT:
class token after ``ln_post``; ResNet: average-pooled last stage; timm trunk: pre-logits);
``final+proj`` is their concatenation (CLIP-ReID's test feature). All are
L2-normalised (``normalize=False`` for raw features).

A run directory is loaded through :func:`ftclip.runs.load_module_from_run`: a finished run's final
weights, or those of the finished stage named by ``stage=`` (``--stage``); an unfinished run is
refused by :func:`ftclip.runs.select_checkpoint`, the one rule every command reading a run follows
(LoRA stays unmerged, which is numerically the same model); an export is loaded with plain
open_clip (``create_model('local-dir:<export>')``), as a user without ftclip would. Both go through
:class:`ImageEncoder`, and the task's own heads (``Task.score``, ``Task.predict``) read the same
tensors an export stores, so a run and its export give the same results (the export is verified
to < 1e-5 when written). Images are preprocessed exactly as ftclip's evaluation and as the
export's open_clip ``preprocess`` (PIL resize of the recorded kernel to the model's height x width,
then ToTensor + Normalize); camera embeddings (SIE) are not applied, as inference has no camera ids.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ftclip.artifacts.layout import EXPORT_META, FEATURES, OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, TENSOR_FILES
from ftclip.artifacts.manifest import read_manifest, verify_export
from ftclip.backbone import fit_image_size
from ftclip.data.images import IMAGE_EXTENSIONS, list_images, read_image
from ftclip.data.transforms import apply, eval_transform
from ftclip.errors import DataError, FtclipError
from ftclip.runs import RunDir, load_module_from_run, note_once, select_checkpoint
from ftclip.tasks import get_task
from ftclip.towers import image_features, image_kind


class ImageEncoder(nn.Module):
    """An open_clip image tower -> ``(image_features, final)``.

    ``image_features`` is exactly open_clip's ``encode_image`` (pooled, projected); ``final`` is the
    pooled feature *before* the projection (:func:`ftclip.towers.image_features`: a ViT's class token
    after ``ln_post``, a ResNet's average-pooled last stage, a timm trunk's pre-logits). A ViT without
    a projection returns ``image_features`` alone (a 1-tuple).
    """

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        kind = image_kind(visual)
        self.has_final = kind in ("resnet", "timm") or (kind == "vit" and getattr(visual, "proj", None) is not None)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.has_final:
            return (self.visual(images),)
        return image_features(self.visual, images)


def select_feature(outputs: tuple[torch.Tensor, ...], feature: str, normalize: bool = True) -> torch.Tensor:
    """``ImageEncoder`` outputs -> the named feature (see :data:`FEATURES`)."""
    if feature == "proj":
        parts = [outputs[0]]
    elif len(outputs) < 2:
        raise FtclipError(f"feature '{feature}' needs the feature before the projection; this image tower has no "
                          "projection (a ViT without proj): use --feature proj")
    elif feature == "final":
        parts = [outputs[1]]
    elif feature == "final+proj":
        parts = [outputs[1], outputs[0]]
    else:
        raise FtclipError(f"feature '{feature}' is not one of {', '.join(FEATURES)}")
    out = torch.cat(parts, dim=1).float()
    return F.normalize(out, dim=1) if normalize else out


@dataclass
class InferenceModel:
    """A loaded run or export: ``encode`` / ``score`` / ``predict`` images, ``preprocess`` files, ``meta``."""

    model: nn.Module  # the open_clip model (CLIP / CustomTextCLIP)
    meta: dict[str, Any]
    device: torch.device
    source: str  # "run" | "export"
    path: Path
    module: Any = None  # the task LightningModule (run directories only)
    encoder: ImageEncoder = field(init=False)
    _transform: Any = field(init=False, default=None, repr=False)
    _tensors: dict | None = field(init=False, default=None, repr=False)

    def __post_init__(self):
        self.encoder = ImageEncoder(self.model.visual).eval()

    @property
    def task(self):
        return get_task(str(self.meta.get("task")))

    @property
    def feature(self) -> str:
        """The feature the task evaluates with (default of :meth:`encode`)."""
        return str(self.meta.get("feature", "proj"))

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.meta["image_size"]
        return int(h), int(w)

    def check_feature(self, feature: str) -> None:
        if feature not in FEATURES:
            raise FtclipError(f"feature '{feature}' is not one of {', '.join(FEATURES)}")
        if feature != "proj" and not self.encoder.has_final:
            raise FtclipError(f"feature '{feature}' needs the feature before the projection; "
                              f"{self.meta.get('model_name')} has no projection: use --feature proj")

    @torch.no_grad()
    def encode(self, images: torch.Tensor, feature: str | None = None, normalize: bool = True) -> torch.Tensor:
        """Preprocessed images ``[B, 3, H, W]`` -> features ``[B, D]`` (float32, on the model's device)."""
        feature = feature or self.feature
        return select_feature(self.encoder(images.to(self.device, torch.float32)), feature, normalize)

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        """The task's score of each image ``[B]`` (IQA: quality in [0, 1])."""
        return self.task.score(self.encode(images, "proj", normalize=False), self.tensors(), self.meta)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The task's class logits ``[B, C]`` (classification tasks)."""
        return self.task.predict(self.encode(images, "proj", normalize=False), self.tensors(), self.meta)

    def preprocess(self, path: str | Path) -> torch.Tensor:
        """An image file -> ``[3, H, W]`` float tensor (ftclip's evaluation transform); DataError if unreadable."""
        return self.preprocess_array(read_image(path))

    def preprocess_array(self, image) -> torch.Tensor:
        """An RGB uint8 array ``[H, W, 3]`` (as ``read_image`` returns) -> ``[3, H, W]`` float tensor."""
        if self._transform is None:
            self._transform = eval_transform(self.image_size, self.meta["mean"], self.meta["std"],
                                             interpolation=str(self.meta.get("interpolation", "bicubic")))
        return apply(self._transform, image)

    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """The task's tensors by kind, on the model's device: what the export's safetensors files hold."""
        if self._tensors is None:
            if self.source == "export":
                self._tensors = {kind: _read_tensors(self.path / name, self.device)
                                 for kind, name in TENSOR_FILES.items() if (self.path / name).is_file()}
            else:
                with torch.no_grad():
                    self._tensors = {kind: {k: v.to(self.device) for k, v in values.items()}
                                     for kind, values in self.module.export_tensors().items()}
        return self._tensors


def _read_tensors(file: Path, device: torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file), device=str(device))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise FtclipError(f"{file} cannot be read ({type(exc).__name__}: {exc}); re-export the run") from None


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(device))
    except RuntimeError:
        raise FtclipError(f"--device '{device}' is not a torch device; use cpu, cuda, cuda:1 or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FtclipError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return dev


def path_kind(path: str | Path) -> str:
    """``"export"`` (has ftclip_export.json) or ``"run"`` (a run directory); FtclipError otherwise."""
    path = Path(path)
    if not path.exists():
        raise FtclipError(f"{path} does not exist; give an ftclip run directory or an export folder")
    if path.is_dir() and (path / EXPORT_META).is_file():
        return "export"
    if path.is_dir() and RunDir(path).config_path.is_file():
        return "run"
    raise FtclipError(f"{path} is neither an ftclip run directory (no {RunDir(path).config_path.name}) nor an "
                      f"ftclip export (no {EXPORT_META}); give the folder `ftclip fit` or `ftclip export` wrote")


def load_open_clip_export(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The export's open_clip model, built by plain open_clip from ``open_clip_config.json`` + weights.

    A tower open_clip cannot build from the config alone (``ftclip_tower``: CLIP-ReID's stride-1 ResNet,
    a timm ViT at another input size) is built as the stock architecture, fitted as the model card shows
    (:func:`ftclip.backbone.fit_image_size`, the same steps), then loaded strictly.
    """
    import open_clip

    path = Path(path)
    for name in (OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS):
        if not (path / name).is_file():
            raise FtclipError(f"export {path} has no {name}; re-run `ftclip export RUN_DIR --out {path} --overwrite`")
    try:
        fit = json.loads((path / OPEN_CLIP_CONFIG).read_text(encoding="utf-8")).get("ftclip_tower")
    except (OSError, ValueError) as exc:
        raise FtclipError(f"{path / OPEN_CLIP_CONFIG} is not readable JSON ({exc}); re-export the run") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = open_clip.create_model(f"local-dir:{path.resolve()}", device="cpu", load_weights=not fit)
            if fit:
                from safetensors.torch import load_file

                fit_image_size(model.visual, tuple(fit["image_size"]), int(fit.get("resnet_last_stride", 2)))
                model.load_state_dict(load_file(str(path / OPEN_CLIP_WEIGHTS)), strict=True)
        except Exception as exc:
            raise FtclipError(f"open_clip cannot load export {path}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return model.to(device).eval()


def read_export_meta(path: str | Path) -> dict[str, Any]:
    """An export's manifest (``ftclip_export.json``) with the keys every reader needs, its files checked
    against their recorded SHA-256 (an export of an older ftclip, without hashes, is said once)."""
    path = Path(path)
    meta = read_manifest(path)
    missing = [k for k in ("task", "image_size", "mean", "std") if k not in meta]
    if missing:
        raise FtclipError(f"{path / EXPORT_META} lacks {', '.join(missing)}; re-export the run with `ftclip export`")
    if not verify_export(path, meta):  # every file's SHA-256 against the manifest
        note_once(str(path), f"export {path} records no file hashes (written by an older ftclip): its files "
                             "are not checked")
    return meta


def load_module_from_export(path: str | Path, cfg):
    """An export folder as the task's module, for evaluation with ``cfg``'s data and ``eval`` settings
    (``ftclip eval EXPORT``): the model keys come from the export's manifest, every weight from the
    export (open_clip weights, LoRA already merged; the task's tensors via ``load_export_tensors``).
    Returns ``(module, the config it was built from)``."""
    path = Path(path)
    meta = read_export_meta(path)
    if str(meta["task"]) != str(cfg.task):
        raise FtclipError(f"export {path} is a '{meta['task']}' model but the recipe is for task '{cfg.task}'")
    info = meta.get("module_info")
    if info is None:
        raise FtclipError(f"{path / EXPORT_META} has no module_info (written by an older ftclip); re-export the run "
                          "with `ftclip export RUN --overwrite`, or evaluate the run directory")
    weights = path / OPEN_CLIP_WEIGHTS
    if not weights.is_file():
        raise FtclipError(f"export {path} has no {OPEN_CLIP_WEIGHTS}; re-export the run")
    build = copy.deepcopy(cfg)
    build.model.name = str(meta["model_name"])
    build.model.pretrained = str(weights)
    for key in ("image_size", "mean", "std"):
        build.model[key] = [float(v) if key != "image_size" else int(v) for v in meta[key]]
    for key in ("interpolation", "quick_gelu"):
        if meta.get(key) is not None:
            build.model[key] = meta[key]
    lora = getattr(getattr(build, "strategies", None), "lora", None)
    if lora is not None:
        lora.enabled = False  # merged into the exported weights
    module = get_task(str(cfg.task)).build_module(build, info)
    tensors = {kind: _read_tensors(path / name, torch.device("cpu"))
               for kind, name in TENSOR_FILES.items() if (path / name).is_file()}
    module.load_export_tensors(tensors)
    return module.eval(), build


def load_for_inference(path: str | Path, device: str | torch.device | None = "auto", stage: str | None = None,
                       checkpoint: str = "last") -> InferenceModel:
    """A run directory (the checkpoint ``runs.select_checkpoint`` picks) or an export folder ->
    :class:`InferenceModel`."""
    path = Path(path)
    kind = path_kind(path)
    if kind == "export" and (stage is not None or checkpoint != "last"):
        asked = f"--stage {stage}" if stage is not None else f"--checkpoint {checkpoint}"
        raise FtclipError(f"{asked} applies to run directories; {path} is an export (one set of weights, of stage "
                          f"'{_export_stage(path)}'): give the run directory to choose a stage or checkpoint")
    chosen = None
    if kind == "run":  # refuses an unfinished run before any model is built
        chosen, _ = select_checkpoint(RunDir(path), stage, which=checkpoint)
    dev = _pick_device(device)
    if kind == "export":
        meta = read_export_meta(path)
        model = load_open_clip_export(path, dev)
        return InferenceModel(model=model, meta=meta, device=dev, source="export", path=path)

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    module, cfg = load_module_from_run(RunDir(path), chosen, checkpoint)
    module = module.to(dev).eval()
    meta = dict(module.backbone.metadata())
    meta["task"] = str(cfg.task)
    meta["stage"] = chosen
    meta.update(module.export_info())
    return InferenceModel(model=module.backbone.model, meta=meta, device=dev, source="run", path=path,
                          module=module)


def _export_stage(path: Path) -> str:
    try:
        return str(read_manifest(path).get("stage", "the last stage"))
    except FtclipError:
        return "the last stage"


# ---------------------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    """Image paths in order (duplicates dropped) and any other columns their CSV lists gave, by path."""

    paths: list[Path] = field(default_factory=list)
    columns: dict[str, dict[Path, str]] = field(default_factory=dict)
    duplicates: int = 0

    def column(self, name: str) -> dict[Path, str]:
        return self.columns.get(name, {})


def _read_list(csv_file: Path, out: Inputs) -> None:
    """A CSV list of images: the ``path`` column if the header has one; else the first column, whose
    first row is a header unless it names an image file. Relative paths are against the CSV's folder;
    with a header, the other columns are kept (e.g. ``mos``, ``label``)."""
    try:
        with open(csv_file, newline="", encoding="utf-8-sig") as fh:
            rows = [row for row in csv.reader(fh) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"image list {csv_file} cannot be read ({exc})") from None
    if not rows:
        raise DataError(f"image list {csv_file} is empty: write one image path per line (or a 'path' column)")
    header = [cell.strip().lower() for cell in rows[0]]
    names: list[str] = []
    if "path" in header:
        column, body, names = header.index("path"), rows[1:], header
    elif os.path.splitext(header[0])[1] in IMAGE_EXTENSIONS:
        column, body = 0, rows
    else:
        column, body, names = 0, rows[1:], header
    for row in body:
        value = row[column].strip() if column < len(row) else ""
        if not value:
            continue
        p = Path(value).expanduser()
        p = Path(os.path.normpath(p if p.is_absolute() else csv_file.parent / p))
        out.paths.append(p)
        for i, name in enumerate(names):
            if i != column and i < len(row) and name:
                out.columns.setdefault(name, {}).setdefault(p, row[i].strip())


def collect_inputs(items: list[str | Path]) -> Inputs:
    """Image files, folders (searched recursively, sorted) and ``.csv`` lists -> image paths, in order.

    A missing input or a folder without images is a DataError naming it; a path given twice is
    kept once. Images listed in a CSV are read later: an unreadable one is reported and skipped.
    """
    out = Inputs()
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            out.paths += [Path(f) for f in list_images(p)]
        elif p.suffix.lower() == ".csv" and p.is_file():
            _read_list(p, out)
        elif p.exists():
            out.paths.append(p)
        else:
            raise DataError(f"input {p} does not exist; give image files, folders or a CSV list of image paths")
    if not out.paths:
        raise DataError("no input images given")
    seen: set[Path] = set()
    unique = [p for p in out.paths if not (p in seen or seen.add(p))]
    out.duplicates, out.paths = len(out.paths) - len(unique), unique
    return out


def iter_image_batches(
    paths: list[Path], preprocess: Callable[[Path], torch.Tensor], batch_size: int = 64,
    on_bad: Callable[[Path, str], None] | None = None, workers: int = 4,
) -> Iterator[tuple[list[Path], torch.Tensor]]:
    """Decode and preprocess ``paths`` in batches (threads); unreadable images go to ``on_bad(path, reason)``
    and are skipped. Yields ``(paths of the batch, images [B, 3, H, W])``; empty batches are not yielded."""
    if batch_size < 1:
        raise FtclipError(f"--batch-size must be at least 1, got {batch_size}")

    def load(p: Path):
        try:
            return preprocess(p), None
        except DataError as exc:
            return None, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            kept, tensors = [], []
            for p, (tensor, reason) in zip(chunk, pool.map(load, chunk)):
                if tensor is None:
                    if on_bad is not None:
                        on_bad(p, reason or "unreadable")
                    continue
                kept.append(p)
                tensors.append(tensor)
            if tensors:
                yield kept, torch.stack(tensors)


def report_unreadable(bad: list[tuple[Path, str]], read: int, total: int, done: str) -> None:
    """Name every skipped image on stderr; one FtclipError when none of the ``total`` could be read
    (so nothing was ``done``: "scored", "classified")."""
    for path, reason in bad:
        print(f"skipped unreadable image {path}: {reason}", file=sys.stderr)
    if not read:
        raise FtclipError(f"none of the {total} image(s) could be read, so nothing was {done} "
                          f"(first: {bad[0][0]}: {bad[0][1]})")
