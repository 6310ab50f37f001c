"""Export a trained run as artifacts that load without ftclip, verified by a round trip.

:func:`export_run` writes the folder described in :mod:`ftclip.artifacts.layout` (see
docs/export.md). Everything is written into a temporary folder beside ``out`` and renamed into
place only after verification: the weights are reloaded by plain open_clip into a fresh model,
whose ``encode_image`` (and the task feature) must match the trained model within 1e-5
(float32), and each ONNX file must match torch within 1e-4 under onnxruntime. A mismatch fails
the export with the figures and leaves any previous export untouched.

Tasks take part through the hooks of the task contract (ftclip/tasks/base.py):
``export_info()`` (at least the ``feature`` the task evaluates with), ``export_tensors()`` (the
contents of the text-feature / prompt / head files), ``embed(images)`` (compared with the same
feature computed from the reloaded open_clip model), ``export_text_encoder`` (whether ONNX export
includes the text encoder) and ``model_card(meta)`` (the task's section of the model card).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftclip.version import __version__
from ftclip.artifacts.inference import ImageEncoder, load_open_clip_export, select_feature
from ftclip.artifacts.layout import (EXPORT_META, FEATURES, IMAGE_ONNX, MODEL_CARD, OPEN_CLIP_CONFIG,
                                     OPEN_CLIP_WEIGHTS, TENSOR_FILES, TEXT_ONNX)
from ftclip.artifacts.manifest import file_hashes, files_in, is_export, read_manifest, written_files
from ftclip.backbone import Backbone
from ftclip.config import EXPORT_FORMATS, HF_TEXT_LAYERS, check_interpolation
from ftclip.errors import DiskFullError, FtclipError
from ftclip.io import disk_full_cause, free_bytes, human_bytes, replace_dir, sha256_file
from ftclip.recipe import config_hash, to_yaml
from ftclip.runs import RunDir, is_run_dir, load_module_from_run, select_checkpoint
from ftclip.towers import reparameterizable, reparameterized

log = logging.getLogger("ftclip")

TOLERANCE = 1e-5  # reloaded open_clip vs trained model, float32, max abs diff
ONNX_TOLERANCE = 1e-4  # onnxruntime vs torch
VERIFY_BATCH = 4
ONNX_VERIFY_BATCH = 3  # differs from the traced batch (2): checks the dynamic batch axis too


class ExportVerificationError(FtclipError):
    """A round trip did not reproduce the trained model; the message holds the figures."""


# ---------------------------------------------------------------------------------------- helpers
def check_formats(formats: list[str] | tuple[str, ...]) -> list[str]:
    formats = [str(f) for f in formats]
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise FtclipError(f"unknown export format(s) {unknown}; choose from: {', '.join(EXPORT_FORMATS)}")
    if not formats:
        raise FtclipError(f"give at least one export format ({', '.join(EXPORT_FORMATS)})")
    return list(dict.fromkeys(formats))


def fixed_images(image_size: tuple[int, int], batch: int = VERIFY_BATCH, seed: int = 0) -> torch.Tensor:
    """The deterministic batch every verification uses (normalised-image range, float32)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *image_size, generator=gen)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())


def _tolerance(reference: torch.Tensor, tol: float) -> float:
    """Absolute tolerance ``tol``, scaled up for features whose magnitude exceeds 1 (float32 rounding)."""
    return tol * max(1.0, float(reference.abs().max()))


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    clean = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    save_file(clean, str(path), metadata=metadata)


def _versions() -> dict[str, str]:
    import open_clip

    out = {"ftclip": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
           "python": platform.python_version()}
    for name in ("onnx", "onnxruntime"):
        try:
            out[name] = __import__(name).__version__
        except Exception:
            pass
    return out


