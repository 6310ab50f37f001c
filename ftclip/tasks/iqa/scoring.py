"""Score images with a trained IQA run or an export folder (``ftclip score``).

Sources:

* a run directory (``config.yaml`` + checkpoints): the final weights of its last completed
  stage, via :func:`ftclip.engine.load_module_from_run` (no data needed);
* an export folder (``ftclip_export.json``): the image tower from ``open_clip_config.json`` +
  ``open_clip_model.safetensors`` (``open_clip.create_model_and_transforms('local-dir:' + folder)``)
  and the antonym text features from ``text_features.safetensors`` (``positive`` [P, D],
  ``negative`` [P, D], ``logit_scale``).

Inputs: image files, folders (searched recursively) and CSV files (a ``path`` column, else the
first column; relative paths are resolved against the CSV's folder; an optional ``mos`` column
is carried into the output). Unreadable images are reported by name and skipped.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ftclip.data.images import IMAGE_EXTENSIONS, read_image
from ftclip.data.iqa import list_images
from ftclip.data.transforms import apply, eval_transform
from ftclip.errors import DataError, FtclipError
from ftclip.losses import quality_score

EXPORT_MANIFEST = "ftclip_export.json"
TEXT_FEATURES = "text_features.safetensors"


@dataclass
class Scorer:
    """Image encoder + antonym text features + input preprocessing."""

    encode_image: object  # callable: [B, 3, H, W] -> [B, D]
    positive: torch.Tensor
    negative: torch.Tensor
    logit_scale: float
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    source: str = ""
    model: object = None  # the nn.Module behind encode_image (moved by ``to``)

    def to(self, device: str) -> "Scorer":
        if self.model is not None:
            self.model.to(device)
        return self

    @torch.no_grad()
    def score_tensor(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.encode_image(images).float()
        return quality_score(feats, self.positive.to(feats.device), self.negative.to(feats.device), self.logit_scale)


def _from_run(path: Path) -> Scorer:
    from ftclip.runs import RunDir, load_module_from_run

    run = RunDir(path)
    cfg = run.load_config()
    if str(cfg.task) != "iqa":
        raise FtclipError(f"{path} is a '{cfg.task}' run; `ftclip score` scores image quality with an 'iqa' run")
    module, _ = load_module_from_run(run)
    module.eval()
    pos, neg = module.antonym.text_features()
    pre = module.backbone.preprocess
    return Scorer(module.backbone.encode_image, pos.detach(), neg.detach(), module.antonym.logit_scale(),
                  tuple(pre.image_size), tuple(pre.mean), tuple(pre.std), pre.interpolation, source=f"run {path}",
                  model=module)


def _preprocess_from_manifest(manifest: dict, open_clip_cfg: dict) -> dict:
    """image_size / mean / std / interpolation: the manifest's ``preprocess`` (or ``backbone``) entry,
    else the open_clip config's ``preprocess_cfg`` and vision image size."""
    if "image_size" in manifest and "mean" in manifest:  # ftclip.export: the backbone metadata at top level
        return manifest
    for key in ("preprocess", "backbone"):
        entry = manifest.get(key)
        if isinstance(entry, dict) and "image_size" in entry:
            return entry
    pre = dict(open_clip_cfg.get("preprocess_cfg") or {})
    size = pre.get("size") or open_clip_cfg.get("model_cfg", {}).get("vision_cfg", {}).get("image_size", 224)
    size = [size, size] if isinstance(size, int) else list(size)
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return {"image_size": size, "mean": pre.get("mean", OPENAI_DATASET_MEAN), "std": pre.get("std", OPENAI_DATASET_STD),
            "interpolation": pre.get("interpolation", "bicubic")}


