"""The few-shot demo end to end on the CPU: zero-shot, then CLIP-LoRA on the synthetic shapes, must classify the
test split far better than the untrained model; WiSE-FT's sweep and the plots are written; the export predicts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ftclip.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_learns_the_synthetic_classes(tmp_path):
    run = tmp_path / "run"
    assert main(["fit", str(REPO / "recipes/demo/fewshot_synthetic.yaml"), f"data.root={tmp_path / 'data'}",
                 f"run.dir={run}", "run.export=[open_clip]"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    before, after = metrics["initial"]["accuracy"], metrics["clip_lora"]["accuracy"]
    assert before < 0.25 and after > 0.5 and after > before + 0.3, (before, after)  # 8 classes: chance 0.125
    assert metrics["zeroshot"]["accuracy"] == before
    wise = metrics["clip_lora"]["wise"]
    assert wise["0"]["accuracy"] == pytest.approx(before) and wise["1"]["accuracy"] == pytest.approx(after)
    for name in ("clip_lora_wise.png", "clip_lora_test_confusion.png", "clip_lora_test_reliability.png"):
        assert (run / "plots" / name).is_file()
    test = sorted((tmp_path / "data" / "test").rglob("*.png"))
    assert main(["predict", str(run / "export"), str(tmp_path / "data" / "test"), "--out", str(tmp_path / "p.csv"),
                 "--quiet"]) == 0
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(test) == 128
    hits = sum(r["label"].replace(" ", "_") == Path(r["path"]).parent.name for r in rows)
    assert hits / len(rows) == pytest.approx(after, abs=1e-9)  # the export predicts what the run evaluated