def open_clip_config(backbone) -> dict:
    """The ``open_clip_config.json`` content: the model config with this run's image size and activation,
    and the preprocessing. Its ``preprocess_cfg`` (PIL resize of the run's kernel to height x width,
    'squash', then ToTensor + Normalize) is exactly ftclip's evaluation input
    (:func:`ftclip.data.transforms.eval_transform`), so open_clip's ``preprocess`` gives what ftclip measured.

    Where plain open_clip cannot build the trained tower from a model config (CLIP-ReID's stride-1 ResNet,
    a timm ViT trunk at another input size; ``backbone.tower_fit``), the model config keeps the stock
    architecture's size and an ``ftclip_tower`` entry says how to fit it (see :func:`tower_loading_code`).
    """
    import open_clip

    model_cfg = open_clip.get_model_config(backbone.name)
    if not model_cfg:
        raise FtclipError(f"open_clip has no model config for {backbone.name}; cannot write {OPEN_CLIP_CONFIG}")
    height, width = backbone.preprocess.image_size
    fit = getattr(backbone, "tower_fit", None)
    if not fit:
        model_cfg["vision_cfg"]["image_size"] = [height, width] if height != width else height
    model_cfg["quick_gelu"] = bool(backbone.quick_gelu)
    preprocess_cfg = {
        "size": [height, width],
        "mean": list(backbone.preprocess.mean),
        "std": list(backbone.preprocess.std),
        "interpolation": check_interpolation(backbone.preprocess.interpolation),
        "resize_mode": "squash",
    }
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    if fit:
        config["ftclip_tower"] = dict(fit)
    return config


def tower_loading_code(meta: dict, fit: dict) -> str:
    """The plain open_clip + torch lines that rebuild a fitted tower (``ftclip_tower``) and load the weights."""
    h, w = fit["image_size"]
    lines = ["import open_clip, torch", "from safetensors.torch import load_file", "",
             'folder = "/path/to/this/folder"',
             f'model = open_clip.create_model(f"local-dir:{{folder}}", load_weights=False)   # stock {meta["model_name"]}',
             f'state = load_file(f"{{folder}}/{OPEN_CLIP_WEIGHTS}")']
    if "resnet_last_stride" in fit:
        if int(fit["resnet_last_stride"]) == 1:
            lines += ["block = model.visual.layer4[0]                 # CLIP-ReID's ResNet: last stage stride 1",
                      "block.avgpool = torch.nn.Identity()",
                      "block.downsample[0] = torch.nn.Identity()"]
        key = "visual.attnpool.positional_embedding"
        lines += [f'pool = model.visual.attnpool                  # attention-pool grid of the {h}x{w} input',
                  f'pool.positional_embedding = torch.nn.Parameter(torch.empty_like(state["{key}"]))']
    else:
        lines += [f"model.visual.set_input_size(({h}, {w}))       # timm resizes the trunk's positional grid"]
    lines += ["model.load_state_dict(state)", "model.eval()"]
    return "\n".join(lines)


def one_liner(meta: dict, path: str) -> str:
    """The plain open_clip call that loads ``open_clip_model.safetensors`` with a stock model name."""
    h, w = meta["image_size"]
    args = [repr(meta["model_name"]), f"pretrained='{path}/{OPEN_CLIP_WEIGHTS}'"]
    if h != w:
        args.append(f"force_image_size=({h}, {w})")
    if meta.get("quick_gelu"):
        args.append("force_quick_gelu=True")
    args += [f"image_mean={tuple(round(x, 6) for x in meta['mean'])}",
             f"image_std={tuple(round(x, 6) for x in meta['std'])}",
             f"image_interpolation='{meta['open_clip_interpolation']}'", "image_resize_mode='squash'"]
    return f"open_clip.create_model_and_transforms({', '.join(args)})"


