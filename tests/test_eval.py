"""`ftclip eval`: a run (its last or a named stage, last or best checkpoint), an export and a stock model
(the zero-shot baseline) give the numbers `ftclip fit` recorded; other data; refusals in one line."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_reid_overrides
from ftclip.cli import main

RECIPE = "recipes/demo/reid_synthetic.yaml"
METRICS = ("mAP", "rank1", "rank5", "rank10")


def _eval(capsys, *args) -> tuple[dict, str]:
    out_file = args[args.index("--out") + 1]
    assert main(["eval", *args]) == 0, capsys.readouterr().err
    return json.loads(open(out_file).read()), capsys.readouterr().out


def test_eval_run_reproduces_metrics_json(tiny_trained_run, tmp_path, capsys):
    run, _ = tiny_trained_run
    result, out = _eval(capsys, str(run.dir), "--out", str(tmp_path / "e.json"))
    final = run.metrics["image"]
    assert {k: result["metrics"][k] for k in METRICS} == {k: final[k] for k in METRICS}
    assert result["kind"] == "run" and result["stage"] == "image"
    assert result["checkpoint"] == str(run.dir / "checkpoints" / "image" / "last.ckpt")
    assert f"mAP     {final['mAP']:.4f}" in out and "rank10" in out


def test_eval_run_default_out_is_in_the_run_and_the_report_shows_it(tiny_trained_run, capsys):
    run, _ = tiny_trained_run
    assert main(["eval", str(run.dir)]) == 0
    assert json.loads((run.dir / "eval.json").read_text())["metrics"]["mAP"] == run.metrics["image"]["mAP"]
    assert f"wrote {run.dir / 'eval.json'}" in capsys.readouterr().out


def test_eval_a_named_stage_and_the_best_checkpoint(tiny_trained_run, tmp_path, capsys):
    run, _ = tiny_trained_run
    prompts, _ = _eval(capsys, str(run.dir), "--stage", "prompts", "--out", str(tmp_path / "p.json"))
    assert {k: prompts["metrics"][k] for k in METRICS} == {k: run.metrics["prompts"][k] for k in METRICS}
    best, _ = _eval(capsys, str(run.dir), "--checkpoint", "best", "--out", str(tmp_path / "b.json"))
    assert best["checkpoint"].endswith("image/best.ckpt")
    assert best["metrics"]["mAP"] == pytest.approx(run.metrics["image"]["best/mAP"], abs=1e-7)


def test_eval_an_export_with_its_recorded_recipe(tiny_trained_run, tmp_path, capsys):
    run, _ = tiny_trained_run
    export = run.dir / "export"  # run.export=[open_clip]: written by fit from the final weights
    result, _ = _eval(capsys, str(export), "--out", str(tmp_path / "x.json"))
    assert result["kind"] == "export"
    for key in METRICS:
        assert result["metrics"][key] == pytest.approx(run.metrics["image"][key], abs=1e-6), key


def test_eval_a_recipe_gives_the_zero_shot_baseline_of_fit(tiny_trained_run, tmp_path, capsys):
    run, overrides = tiny_trained_run
    result, _ = _eval(capsys, RECIPE, *overrides, "--out", str(tmp_path / "z.json"))
    assert result["kind"] == "pretrained" and result["checkpoint"] is None
    assert {k: result["metrics"][k] for k in METRICS} == {k: run.metrics["initial"][k] for k in METRICS}


def test_eval_on_other_data(tiny_trained_run, tmp_path, capsys):
    from ftclip.tasks.reid.synthetic import write_synthetic_reid

    run, _ = tiny_trained_run
    other = tmp_path / "other"
    write_synthetic_reid(other, num_ids=6, num_cameras=2, images_per_id_cam=2, seed=5)
    result, out = _eval(capsys, str(run.dir), f"data.root={other}", "--out", str(tmp_path / "o.json"))
    assert result["data"]["root"] == str(other) and str(other) in out
    assert result["metrics"]["mAP"] != run.metrics["image"]["mAP"]


def test_eval_refusals_are_one_line(tiny_trained_run, tmp_path, capsys):
    run, _ = tiny_trained_run
    cases = [
        ([str(run.dir), "model.name=ViT-B-16"], "overrides only data.*, eval.*, trainer.* keys"),
        ([str(run.dir), RECIPE], "is evaluated with its own recipe"),
        ([str(run.dir), "--stage", "prompts", "--checkpoint", "best"], "kept no best checkpoint"),
        ([str(run.dir), "--stage", "nope"], "has no stage 'nope'; its stages: prompts, image"),
        ([str(run.dir / "export"), "--stage", "image"], "choose a run's checkpoint"),
        ([str(tmp_path)], "is neither an ftclip run directory"),
    ]
    for args, message in cases:
        assert main(["eval", *args, "--out", str(tmp_path / "never.json")]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("ftclip: error:") and "\n" not in err and message in err, (args, err)
    assert not (tmp_path / "never.json").exists()


def test_training_nothing_points_to_eval(tiny_reid_root, tmp_path, capsys):
    for override in ("stages={}", "stages.prompts.epochs=0"):
        args = tiny_reid_overrides(tiny_reid_root, tmp_path / "run") + [override]
        assert main(["fit", RECIPE, *args]) == 2
        assert "ftclip eval" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