def _from_export(path: Path) -> Scorer:
    import open_clip
    from safetensors.torch import load_file

    manifest_path = path / EXPORT_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise FtclipError(f"{manifest_path} cannot be read ({exc}); re-export the run") from None
    task = manifest.get("task")
    if task is not None and task != "iqa":
        raise FtclipError(f"{path} is an export of a '{task}' run; `ftclip score` needs an 'iqa' export")
    features = path / TEXT_FEATURES
    if not features.is_file():
        raise FtclipError(f"{path} has no {TEXT_FEATURES} (the antonym text features); re-export an 'iqa' run")
    try:
        text = load_file(str(features))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise FtclipError(f"{features} cannot be read ({type(exc).__name__}: {exc}); re-export the run") from None
    missing = [k for k in ("positive", "negative") if k not in text]
    if missing:
        raise FtclipError(f"{features} lacks {', '.join(missing)}: it must hold positive [P, D], negative [P, D] "
                          "and logit_scale")
    pos, neg = text["positive"].float(), text["negative"].float()
    if pos.dim() == 1:
        pos, neg = pos[None], neg[None]
    logit_scale = float(text["logit_scale"].item()) if "logit_scale" in text else float(manifest.get("logit_scale", 100.0))
    oc_cfg_path = path / "open_clip_config.json"
    try:
        oc_cfg = json.loads(oc_cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise FtclipError(f"{oc_cfg_path} cannot be read ({exc}); re-export the run") from None
    try:
        model, _, _ = open_clip.create_model_and_transforms("local-dir:" + str(path.absolute()))
    except Exception as exc:
        raise FtclipError(f"cannot load the open_clip model in {path} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); re-export the run") from None
    model.eval()
    pre = _preprocess_from_manifest(manifest, oc_cfg)
    size = [int(s) for s in pre["image_size"]]
    size = size * 2 if len(size) == 1 else size
    return Scorer(model.encode_image, pos, neg, logit_scale, (size[0], size[1]), tuple(pre["mean"]), tuple(pre["std"]),
                  str(pre.get("interpolation", "bicubic")), source=f"export {path}", model=model)


def load_scorer(source: str | Path) -> Scorer:
    path = Path(source)
    if not path.is_dir():
        raise FtclipError(f"{source} is not a folder: give a run directory (with config.yaml) or an export folder "
                          f"(with {EXPORT_MANIFEST})")
    if (path / EXPORT_MANIFEST).is_file():
        return _from_export(path)
    if (path / "config.yaml").is_file():
        return _from_run(path)
    if (path / "export" / EXPORT_MANIFEST).is_file():
        return _from_export(path / "export")
    raise FtclipError(f"{source} is neither an ftclip run directory (config.yaml) nor an export folder "
                      f"({EXPORT_MANIFEST})")


@dataclass
class Inputs:
    paths: list[str] = field(default_factory=list)
    mos: dict[str, float] = field(default_factory=dict)


def _read_csv(path: Path, out: Inputs) -> None:
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path} cannot be opened ({exc})") from None
    with fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise DataError(f"{path} is empty: give one image path per line (or a 'path' column)")
    header = [c.strip().lower() for c in rows[0]]
    if "path" in header:
        col, body = header.index("path"), rows[1:]
        mos_col = header.index("mos") if "mos" in header else None
    else:
        looks_like_image = os.path.splitext(rows[0][0].strip())[1].lower() in IMAGE_EXTENSIONS if rows[0] else False
        col, body, mos_col = 0, rows if looks_like_image else rows[1:], None
    for row in body:
        if len(row) <= col or not row[col].strip():
            continue
        p = Path(row[col].strip()).expanduser()
        p = p if p.is_absolute() else path.parent / p
        key = os.path.normpath(str(p))
        out.paths.append(key)
        if mos_col is not None and len(row) > mos_col:
            try:
                out.mos[key] = float(row[mos_col])
            except ValueError:
                pass


def collect_inputs(items: list[str]) -> Inputs:
    """Files, folders (recursive) and CSV lists -> image paths in the given order (duplicates dropped)."""
    out = Inputs()
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            out.paths.extend(list_images(path))
        elif path.suffix.lower() == ".csv" and path.is_file():
            _read_csv(path, out)
        else:
            out.paths.append(str(path))  # a missing file is reported by name when it is read
    seen: set[str] = set()
    out.paths = [p for p in out.paths if not (p in seen or seen.add(p))]
    if not out.paths:
        raise DataError(f"no images to score in {', '.join(items)}")
    return out


def score_paths(scorer: Scorer, paths: list[str], batch_size: int = 32, device: str = "cpu"):
    """``(scores {path: score}, bad [(path, reason)])``: unreadable images are skipped, not fatal."""
    transform = eval_transform(scorer.image_size, scorer.mean, scorer.std, interpolation=scorer.interpolation)
    scores: dict[str, float] = {}
    bad: list[tuple[str, str]] = []
    batch: list[tuple[str, torch.Tensor]] = []

    def flush() -> None:
        if not batch:
            return
        x = torch.stack([t for _, t in batch]).to(device)
        for (p, _), s in zip(batch, scorer.score_tensor(x).cpu().tolist()):
            scores[p] = float(s)
        batch.clear()

    for p in paths:
        try:
            tensor = apply(transform, read_image(p))
        except DataError as exc:
            bad.append((p, str(exc)))
            continue
        batch.append((p, tensor))
        if len(batch) >= batch_size:
            flush()
    flush()
    return scores, bad
