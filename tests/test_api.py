"""The Python API (docs/api.md): ftclip.fit -> Run (.dir, .metrics, .export), ftclip.load -> embed/score/predict,
ftclip.eval; each the CLI's own code path, so their results are the CLI's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ftclip
from ftclip.cli import main
from ftclip.errors import FtclipError


def _images(run, n=3) -> list[str]:
    return sorted(str(p) for p in (Path(run.config.data.root) / "query").glob("*.jpg"))[:n]


def test_importing_ftclip_does_not_import_the_training_stack():
    import subprocess
    import sys

    code = ("import sys, ftclip; assert callable(ftclip.fit) and callable(ftclip.load); "
            "print('lightning' in sys.modules, 'ftclip.engine' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]  # the API is loaded on first use, and loads no trainer


def test_fit_returns_the_run(tiny_trained_run):
    run, _ = tiny_trained_run  # trained by ftclip.fit(recipe, overrides) in conftest.py
    assert isinstance(run, ftclip.Run) and (run.dir / "config.yaml").is_file()
    assert run.metrics == json.loads((run.dir / "metrics.json").read_text())
    assert set(run.metrics) == {"initial", "prompts", "image"} and run.report.is_file()
    assert run.config.stages.image.monitor == "mAP"


def test_load_embeds_like_ftclip_embed(tiny_trained_run, tmp_path):
    run, _ = tiny_trained_run
    paths = _images(run)
    assert main(["embed", str(run.dir), *paths, "--out", str(tmp_path / "e.npy"), "--device", "cpu"]) == 0
    cli = np.load(tmp_path / "e.npy")
    model = ftclip.load(run.dir, device="cpu")
    feats = model.embed(paths)
    assert feats.shape == cli.shape and np.abs(feats.numpy() - cli).max() == 0
    assert model.task == "reid" and model.meta["feature"] == "final+proj"
    # the same images as PIL images, arrays, or a preprocessed batch; the export gives the same features
    from PIL import Image

    pil = [Image.open(p) for p in paths]
    assert torch.equal(model.embed(pil), feats)
    assert torch.equal(model.embed([np.asarray(im.convert("RGB")) for im in pil]), feats)
    batch = torch.stack([model.inference.preprocess(p) for p in paths])
    assert torch.equal(model.embed(batch), feats)
    exported = ftclip.load(run.dir / "export", device="cpu")
    assert (exported.embed(paths) - feats).abs().max() < 1e-5


def test_load_refuses_what_the_task_does_not_compute(tiny_trained_run):
    run, _ = tiny_trained_run
    model = run.load(device="cpu")
    with pytest.raises(FtclipError, match="needs a task with a quality score"):
        model.score(_images(run, 1))
    with pytest.raises(FtclipError, match="needs a task with class predictions"):
        model.predict(_images(run, 1))
    with pytest.raises(FtclipError, match="cannot read an image from int"):
        model.embed([3])


def test_run_export_and_eval(tiny_trained_run, tmp_path):
    run, _ = tiny_trained_run
    best = run.export(out=tmp_path / "best", checkpoint="best")
    manifest = json.loads((best / "ftclip_export.json").read_text())
    assert manifest["checkpoint"].endswith("image/best.ckpt") and manifest["stage"] == "image"
    result = ftclip.eval(best, out=tmp_path / "eval.json")
    assert result["metrics"]["mAP"] == pytest.approx(run.metrics["image"]["best/mAP"], abs=1e-6)
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"] == result["metrics"]
    assert run.eval(stage="prompts")["metrics"]["mAP"] == run.metrics["prompts"]["mAP"]
