"""IQA stages through the engine: what trains, metrics.json, plots, `ftclip score` on runs and exports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from ftclip.cli import main
from ftclip.recipe import load_recipe
from ftclip.tasks.iqa.synthetic import write_synthetic_iqa
from ftclip.engine import fit
from ftclip.runs import load_module_from_run
from ftclip.errors import ConfigError
from ftclip.runs import RunDir

RECIPE = "recipes/demo/iqa_synthetic.yaml"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("iqa_synth")
    return write_synthetic_iqa(root, num_pristine=4, num_eval=2, size=(80, 80), levels=3,
                               kinds=("blur", "noise"), seed=0)


def _overrides(synth: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"run.dir={run_dir}", "data.synthetic=false", f"data.images={synth / 'pristine'}", "data.levels=3",
            "data.batch_size=2", "data.num_workers=0", "eval.sets=[csv]", f"eval.csv.root={synth / 'eval.csv'}",
            "eval.batch_size=64", *extra]


def _snapshot(module) -> dict[str, dict[str, torch.Tensor]]:
    return {group: {n: p.detach().clone() for n, p in params}
            for group, params in module.parameter_groups().items()}


def _changed(before, after) -> set[str]:
    return {g for g in before if any(not torch.equal(before[g][n], after[g][n]) for n in before[g])}


def _fit(overrides):
    cfg = load_recipe(REPO / RECIPE, overrides)
    run = RunDir.create(cfg)
    metrics = fit(cfg, run)
    return cfg, run, metrics


@pytest.fixture(scope="module")
def qualiclip_run(synth, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "q"
    cfg, run, metrics = _fit(_overrides(synth, run_dir, "stages.qualiclip.epochs=1", "stages.qualiclip.max_steps=2"))
    return run, metrics


def test_qualiclip_trains_only_the_image_tower_and_records_srcc_plcc(qualiclip_run, synth):
    run, metrics = qualiclip_run
    saved = json.loads((run.path / "metrics.json").read_text())
    assert saved == metrics
    for key in ("initial", "qualiclip"):  # zero-shot, then after the stage
        assert set(saved[key]) >= {"csv/srcc", "csv/plcc"}
        assert -1.0 <= saved[key]["csv/srcc"] <= 1.0
    for name in ("initial_csv_scatter.png", "qualiclip_csv_scatter.png", "initial_csv_extremes.png",
                 "qualiclip_csv_extremes.png", "qualiclip_loss.png", "metrics.png"):
        data = (run.path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # compare the trained weights with a fresh model built from the same seed
    trained, cfg = load_module_from_run(run)
    from lightning import seed_everything

    seed_everything(int(cfg.seed), verbose=False)
    from ftclip.tasks.iqa import TASK

    fresh = TASK.build_module(cfg, {})
    changed = _changed(_snapshot(fresh), _snapshot(trained))
    assert changed == {"image"}


def test_mos_stage_trains_only_the_prompt_context(synth, tmp_path):
    overrides = _overrides(synth, tmp_path / "m", "strategies.antonym.context_tokens=4",
                           "data.format=csv", f"data.root={synth / 'eval.csv'}", "eval.before=false")
    cfg = load_recipe(REPO / RECIPE, overrides)
    from omegaconf import OmegaConf

    cfg.stages = OmegaConf.create({"mos": {"kind": "mos", "train": ["prompts"], "epochs": 1, "max_steps": 3,
                                           "optimizer": {"name": "sgd", "lr": 0.002}, "losses": {"mse": 1.0}}})
    from lightning import seed_everything

    from ftclip.engine import prepare

    seed_everything(int(cfg.seed), verbose=False)  # as fit does: the same initial weights
    module, datamodule = prepare(cfg)
    before = _snapshot(module)
    run = RunDir.create(cfg)
    fit(cfg, run)
    trained, _ = load_module_from_run(run)
    assert _changed(before, _snapshot(trained)) == {"prompts"}
    assert datamodule.mos_range() == (0.0, 3.0)  # csv: the training set's own MOS range
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert set(metrics["mos"]) >= {"csv/srcc", "csv/plcc"}

    # its export (the learned context in prompts.safetensors) evaluates to the same numbers
    from ftclip.artifacts.export import export_run

    export = export_run(run.path, ["open_clip"])
    out = tmp_path / "x.json"
    assert main(["eval", str(export), "--out", str(out)]) == 0
    got = json.loads(out.read_text())["metrics"]
    for key in ("csv/srcc", "csv/plcc"):
        assert got[key] == pytest.approx(metrics["mos"][key], abs=1e-5), key


def test_eval_of_an_iqa_run_with_a_csv_set_given_by_its_list_file(qualiclip_run, synth, tmp_path, capsys):
    run, metrics = qualiclip_run
    out = tmp_path / "e.json"
    args = ["eval", str(run.path), "eval.csv.root=null", f"eval.csv.csv={synth / 'eval.csv'}", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    got = json.loads(out.read_text())
    assert got["eval"]["csv"]["root"] is None
    assert got["metrics"] == {k: metrics["qualiclip"][k] for k in ("csv/srcc", "csv/plcc")}


def test_training_prompts_without_context_tokens_is_a_config_error(synth, tmp_path):
    cfg = load_recipe(REPO / RECIPE, _overrides(synth, tmp_path / "x", "stages.qualiclip.train=[prompts]"))
    from ftclip.tasks.iqa import TASK

    with pytest.raises(ConfigError, match="context_tokens"):
        TASK.check_config(cfg)


def test_score_reports_and_skips_a_corrupt_file(qualiclip_run, synth, tmp_path, capsys):
    run, _ = qualiclip_run
    folder = tmp_path / "imgs"
    folder.mkdir()
    sources = sorted((synth / "eval").glob("*.png"))[:3]
    for src in sources:
        (folder / src.name).write_bytes(src.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "scores.csv"
    assert main(["score", str(run.path), str(folder), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "skipped" in captured.err
    rows = list(csv.DictReader(open(out)))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(s.name for s in sources)
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    for src in sources:
        assert src.name in captured.out  # the printed table


def test_score_reads_an_export_folder_like_the_run(qualiclip_run, synth, tmp_path, capsys):
    """An export folder in the documented format gives the same scores as the run itself."""
    import open_clip
    from safetensors.torch import save_file

    run, _ = qualiclip_run
    module, cfg = load_module_from_run(run)
    export = tmp_path / "export"
    export.mkdir()
    model_cfg = dict(open_clip.get_model_config(str(cfg.model.name)))
    model_cfg["vision_cfg"] = dict(model_cfg["vision_cfg"], image_size=list(cfg.model.image_size)[0])
    pre = module.backbone.preprocess
    (export / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": list(pre.mean), "std": list(pre.std), "interpolation": pre.interpolation,
                           "size": list(pre.image_size)}}))
    save_file({k: v.contiguous() for k, v in module.backbone.model.state_dict().items()},
              str(export / "open_clip_model.safetensors"))
    save_file(module.export_tensors()["text_features"], str(export / "text_features.safetensors"))
    (export / "ftclip_export.json").write_text(json.dumps({"task": "iqa", **module.backbone.metadata()}))

    images = sorted(str(p) for p in (synth / "eval").glob("*.png"))[:4]
    listing = tmp_path / "list.csv"
    listing.write_text("path,mos\n" + "".join(f"{p},{i}\n" for i, p in enumerate(images)))
    out_run, out_export = tmp_path / "run.csv", tmp_path / "export.csv"
    assert main(["score", str(run.path), str(listing), "--out", str(out_run), "--quiet"]) == 0
    assert main(["score", str(export), str(listing), "--out", str(out_export), "--quiet"]) == 0
    assert "SRCC" in capsys.readouterr().out  # the CSV's mos column is compared
    a = {r["path"]: float(r["score"]) for r in csv.DictReader(open(out_run))}
    b = {r["path"]: float(r["score"]) for r in csv.DictReader(open(out_export))}
    assert a.keys() == b.keys() and len(a) == 4
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-5)


def test_score_rejects_a_folder_that_is_neither_run_nor_export(tmp_path, capsys):
    img_dir = tmp_path / "x"
    img_dir.mkdir()
    assert main(["score", str(img_dir), str(img_dir)]) == 2
    assert "neither an ftclip run directory" in capsys.readouterr().err


def test_score_of_only_unreadable_images_says_nothing_was_scored(qualiclip_run, tmp_path, capsys):
    run, _ = qualiclip_run
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"not an image")
    assert main(["score", str(run.path), str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert sum("skipped unreadable image" in line for line in err) == 2
    assert err[-1].startswith("ftclip: error: none of the 2 image(s) could be read, so nothing was scored")


def test_score_out_is_checked_before_any_work(qualiclip_run, synth, tmp_path, capsys):
    run, _ = qualiclip_run
    image = str(sorted((synth / "eval").glob("*.png"))[0])
    assert main(["score", str(run.path), image, "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    (tmp_path / "s.csv").write_text("mine")
    assert main(["score", str(run.path), image, "--out", str(tmp_path / "s.csv")]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and (tmp_path / "s.csv").read_text() == "mine"
    assert main(["score", str(run.path), image, "--out", str(tmp_path / "s.csv"), "--overwrite", "--quiet"]) == 0
    assert (tmp_path / "s.csv").read_text().startswith("path,score")
