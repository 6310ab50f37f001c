"""``seed`` fixes everything: two CPU runs with the same seed give identical metrics and weights."""

from __future__ import annotations

import json

import torch

from conftest import tiny_reid_overrides
from ftclip.cli import main

RECIPE = "recipes/demo/reid_synthetic.yaml"


def _run(root, run_dir, **extra):
    values = {"stages.prompts.epochs": 1, "stages.image.epochs": 1, "stages.prompts.max_steps": 2,
              "stages.image.max_steps": 3, "eval.before": "false",
              "data.check_images": "false"}
    values.update(extra)
    assert main(["fit", RECIPE, *tiny_reid_overrides(root, run_dir, **values)]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for stage in metrics.values():
        stage.pop("train_seconds", None)
    weights = torch.load(run_dir / "checkpoints" / "image" / "last.ckpt", map_location="cpu",
                         weights_only=False)["state_dict"]
    return metrics, weights


def test_same_seed_same_metrics_and_weights(tiny_reid_root, tmp_path):
    m1, w1 = _run(tiny_reid_root, tmp_path / "a")
    m2, w2 = _run(tiny_reid_root, tmp_path / "b")
    assert m1 == m2
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
