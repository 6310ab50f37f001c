"""The few-shot task on every image-tower kind: the tiny ResNet (CLIP-ReID-free, open_clip's stride) and the
tiny MobileCLIP-style model (timm FastViT trunk, bidirectional custom text tower) run zero-shot, CoOp (context
injected into the custom text tower), CLIP-LoRA (q/k/v adapters on the attention pool / timm attention) and
a linear probe through `ftclip fit`; the export predicts what the run predicts."""

from __future__ import annotations

import csv
import json

import pytest
from fit_helpers import one_thread, tiny_set, write_recipe

from ftclip.cli import main

LORA = {"enabled": True, "encoders": ["image", "text"], "targets": ["qkv"], "r": 2, "alpha": 1.0}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tiny_set(tmp_path_factory.mktemp("fewshot_towers") / "data")


@pytest.mark.parametrize("model", ["ftclip-tiny-rn", "ftclip-tiny-mobileclip"])
def test_every_method_family_trains_and_exports_on_the_tower(model, data_root, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", data_root, {
        "zeroshot": {"kind": "zeroshot"},
        "coop": {"kind": "coop", "train": ["prompts"], "epochs": 1, "optimizer": {"name": "sgd", "lr": 0.002}},
        "lora": {"kind": "clip_lora", "train": ["image.lora", "text.lora"], "epochs": 100, "max_steps": 2,
                 "optimizer": {"name": "adamw", "lr": 1.0e-2}},
        "probe": {"kind": "linear_probe"},
    }, model={"name": model, "image_size": [64, 64]}, strategies={"lora": LORA, "linear_probe": {"max_iter": 20,
                                                                                                "search_steps": 1}},
        run={"dir": str(tmp_path / "run")})
    with one_thread():
        assert main(["fit", str(recipe)]) == 0
        metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
        for stage in ("zeroshot", "coop", "lora", "probe"):
            assert 0.0 <= metrics[stage]["accuracy"] <= 1.0
        state = json.loads((tmp_path / "run" / "state.json").read_text())
        assert state["completed"] == ["zeroshot", "coop", "lora", "probe"]
        out = tmp_path / "export"
        assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 0
        photos = sorted((data_root / "test").rglob("*.png"))[:6]
        for source, name in ((out, "e.csv"), (tmp_path / "run", "r.csv")):
            assert main(["predict", str(source), *map(str, photos), "--out", str(tmp_path / name), "--quiet"]) == 0
    rows = {name: list(csv.DictReader(open(tmp_path / name, newline=""))) for name in ("e.csv", "r.csv")}
    assert [r["label"] for r in rows["e.csv"]] == [r["label"] for r in rows["r.csv"]]
    assert [float(r["score"]) for r in rows["e.csv"]] == pytest.approx([float(r["score"]) for r in rows["r.csv"]],
                                                                      abs=1e-4)
