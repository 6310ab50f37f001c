"""The Python API: train, evaluate and use models from Python, through the CLI's own code paths.

    import ftclip

    run = ftclip.fit("recipes/demo/reid_synthetic.yaml", overrides=["stages.image.epochs=5"])
    print(run.metrics["image"]["mAP"])
    export = run.export(["open_clip", "onnx"])          # the export folder (verified, as `ftclip export`)
    model = ftclip.load(export)                         # or a run directory
    features = model.embed(["a.jpg", "b.jpg"])          # [2, D], L2-normalised
    result = ftclip.eval(run.dir, overrides=["data.root=/data/other"])   # what eval.json holds

Each function is a thin layer: ``fit`` is ``ftclip fit`` (``commands.fit.fit_run``: training, the
``run.export`` formats, the report), ``eval`` is ``ftclip eval`` (``commands.eval.evaluate_source``),
``load`` is the inference path of ``ftclip embed`` / ``ftclip score`` (``artifacts.inference``).
Bad input raises :class:`ftclip.errors.FtclipError` (or its subclasses ``ConfigError`` /
``DataError``) with the message the CLI would print. See docs/api.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftclip.errors import FtclipError

__all__ = ["Model", "Run", "eval", "fit", "load", "resume"]


@dataclass
class Run:
    """A run directory written by :func:`fit`."""

    dir: Path

    @property
    def metrics(self) -> dict:
        """``metrics.json``: ``{"initial": {...}, "<stage>": {...}}``."""
        from ftclip.runs import RunDir

        return RunDir(self.dir).metrics()

    @property
    def config(self):
        """The resolved recipe (an omegaconf ``DictConfig``)."""
        from ftclip.runs import RunDir

        return RunDir(self.dir).load_config()

    @property
    def report(self) -> Path:
        """``report.html`` (written when the run ends)."""
        return self.dir / "report.html"

    def export(self, formats: list[str] | tuple[str, ...] = ("open_clip",), out: str | Path | None = None,
               overwrite: bool = False, checkpoint: str = "last") -> Path:
        """``ftclip export``: the verified export folder (default ``<run>/export``)."""
        from ftclip.artifacts.export import check_formats, export_run
        from ftclip.artifacts.report import write_report

        folder = export_run(self.dir, check_formats(list(formats)), out=Path(out) if out else None,
                            overwrite=overwrite, checkpoint=checkpoint)
        if folder.resolve() == (self.dir / "export").resolve():
            write_report(self.dir)
        return folder

    def eval(self, overrides: list[str] | None = None, stage: str | None = None, checkpoint: str = "last") -> dict:
        """``ftclip eval RUN``: the metrics of a checkpoint, on the run's data or other (``data.root=...``)."""
        return eval(self.dir, overrides=overrides, stage=stage, checkpoint=checkpoint)

    def load(self, device: str = "auto", stage: str | None = None, checkpoint: str = "last") -> "Model":
        return load(self.dir, device=device, stage=stage, checkpoint=checkpoint)


def fit(recipe: str | Path, overrides: list[str] | None = None) -> Run:
    """``ftclip fit RECIPE key=value ...``: train every stage; returns the :class:`Run`."""
    from ftclip.commands.fit import fit_run

    run_dir, _ = fit_run(str(recipe), list(overrides or []))
    return Run(Path(run_dir.path))


def resume(run_dir: str | Path, overrides: list[str] | None = None) -> Run:
    """``ftclip fit --resume RUN_DIR [key=value ...]``: continue an interrupted run (``overrides``: the
    optimizer and schedule of stages not finished yet, as on the command line); a finished run is left as it is."""
    from ftclip.commands.fit import fit_run

    done, _ = fit_run(None, list(overrides or []), str(run_dir))
    return Run(Path(done.path))


