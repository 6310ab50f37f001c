"""The task contract is enough to add a task: a toy third task (tests/toy_task/, registered at run time)
trains with `ftclip fit`, exports with `ftclip export` and embeds with `ftclip embed`; a task that misses
a part of the contract fails when its class is defined, naming the part."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ftclip.cli import main
from ftclip.tasks import TASKS, register_task

HERE = Path(__file__).resolve().parent


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setitem(TASKS, "toy", "toy_task")
    yield
    sys.modules.pop("toy_task", None)


def _images(folder: Path, n: int = 6) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"img_{i}.png")
    return folder


def test_a_toy_task_fits_exports_and_embeds_through_the_contract_alone(toy_registered, tmp_path, capsys):
    images = _images(tmp_path / "images")
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(f"""
task: toy
name: toy
model: {{name: ftclip-tiny-vit, image_size: [64, 64], mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}}
data: {{root: {images}}}
stages:
  align: {{kind: align, train: [image], epochs: 2, optimizer: {{name: adam, lr: 1.0e-3}}}}
trainer: {{accelerator: cpu, precision: 32-true, enable_progress_bar: false}}
run: {{dir: {tmp_path / 'run'}}}
eval: {{batch_size: 8}}
""")
    assert main(["fit", str(recipe)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["align"]["cosine"] > metrics["initial"]["cosine"]  # it trained towards the prompt

    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 0
    manifest = json.loads((out / "ftclip_export.json").read_text())
    assert manifest["task"] == "toy" and manifest["task_info"]["prompt"] == "a photo."
    assert (out / "text_features.safetensors").is_file()

    assert main(["embed", str(out), str(images), "--out", str(tmp_path / "e.npy")]) == 0
    assert main(["embed", str(tmp_path / "run"), str(images), "--out", str(tmp_path / "r.npy")]) == 0
    from_export, from_run = np.load(tmp_path / "e.npy"), np.load(tmp_path / "r.npy")
    assert from_export.shape == (6, 64) and np.abs(from_export - from_run).max() < 1e-5

    assert main(["score", str(out), str(images)]) == 2  # the toy task has no quality score: one clear line
    assert "`ftclip score` needs a task with a quality score (iqa); this is a 'toy' model" in capsys.readouterr().err


def test_a_task_missing_part_of_the_contract_fails_when_defined():
    from ftclip.tasks.base import StagedModule, Task, TaskContractError
    from ftclip.data.module import StagedDataModule

    class NoHooks(StagedModule):  # no embed / export_info / export_tensors
        def training_step(self, batch, batch_idx):
            return torch.zeros(())

    class Data(StagedDataModule):
        def load(self): ...
        def summary(self): return ""
        @property
        def info(self): return {}
        def check_splits(self): return {}

    with pytest.raises(TaskContractError, match=r"NoHooks does not implement embed, export_info, export_tensors"):
        class Broken(Task):
            name, schema, stage_kinds = "broken", object, ("x",)
            loss_settings, loss_weights = {}, {}
            module_class, datamodule_class = NoHooks, Data

    with pytest.raises(TaskContractError, match=r"lacks loss_weights"):
        class Incomplete(Task):
            name, schema, stage_kinds, loss_settings = "incomplete", object, ("x",), {}
            module_class, datamodule_class = NoHooks, Data
