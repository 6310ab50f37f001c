"""`ftclip fit` with closed-form stages, then `ftclip export` and `ftclip predict`: a run and its export give the
same labels and scores, so does the model card's plain open_clip + numpy snippet, corrupt images are named and
skipped, --topk writes K rows per image."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fit_helpers import one_thread, tiny_set, write_recipe

from ftclip.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with one_thread():
        yield _train(tmp_path_factory)


def _train(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fewshot_predict")
    root = tiny_set(tmp / "data")
    recipe = write_recipe(tmp / "r.yaml", root, {
        "zeroshot": {"kind": "zeroshot"},
        "probe": {"kind": "linear_probe"},
        "tip": {"kind": "tip_adapter"},
    }, strategies={"linear_probe": {"max_iter": 20, "search_steps": 1},
                   "tip_adapter": {"augment_passes": 2, "search_step": [12, 4]}},
        run={"dir": str(tmp / "run")})
    assert main(["fit", str(recipe)]) == 0
    out = tmp / "export"
    assert main(["export", str(tmp / "run"), "--out", str(out)]) == 0
    return tmp, root, out


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_closed_form_stages_record_their_fit_and_metrics(trained):
    tmp, _, _ = trained
    metrics = json.loads((tmp / "run" / "metrics.json").read_text())
    assert list(metrics) == ["initial", "zeroshot", "probe", "tip"]
    assert metrics["zeroshot"]["accuracy"] == metrics["initial"]["accuracy"]  # nothing trained
    for stage in ("probe", "tip"):
        assert {"accuracy", "top5", "macro_f1", "balanced_accuracy", "ece", "per_class_accuracy"} <= set(metrics[stage])
        assert len(metrics[stage]["per_class_accuracy"]) == 6
    assert metrics["probe"]["fit"]["c"] in [c for c, _ in metrics["probe"]["fit"]["c_trace"]]
    assert {"alpha", "beta", "val_accuracy"} <= set(metrics["tip"]["fit"])
    state = json.loads((tmp / "run" / "state.json").read_text())
    assert state["completed"] == ["zeroshot", "probe", "tip"]


def test_run_and_export_predict_the_same_and_corrupt_images_are_skipped(trained, capsys):
    tmp, root, out = trained
    images = tmp / "inputs"
    images.mkdir()
    for p in sorted((root / "test").rglob("*.png"))[:8]:
        (images / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    (images / "broken.png").write_bytes(b"not a png")
    assert main(["predict", str(out), str(images), "--out", str(tmp / "e.csv"), "--topk", "3"]) == 0
    err = capsys.readouterr().err
    assert "skipped unreadable image" in err and "broken.png" in err
    assert main(["predict", str(tmp / "run"), str(images), "--out", str(tmp / "r.csv"), "--topk", "3", "--quiet"]) == 0
    assert main(["predict", str(out), str(images), "--out", str(tmp / "e.csv")]) == 2  # checked before any work
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    from_export, from_run = _rows(tmp / "e.csv"), _rows(tmp / "r.csv")
    assert len(from_export) == 8 * 3 and [r["rank"] for r in from_export[:3]] == ["1", "2", "3"]
    assert [r["label"] for r in from_export] == [r["label"] for r in from_run]
    assert np.allclose([float(r["score"]) for r in from_export], [float(r["score"]) for r in from_run], atol=1e-5)
    scores = [float(r["score"]) for r in from_export[:3]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6


def test_model_card_snippet_gives_predicts_labels(trained):
    """The model card's code, run as written with plain open_clip + numpy, labels images as `ftclip predict` does."""
    tmp, root, out = trained
    card = (out / "README.md").read_text()
    code = card.split("## Classify images", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    manifest = json.loads((out / "ftclip_export.json").read_text())
    assert manifest["task_info"]["classifier"] == "tip" and manifest["task_info"]["method"] == "tip_adapter"
    photos = sorted((root / "test").rglob("*.png"))[:6]
    snippet_labels = []
    for photo in photos:
        scope: dict = {}
        exec(code.replace("/path/to/this/folder", str(out)).replace('"photo.jpg"', repr(str(photo)))
             .replace("print(", "result = ("), scope)
        snippet_labels.append(scope["result"])
    assert main(["predict", str(out), *map(str, photos), "--out", str(tmp / "s.csv"), "--quiet"]) == 0
    assert snippet_labels == [r["label"] for r in _rows(tmp / "s.csv")]


def test_predict_refuses_a_task_without_classes_and_writes_parquet(trained, tiny_reid_root, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    tmp, root, out = trained
    photo = sorted((root / "test").rglob("*.png"))[0]
    assert main(["predict", str(out), str(photo), "--out", str(tmp_path / "p.parquet"), "--quiet"]) == 0
    table = pq.read_table(tmp_path / "p.parquet").to_pydict()
    assert table["path"] == [str(photo)] and set(table) == {"path", "label", "score"}

    from export_helpers import make_cheap_run

    run, _ = make_cheap_run(tiny_reid_root, tmp_path / "reid")
    assert main(["predict", str(run.path), str(photo)]) == 2
    assert "`ftclip predict` needs a task with class predictions (fewshot); this is a 'reid' model" in capsys.readouterr().err


def test_task_predict_is_the_evaluation_classifier(trained):
    """`Task.predict` on the export's tensors = the logits the run's evaluation computed."""
    from ftclip.artifacts.inference import load_for_inference

    tmp, root, out = trained
    model = load_for_inference(out, device="cpu")
    run_model = load_for_inference(tmp / "run", device="cpu")
    images = torch.stack([model.preprocess(p) for p in sorted((root / "test").rglob("*.png"))[:5]])
    module = run_model.module
    with torch.no_grad():
        expected = module.set_logits("test", module.backbone.encode_image(images).float(), module.classnames)
    assert torch.allclose(model.predict(images), expected, atol=1e-4)


def test_fewshot_run_exports_for_transformers_and_reloads_in_a_fresh_process(trained, capsys):
    """The few-shot tiny ViT as a transformers CLIPModel + diffusers text encoder, verified by a process without
    ftclip (image/text features and per-token states equal to the open_clip export)."""
    tmp, _, _ = trained
    out = tmp / "export-hf"
    assert main(["export", str(tmp / "run"), "--format", "open_clip", "hf", "--out", str(out)]) == 0
    meta = json.loads((out / "ftclip_export.json").read_text())
    check = meta["verification"]["hf"]
    assert check["ftclip_imported"] is False
    for name in ("image_features", "text_features", "last_hidden_state"):
        assert check[name]["max_abs_diff"] < 1e-4 and check[name]["min_cosine"] >= 0.999
    assert (out / "hf" / "config.json").is_file() and (out / "hf" / "text_encoder" / "config.json").is_file()
    assert meta["task"] == "fewshot" and meta["task_info"]["classifier"] == "tip"  # the classifier travels too