def eval(source: str | Path, recipe: str | Path | None = None, overrides: list[str] | None = None,  # noqa: A001
         stage: str | None = None, checkpoint: str = "last", out: str | Path | None = None) -> dict:
    """``ftclip eval``: a run directory, an export folder (with its recorded recipe or ``recipe``) or a
    recipe's pretrained model (``overrides=["model.pretrained=..."]``) -> the content of ``eval.json``
    (``result["metrics"]`` holds the numbers); written to ``out`` if given."""
    from ftclip.commands.eval import evaluate_source
    from ftclip.io import atomic_write_json

    result = evaluate_source(source, recipe, list(overrides or []), stage, checkpoint)
    if out is not None:
        atomic_write_json(out, result)
    return result


ImagesLike = Any  # a path, a PIL image, an HxWx3 uint8 array, a list of those, or a preprocessed [B, 3, H, W] tensor


class Model:
    """A loaded run or export (:func:`load`): ``embed``, ``score`` and ``predict`` images.

    ``images`` may be file paths, PIL images, ``[H, W, 3]`` uint8 RGB arrays (a list of any of them,
    or one), or an already preprocessed float batch ``[B, 3, H, W]``; paths and arrays are
    preprocessed exactly as ``ftclip embed`` does. Results are torch tensors on the CPU.
    """

    def __init__(self, inference, batch_size: int = 64):
        self.inference = inference  # ftclip.artifacts.inference.InferenceModel
        self.batch_size = int(batch_size)

    @property
    def meta(self) -> dict:
        """Model name, image size, mean/std, task, feature, ... (an export's manifest, or the run's)."""
        return self.inference.meta

    @property
    def task(self) -> str:
        return str(self.inference.meta.get("task"))

    def _batches(self, images: ImagesLike):
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            yield from images.split(self.batch_size)
            return
        if isinstance(images, (str, Path, np.ndarray)) or hasattr(images, "convert"):
            images = [images]
        items = list(images)
        if not items:
            raise FtclipError("no images given")
        for start in range(0, len(items), self.batch_size):
            yield torch.stack([self._one(item) for item in items[start:start + self.batch_size]])

    def _one(self, item) -> torch.Tensor:
        if isinstance(item, (str, Path)):
            return self.inference.preprocess(item)
        if hasattr(item, "convert"):  # a PIL image
            item = np.asarray(item.convert("RGB"))
        if isinstance(item, np.ndarray) and item.ndim == 3 and item.shape[2] == 3 and item.dtype == np.uint8:
            return self.inference.preprocess_array(item)
        raise FtclipError(f"cannot read an image from {type(item).__name__}: give file paths, PIL images, "
                          "[H, W, 3] uint8 RGB arrays or a preprocessed [B, 3, H, W] tensor")

    def embed(self, images: ImagesLike, feature: str | None = None) -> torch.Tensor:
        """L2-normalised features ``[N, D]`` (default: the feature the task evaluates with)."""
        feature = feature or self.inference.feature
        self.inference.check_feature(feature)
        return torch.cat([self.inference.encode(b, feature).cpu() for b in self._batches(images)])

    def score(self, images: ImagesLike) -> torch.Tensor:
        """The task's score of each image ``[N]`` (IQA: quality in [0, 1])."""
        self.inference.task.require_output("score", "score")
        return torch.cat([self.inference.score(b).cpu() for b in self._batches(images)])

    def predict(self, images: ImagesLike) -> torch.Tensor:
        """The task's class logits ``[N, C]`` (classification tasks)."""
        self.inference.task.require_output("predict", "predict")
        return torch.cat([self.inference.predict(b).cpu() for b in self._batches(images)])


def load(run_or_export: str | Path, device: str = "auto", stage: str | None = None, checkpoint: str = "last",
         batch_size: int = 64) -> Model:
    """A run directory (its final weights, or ``stage`` / ``checkpoint="best"``) or an export folder."""
    from ftclip.artifacts.inference import load_for_inference

    if batch_size < 1:
        raise FtclipError(f"batch_size must be at least 1, got {batch_size}")
    return Model(load_for_inference(run_or_export, device=device, stage=stage, checkpoint=checkpoint), batch_size)
