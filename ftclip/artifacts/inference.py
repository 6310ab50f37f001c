"""Load a run directory or an export for inference, and feed images through it.

This is the one place inference commands (``ftclip embed``, ``ftclip score``, ...) get a model::

    from ftclip.inference import load_for_inference, collect_images, iter_image_batches

    inf = load_for_inference("exports/reid")          # or a run directory; device="cuda"
    paths = collect_images(["photos/", "more.csv"])   # files, folders (recursive), CSV lists
    for batch_paths, images in iter_image_batches(paths, inf.preprocess, batch_size=64, on_bad=print):
        feats = inf.encode(images)                    # [B, D], L2-normalised task feature
    inf.text_features()   # dict of tensors: re-ID {"id_text_features"}, IQA {"positive", "negative", "logit_scale"}
    inf.meta              # model name, image size, mean/std, interpolation, task, feature, ...

``inf.encode(images, feature="proj")`` returns one of :data:`FEATURES`: ``proj`` is
open_clip's ``encode_image``; ``final`` is the class token after ``ln_post`` before the
projection (ViTs); ``final+proj`` is their concatenation (CLIP-ReID's test feature). All are
L2-normalised (``normalize=False`` for raw features).

A run directory is loaded through :func:`ftclip.engine.load_module_from_run` (its last
completed stage; LoRA stays unmerged, which is numerically the same model); an export is
loaded with plain open_clip (``create_model('local-dir:<export>')``), as a user without
ftclip would. Both go through :class:`ImageEncoder`, so a run and its export give the same
features (the export is verified to < 1e-5 when written). Images are preprocessed like
ftclip's evaluation (resize to the model's height x width, normalise); camera embeddings
(SIE) are not applied, as inference has no camera ids.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ftclip.artifacts.layout import EXPORT_META, FEATURES, OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, TEXT_FEATURES
from ftclip.errors import DataError, FtclipError
from ftclip.runs import RunDir, load_module_from_run


class ImageEncoder(nn.Module):
    """An open_clip image tower -> ``(image_features, final)``.

    ``image_features`` is exactly open_clip's ``encode_image`` (pooled, projected). For ViTs
    with a projection, ``final`` is the pooled feature *before* the projection (class token
    after ``ln_post``); other towers return ``image_features`` alone (a 1-tuple).
    """

    def __init__(self, visual: nn.Module):
        super().__init__()
        from open_clip.transformer import VisionTransformer

        self.visual = visual
        self.has_final = isinstance(visual, VisionTransformer) and getattr(visual, "proj", None) is not None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        visual = self.visual
        if not self.has_final:
            return (visual(images),)
        tokens = visual.transformer(visual._embeds(images))  # the same steps as VisionTransformer.forward
        pooled, _ = visual._pool(tokens)
        return pooled @ visual.proj, pooled


def select_feature(outputs: tuple[torch.Tensor, ...], feature: str, normalize: bool = True) -> torch.Tensor:
    """``ImageEncoder`` outputs -> the named feature (see :data:`FEATURES`)."""
    if feature == "proj":
        parts = [outputs[0]]
    elif len(outputs) < 2:
        raise FtclipError(f"feature '{feature}' needs a ViT image tower with a projection; this model has "
                          "only the projected feature: use --feature proj")
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
    """A loaded run or export: ``encode`` images, ``preprocess`` files, ``text_features``, ``meta``."""

    model: nn.Module  # the open_clip model (CLIP / CustomTextCLIP)
    meta: dict[str, Any]
    device: torch.device
    source: str  # "run" | "export"
    path: Path
    module: Any = None  # the task LightningModule (run directories only)
    encoder: ImageEncoder = field(init=False)
    _transform: Any = field(init=False, default=None, repr=False)

    def __post_init__(self):
        self.encoder = ImageEncoder(self.model.visual).eval()

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
            raise FtclipError(f"feature '{feature}' needs a ViT image tower with a projection; "
                              f"{self.meta.get('model_name')} has only the projected feature: use --feature proj")

    @torch.no_grad()
    def encode(self, images: torch.Tensor, feature: str | None = None, normalize: bool = True) -> torch.Tensor:
        """Preprocessed images ``[B, 3, H, W]`` -> features ``[B, D]`` (float32, on the model's device)."""
        feature = feature or self.feature
        return select_feature(self.encoder(images.to(self.device, torch.float32)), feature, normalize)

    def preprocess(self, path: str | Path) -> torch.Tensor:
        """An image file -> ``[3, H, W]`` float tensor (ftclip's evaluation transform); DataError if unreadable."""
        from ftclip.data.images import read_image
        from ftclip.data.transforms import apply, eval_transform

        if self._transform is None:
            self._transform = eval_transform(self.image_size, self.meta["mean"], self.meta["std"],
                                             interpolation=str(self.meta.get("interpolation", "bicubic")))
        return apply(self._transform, read_image(path))

    def text_features(self) -> dict[str, torch.Tensor]:
        """The task's learned/fixed text side (what ``text_features.safetensors`` of an export holds)."""
        if self.source == "export":
            file = self.path / TEXT_FEATURES
            if not file.is_file():
                return {}
            from safetensors.torch import load_file

            return load_file(str(file), device=str(self.device))
        hook = getattr(self.module, "export_text_features", None)
        if hook is None:
            return {}
        with torch.no_grad():
            return {k: v.to(self.device) for k, v in hook().items()}


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
    """``"export"`` (has ftclip_export.json) or ``"run"`` (has config.yaml); FtclipError otherwise."""
    path = Path(path)
    if not path.exists():
        raise FtclipError(f"{path} does not exist; give an ftclip run directory or an export folder")
    if path.is_dir() and (path / EXPORT_META).is_file():
        return "export"
    if path.is_dir() and (path / "config.yaml").is_file():
        return "run"
    raise FtclipError(f"{path} is neither an ftclip run directory (no config.yaml) nor an ftclip export "
                      f"(no {EXPORT_META}); give the folder `ftclip fit` or `ftclip export` wrote")


def load_open_clip_export(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The export's open_clip model, built by plain open_clip from ``open_clip_config.json`` + weights."""
    import open_clip

    path = Path(path)
    for name in (OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS):
        if not (path / name).is_file():
            raise FtclipError(f"export {path} has no {name}; re-run `ftclip export RUN_DIR --out {path} --overwrite`")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = open_clip.create_model(f"local-dir:{path.resolve()}", device=str(device))
        except Exception as exc:
            raise FtclipError(f"open_clip cannot load export {path}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return model.eval()


def load_for_inference(path: str | Path, device: str | torch.device | None = "auto") -> InferenceModel:
    """A run directory (its final checkpoint) or an export folder -> :class:`InferenceModel`."""
    path = Path(path)
    kind = path_kind(path)
    dev = _pick_device(device)
    if kind == "export":
        meta_file = path / EXPORT_META
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FtclipError(f"{meta_file} is not readable JSON ({exc}); re-export the run") from None
        model = load_open_clip_export(path, dev)
        return InferenceModel(model=model, meta=meta, device=dev, source="export", path=path)

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    module, cfg = load_module_from_run(RunDir(path))
    module = module.to(dev).eval()
    meta = dict(module.backbone.metadata())
    meta["task"] = str(cfg.task)
    hook = getattr(module, "export_info", None)
    meta.update(hook() if hook else {})
    meta.setdefault("feature", "proj")
    return InferenceModel(model=module.backbone.model, meta=meta, device=dev, source="run", path=path,
                          module=module)


# ---------------------------------------------------------------------------------------- images
def _csv_paths(csv_file: Path) -> list[Path]:
    """A CSV list of images: the ``path`` column if there is a header with one, else the first column.
    Relative paths are taken relative to the CSV file's folder."""
    try:
        with open(csv_file, newline="", encoding="utf-8") as fh:
            rows = [row for row in csv.reader(fh) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"image list {csv_file} cannot be read ({exc})") from None
    if not rows:
        raise DataError(f"image list {csv_file} is empty: write one image path per line (or a 'path' column)")
    header = [cell.strip().lower() for cell in rows[0]]
    column = 0
    if "path" in header:
        column, rows = header.index("path"), rows[1:]
    elif header and header[0] in ("image", "file", "filename", "image_path", "img"):
        rows = rows[1:]
    out = []
    for row in rows:
        value = row[column].strip() if column < len(row) else ""
        if value:
            p = Path(value).expanduser()
            out.append(p if p.is_absolute() else csv_file.parent / p)
    return out


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Image files, folders (searched recursively, sorted) and ``.csv`` lists -> image paths, in order.

    A missing input, or no image found at all, is a DataError naming it.
    """
    from ftclip.data.images import IMAGE_EXTENSIONS

    paths: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            if not found:
                raise DataError(f"folder {p} holds no images ({', '.join(IMAGE_EXTENSIONS)}), searched recursively")
            paths += found
        elif p.suffix.lower() == ".csv" and p.is_file():
            paths += _csv_paths(p)
        elif p.exists():
            paths.append(p)
        else:
            raise DataError(f"input {p} does not exist; give image files, folders or a CSV list of image paths")
    if not paths:
        raise DataError("no input images given")
    return paths


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