# ---------------------------------------------------------------------------------------- ONNX
class _TextEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def _onnx_export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str,
                 output_names: list[str]) -> None:
    try:
        import onnxscript  # noqa: F401  (torch's dynamo exporter needs it)
    except ImportError:
        raise FtclipError("--format onnx needs onnx, onnxscript and onnxruntime: pip install 'ftclip[onnx]'") from None
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=True, input_names=[input_name],
                              output_names=output_names, dynamic_shapes=({0: batch},), verbose=False,
                              external_data=True)
        except Exception as exc:
            raise FtclipError(f"ONNX export of {path.name} failed: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        finally:
            logging.disable(logging.NOTSET)


def _onnx_check(path: Path, inputs: torch.Tensor, expected: tuple[torch.Tensor, ...],
                output_names: list[str]) -> dict[str, float]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise FtclipError("--format onnx needs onnxruntime to verify the export: pip install 'ftclip[onnx]'") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
    diffs = {}
    for name, got, want in zip(output_names, outputs, expected):
        diffs[name] = _max_diff(torch.from_numpy(got), want)
    bad = {k: v for k, v in diffs.items() if not v < _tolerance(expected[output_names.index(k)], ONNX_TOLERANCE)}
    if bad:
        figures = ", ".join(f"{k}: max abs diff {v:.3g}" for k, v in diffs.items())
        raise ExportVerificationError(
            f"ONNX verification of {path.name} failed (onnxruntime vs torch, batch {inputs.shape[0]}, tolerance "
            f"{ONNX_TOLERANCE:g}): {figures}; the export was not written"
        )
    return diffs


def export_onnx(model: nn.Module, directory: Path, image_size: tuple[int, int], text: bool,
                model_name: str = "ViT-B-32") -> dict[str, Any]:
    """``image_encoder.onnx`` (and ``text_encoder.onnx`` if ``text``) from a stock open_clip model, each
    checked under onnxruntime. Returns the verification figures."""
    report: dict[str, Any] = {}
    encoder = ImageEncoder(model.visual).eval()
    names = ["image_features", "final_features"] if encoder.has_final else ["image_features"]
    path = directory / IMAGE_ONNX
    _onnx_export(encoder, fixed_images(image_size, 2, seed=1), path, "image", names)
    check = fixed_images(image_size, ONNX_VERIFY_BATCH, seed=2)
    with torch.no_grad():
        expected = encoder(check)
    report[IMAGE_ONNX] = {"inputs": {"image": ["batch", 3, *image_size]}, "outputs": names,
                                    "max_abs_diff": _onnx_check(path, check, expected, names)}
    if text:
        import open_clip

        length = int(getattr(model, "context_length", 77))
        tokenizer = open_clip.get_tokenizer(model_name, context_length=length)
        wrapper = _TextEncoder(model).eval()
        path = directory / TEXT_ONNX
        _onnx_export(wrapper, tokenizer(["a photo.", "a good photo of a thing."]), path,
                     "tokens", ["text_features"])
        check = tokenizer(["Good photo.", "Bad photo.", "a blurry picture of a dog."])
        with torch.no_grad():
            expected = (wrapper(check),)
        report[TEXT_ONNX] = {"inputs": {"tokens": ["batch", length]}, "outputs": ["text_features"],
                                       "max_abs_diff": _onnx_check(path, check, expected, ["text_features"])}
    return report


# ---------------------------------------------------------------------------------------- model card
def _metrics_table(metrics: dict) -> str:
    if not metrics:
        return "_No metrics were recorded._\n"
    columns: list[str] = []
    for values in metrics.values():
        for key, value in values.items():
            if key not in columns and key != "train_seconds" and isinstance(value, (int, float)):
                columns.append(key)
    lines = ["| evaluated after | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for stage, values in metrics.items():
        cells = [f"{values[c]:.4f}" if isinstance(values.get(c), (int, float)) else "" for c in columns]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def model_card(meta: dict, cfg, task_section: str = "") -> str:
    h, w = meta["image_size"]
    data = cfg.get("data", {})
    data_desc = ", ".join(f"{k}={data[k]}" for k in ("format", "root", "images", "csv") if data.get(k) not in (None, ""))
    stages = "\n".join(f"- `{name}` ({stage.kind}): " + (f"trained {list(stage.train)}, {stage.epochs} epochs"
                                                         if stage.train else "fitted without an optimizer")
                       for name, stage in cfg.stages.items())
    feature = meta["feature"]
    lora = meta.get("lora_merged")
    files = "\n".join(f"- `{name}`" + (f": {desc}" if desc else "") for name, desc in meta["files"].items())
    task_details = "".join(f"- {key}: `{json.dumps(value)}`\n" for key, value in meta.get("task_info", {}).items())
    task_details = task_details or "_None recorded._\n"
    return f"""# {meta['name']} — ftclip export

Adapted `{meta['model_name']}` image encoder, fine-tuned with ftclip {meta['versions']['ftclip']} for the
**{meta['task']}** task. Recipe hash `{meta['recipe_hash']}` (the full recipe is in `ftclip_export.json`).

- Trained on: {data_desc or 'see the recipe'}
- Input: {h}x{w} (height x width) RGB, resized without cropping (PIL {meta['interpolation']}, as open_clip's
  `preprocess` below does), normalised with mean {meta['mean']} and std {meta['std']}
- Activation: {'QuickGELU' if meta['quick_gelu'] else 'GELU'}{'; LoRA adapters merged into the weights' if lora else ''}
- Task feature: `{feature}` (L2-normalised)

## Stages

{stages}

## Metrics

{_metrics_table(meta.get('metrics', {}))}
## Load it with open_clip (no ftclip needed)

{_loading_section(meta)}
{task_section}
## Task details

{task_details}
## Use it with ftclip

```
ftclip embed /path/to/this/folder images/ --out feats.npy      # or .parquet / .csv, with the image paths
```

## Files

{files}

Verified at export: reloaded by plain open_clip, `encode_image` max abs diff
{meta['verification']['encode_image_max_abs_diff']:.3g} vs the trained model (tolerance {TOLERANCE:g}).
"""


def _loading_section(meta: dict) -> str:
    """How plain open_clip loads this export: ``local-dir:`` (and the one-liner), or the fitting lines."""
    fit = meta.get("tower_fit")
    if fit:
        h, w = fit["image_size"]
        what = ("CLIP-ReID's ResNet variant (last stage stride 1, attention-pool grid of the input)"
                if "resnet_last_stride" in fit else f"a timm trunk fitted to {h}x{w} input")
        text = f"""This encoder is {what}, which open_clip does not build from a model config alone:
`open_clip_config.json` holds the stock `{meta['model_name']}` config (plus an `ftclip_tower` entry), so
build that without weights, fit it, then load the weights (plain open_clip and torch):

```python
{tower_loading_code(meta, fit)}
```

Preprocessing: `open_clip.image_transform(({h}, {w}), is_train=False, mean=..., std=..., resize_mode="squash",
interpolation=...)` with the mean, std and interpolation above (what `open_clip_config.json` records).
"""
    else:
        text = f"""```python
import open_clip
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:/path/to/this/folder")
```

or with the stock model name and the weights file:

```python
import open_clip
model, _, preprocess = {one_liner(meta, '/path/to/this/folder')}
```
"""
    text += """
`model.encode_image(preprocess(image).unsqueeze(0))` is the adapted `proj` feature.
Open images as ftclip read them in training: `ImageOps.exif_transpose(Image.open(path))`, and
transparent ones composited onto white (ftclip's `docs/export.md`, "Reading the file").
"""
    if meta.get("reparameterized"):
        text += ("\nThe image tower is a FastViT/MobileOne trunk, stored in its training (multi-branch) form as open_clip "
                 "builds it. For deployment fold it (`image_encoder.onnx` is already folded, verified equal at export):\n\n"
                 "```python\nfrom timm.utils import reparameterize_model\nmodel = reparameterize_model(model.eval())\n```\n")
    return text


# ---------------------------------------------------------------------------------------- export
def _run_around(path: Path) -> Path | None:
    """The run directory ``path`` lies in (strictly below), if any."""
    return next((parent for parent in path.parents if is_run_dir(parent)), None)


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_out(out: Path, overwrite: bool, run_dir: Path) -> None:
    """Where an export may go, checked before any work and again before the swap: never the run directory, a
    folder above it, or anything inside a run but its ``export/``; an existing folder only with ``overwrite``,
    and only if it is empty or a previous export (its manifest proves it) holding nothing the export did not
    write -- so ``--overwrite`` can never delete a user's files or a run."""
    resolved, run = out.resolve(), run_dir.resolve()
    if resolved == run or run.is_relative_to(resolved):
        what = "the run directory itself" if resolved == run else f"a folder that contains the run directory {run_dir}"
        raise FtclipError(f"--out {out} is {what}: an export there would replace the run's checkpoints; choose a "
                          f"folder outside it (the default is {run_dir / 'export'})")
    around = _run_around(resolved)
    if around is not None and resolved != around / "export":
        raise FtclipError(f"--out {out} is inside the run directory {around}, where only {around / 'export'} holds "
                          "an export; choose that folder or one outside the run")
    if not out.exists():
        return
    if not out.is_dir():
        raise FtclipError(f"export path {out} exists and is not a folder; choose another --out")
    if not overwrite:
        raise FtclipError(f"export folder {out} already exists; pass --overwrite to replace it or choose another --out")
    present = files_in(out)
    if not present:
        return
    if not is_export(out):
        raise FtclipError(f"export folder {out} exists and is not an ftclip export (no readable {EXPORT_META}): "
                          "--overwrite only replaces a previous export; choose another --out, or empty it yourself")
    foreign = [name for name in present if name not in written_files(read_manifest(out))]
    if foreign:
        raise FtclipError(f"export folder {out} holds {len(foreign)} file(s) its export did not write ({_few(foreign)}): "
                          "--overwrite would delete them; move them out or choose another --out")


def _prepare_out(out: Path, overwrite: bool, run_dir: Path) -> None:
    check_out(out, overwrite, run_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FtclipError(f"cannot create the folder {out.parent} for the export ({exc.strerror})") from None
    if not os.access(out.parent, os.W_OK):
        raise FtclipError(f"folder {out.parent} is not writable; choose another --out")


def export_run(run_dir: str | Path, formats: list[str], out: Path | None = None, overwrite: bool = False,
               stage: str | None = None, checkpoint: str = "last", text_layer: str = "last") -> Path:
    """Export the final weights of the finished run ``run_dir`` (or of its finished ``stage``;
    ``checkpoint="best"``: that stage's best checkpoint) in ``formats`` (``open_clip`` is always
    written; ``onnx`` adds ONNX encoders; ``hf`` a transformers/diffusers folder whose
    ``text_encoder/`` outputs ``text_layer``) to ``out`` (default ``<run_dir>/export``). Returns
    ``out``. An unfinished run is refused (:func:`ftclip.runs.select_checkpoint`)."""
    formats = check_formats(formats)
    if text_layer not in HF_TEXT_LAYERS:
        raise FtclipError(f"--text-layer '{text_layer}' is not one of {', '.join(HF_TEXT_LAYERS)}")
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    if not run.config_path.is_file():
        raise FtclipError(f"{run_dir} is not an ftclip run directory (no {run.config_path.name}); "
                          "give the folder `ftclip fit` made")
    stage, ckpt = select_checkpoint(run, stage, which=checkpoint)
    out = Path(out) if out is not None else run_dir / "export"
    _prepare_out(out, overwrite, run_dir)

    module, cfg = load_module_from_run(run, stage, checkpoint)
    module = module.cpu().eval()
    backbone = module.backbone
    meta = dict(backbone.metadata())
    meta["open_clip_interpolation"] = open_clip_config(backbone)["preprocess_cfg"]["interpolation"]
    info = dict(module.export_info())
    feature = str(info.get("feature"))
    if feature not in FEATURES:
        raise FtclipError(f"task '{cfg.task}' reports export feature '{feature}', not one of {', '.join(FEATURES)}")

    # reference outputs of the trained model (LoRA unmerged), then merge
    images = fixed_images(backbone.preprocess.image_size)
    with torch.no_grad():
        ref_proj = backbone.encode_image(images).float()
        ref_task = module.embed(images).float()
        tensors = module.export_tensors()
    unknown = sorted(set(tensors) - set(TENSOR_FILES))
    if unknown:
        raise FtclipError(f"task '{cfg.task}' exports tensors of unknown kind(s) {unknown}; "
                          f"known: {', '.join(TENSOR_FILES)}")
    lora_merged = False
    if getattr(module, "lora_summary", None) is not None and module.lora_summary.targets:
        from ftclip.strategies.lora import merge_lora

        merge_lora(backbone)
        lora_merged = True
    leftover = [k for k in backbone.model.state_dict() if "lora_" in k or "base_layer" in k]
    if leftover:
        raise FtclipError(f"the model still holds LoRA adapter weights ({leftover[0]}, ...) after merging; "
                          "cannot write a stock open_clip checkpoint")
    if "hf" in formats:  # refuses (with every reason) before anything is written; LoRA is merged by now
        from ftclip.artifacts.hf import check_hf_compatible

        check_hf_compatible(backbone.model, meta)
    meta["tower_fit"] = backbone.tower_fit
    meta["reparameterized"] = reparameterizable(backbone.visual)

    tmp = out.parent / f".{out.name}.tmp-unmade"
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        _save_tensors(tmp / OPEN_CLIP_WEIGHTS, backbone.model.state_dict(), {"format": "pt"})
        (tmp / OPEN_CLIP_CONFIG).write_text(json.dumps(open_clip_config(backbone), indent=2) + "\n", encoding="utf-8")

        # verification: plain open_clip, fresh model, same batch
        fresh = load_open_clip_export(tmp, "cpu")
        encoder = ImageEncoder(fresh.visual).eval()
        with torch.no_grad():
            got_proj = fresh.encode_image(images).float()
            outputs = encoder(images)
        verification: dict[str, Any] = {"batch": list(images.shape), "tolerance": TOLERANCE,
                                        "encode_image_max_abs_diff": _max_diff(got_proj, ref_proj),
                                        "encoder_vs_encode_image_max_abs_diff": _max_diff(outputs[0], got_proj)}
        checks = [("encode_image", verification["encode_image_max_abs_diff"], ref_proj),
                  ("image encoder (proj output)", verification["encoder_vs_encode_image_max_abs_diff"], got_proj)]
        verification[f"feature_{feature}_max_abs_diff"] = _max_diff(select_feature(outputs, feature), ref_task)
        checks.append((f"task feature '{feature}'", verification[f"feature_{feature}_max_abs_diff"], ref_task))
        bad = [(name, diff, _tolerance(ref, TOLERANCE)) for name, diff, ref in checks if not diff < _tolerance(ref, TOLERANCE)]
        if bad:
            figures = "; ".join(f"{name}: max abs diff {diff:.3g} (tolerance {tol:.3g})" for name, diff, tol in bad)
            raise ExportVerificationError(
                f"export verification failed for run {run_dir}: reloading {OPEN_CLIP_WEIGHTS} with plain open_clip "
                f"does not reproduce the trained model on a fixed batch of {images.shape[0]} ({figures})"
                f"{' after merging LoRA' if lora_merged else ''}; nothing was written to {out}"
            )

        # FastViT / MobileOne: the deployment (folded) form must compute the same features
        deploy = fresh
        if meta["reparameterized"]:
            deploy = reparameterized(fresh)
            with torch.no_grad():
                folded = ImageEncoder(deploy.visual).eval()(images)
            verification["reparameterized_max_abs_diff"] = {
                "encode_image": _max_diff(folded[0], ref_proj),
                f"feature_{feature}": _max_diff(select_feature(folded, feature), ref_task)}
            worst = [(k, v) for (k, v), r in zip(verification["reparameterized_max_abs_diff"].items(),
                                                 (ref_proj, ref_task)) if not v < _tolerance(r, TOLERANCE)]
            if worst:
                raise ExportVerificationError(
                    f"export verification failed for run {run_dir}: the re-parameterised (folded) image tower differs "
                    f"from the trained one ({'; '.join(f'{k}: max abs diff {v:.3g}' for k, v in worst)}); "
                    f"nothing was written to {out}")

        files: dict[str, str] = {
            OPEN_CLIP_WEIGHTS: "open_clip state dict" + (" (LoRA merged)" if lora_merged else ""),
            OPEN_CLIP_CONFIG: "open_clip model + preprocessing config (local-dir: loading)",
            EXPORT_META: "what this export is (model, preprocessing, feature, recipe, metrics, versions)",
        }
        for kind, name in TENSOR_FILES.items():
            if tensors.get(kind):
                _save_tensors(tmp / name, tensors[kind])
                files[name] = ", ".join(f"{k} {list(v.shape)}" for k, v in tensors[kind].items())
        if "onnx" in formats:
            text = bool(module.export_text_encoder)
            verification["onnx"] = export_onnx(deploy, tmp, tuple(backbone.preprocess.image_size), text,
                                             backbone.name)
            for name, entry in verification["onnx"].items():
                data = " (+ .data weights beside it)" if (tmp / f"{name}.data").exists() else ""
                folded = " (re-parameterised for deployment)" if meta["reparameterized"] and name == IMAGE_ONNX else ""
                files[name] = f"inputs {entry['inputs']}, outputs {entry['outputs']}{data}{folded}"
        hf_report = None
        if "hf" in formats:
            from ftclip.artifacts.hf import HF_DIR, export_hf

            if cfg.model.pretrained:
                reference, reason = Backbone.from_config(cfg.model).model.eval(), ""
            else:
                reference, reason = None, "the run started from random weights (model.pretrained is not set)"
            hf_report = export_hf(fresh, meta, tmp, text_layer=text_layer, reference=reference,
                                  no_reference_reason=reason or "no pretrained reference weights were given")
            verification["hf"] = hf_report["verification"]
            meta["hf"] = {key: hf_report[key] for key in ("text_layer", "text_encoder_layers", "hidden_act", "image_size",
                                                          "patch_size", "text_width", "pad_token", "files", "forgetting")}
            files[f"{HF_DIR}/"] = (f"transformers CLIPModel folder + diffusers text_encoder/ ({text_layer} text layer) "
                                   "and tokenizer/, verified in a fresh transformers process")
        files[MODEL_CARD] = "model card"

        metrics = run.metrics()
        meta.update({
            "format_version": 1,
            "name": str(cfg.name),
            "task": str(cfg.task),
            "feature": feature,
            "features_available": list(FEATURES) if encoder.has_final else ["proj"],
            "lora_merged": lora_merged,
            "formats": formats,
            "run_dir": str(run_dir.resolve()),
            "stage": stage,
            "run_finished": run.is_finished(cfg),
            "checkpoint": str(ckpt),
            "checkpoint_sha256": sha256_file(ckpt),
            "module_info": dict(module.info),  # what the module's shape depends on (ftclip eval EXPORT rebuilds it)
            "recipe_hash": config_hash(cfg),
            "recipe": to_yaml(cfg),
            "metrics": metrics,
            "final_metrics": metrics.get(stage, {}),
            "versions": _versions(),
            "verification": verification,
            "files": files,
            "task_info": info,
        })
        meta["open_clip_one_liner"] = None if meta["tower_fit"] else one_liner(meta, str(out.resolve()))
        card = model_card(meta, cfg, module.model_card(meta))
        if hf_report is not None:
            meta["versions"]["transformers"] = hf_report["verification"].get("transformers", "")
            card += "\n" + hf_report["model_card"]
        (tmp / MODEL_CARD).write_text(card, encoding="utf-8")
        meta["sha256"] = file_hashes(tmp)  # every file but the manifest: checked by inference and `ftclip verify`
        (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        mask = os.umask(0)
        os.umask(mask)
        for file in tmp.iterdir():  # mkdtemp/safetensors create owner-only files: give them the usual mode
            if file.is_dir():  # hf/: export_hf has fsynced and chmod-ed its own files
                continue
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(file, 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        check_out(out, overwrite, run_dir)  # again: the folder may have changed while we worked
        replace_dir(tmp, out)
    except BaseException as exc:
        if disk_full_cause(exc) is None or isinstance(exc, DiskFullError):
            raise
        size = sum(v.numel() * v.element_size() for v in backbone.model.state_dict().values())
        raise DiskFullError(
            f"no space left on the device writing the export {out} ({human_bytes(free_bytes(out.parent))} free; the "
            f"export needs about {human_bytes(size)}, more with onnx): nothing was written to {out} and the run is "
            f"unchanged; free space, then `ftclip export {run_dir}`", str(out)) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
