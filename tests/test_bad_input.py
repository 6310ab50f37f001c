"""The bad-input catalogue (docs/resilience.md): each mistake is one clear line, exit status 2.

Most cases go through the CLI in-process (``ftclip.cli.main``) and check that stderr holds a
single ``ftclip: error: ...`` line naming the culprit, and that nothing was trained.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_reid_overrides
from ftclip.cli import main

RECIPE = "recipes/demo/reid_synthetic.yaml"


def fit_error(capsys, *args) -> str:
    """Run ``ftclip fit`` args; assert exit 2 and a one-line message; return it."""
    capsys.readouterr()
    assert main(["fit", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ftclip: error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def overrides(root, tmp_path, **extra):
    values = {"data.check_images": "false", "eval.before": "false"}
    values.update(extra)
    return tiny_reid_overrides(root, tmp_path / "run", **values)


@pytest.fixture()
def reid_copy(tiny_reid_root, tmp_path):
    root = tmp_path / "market"
    shutil.copytree(tiny_reid_root, root)
    return root


# --------------------------------------------------------------------------- data
def test_missing_data_root(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    err = fit_error(capsys, RECIPE, *overrides(missing, tmp_path))
    assert str(missing) in err and "does not exist" in err and "data.root" in err
    assert not (tmp_path / "run").exists()  # nothing half-made is left behind


def test_layout_matching_no_format(tmp_path, capsys):
    root = tmp_path / "odd"
    (root / "pictures").mkdir(parents=True)
    (root / "pictures" / "a.jpg").write_bytes(b"x")
    err = fit_error(capsys, RECIPE, *overrides(root, tmp_path, **{"data.format": "auto"}))
    assert str(root) in err and "Market-1501" in err


def _corrupt(root: Path) -> tuple[Path, Path]:
    files = sorted((root / "bounding_box_train").glob("*.jpg"))
    corrupt, empty = files[0], files[5]
    data = corrupt.read_bytes()
    corrupt.write_bytes(data[:200] + b"\x00garbage" * 10)  # JPEG header, then rubbish
    empty.write_bytes(b"")
    return corrupt, empty


def test_corrupt_and_empty_jpeg_are_an_error_naming_them(reid_copy, tmp_path, capsys):
    corrupt, empty = _corrupt(reid_copy)
    err = fit_error(capsys, RECIPE, *overrides(reid_copy, tmp_path, **{"data.check_images": "true"}))
    assert "2 of" in err and str(corrupt) in err and str(empty) in err and "skip" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_images_skipped_with_policy_skip(reid_copy, capsys):
    from ftclip.recipe import load_recipe
    from ftclip.tasks import get_task

    corrupt, empty = _corrupt(reid_copy)
    cfg = load_recipe(RECIPE, tiny_reid_overrides(reid_copy, reid_copy / "run", **{"data.on_bad_image": "skip"}))
    before = len(list((reid_copy / "bounding_box_train").glob("*.jpg")))
    dm = get_task("reid").build_datamodule(cfg)
    out = capsys.readouterr().out
    assert "skipped 2 unreadable image(s)" in out and corrupt.name in out and empty.name in out
    paths = {s.path for s in dm.dataset.train}
    assert str(corrupt) not in paths and str(empty) not in paths and len(paths) == before - 2


def test_data_check_lists_bad_files_and_fails(reid_copy, capsys):
    corrupt, empty = _corrupt(reid_copy)
    assert main(["data", "check", RECIPE, f"data.root={reid_copy}", "data.synthetic=false"]) == 2
    captured = capsys.readouterr()
    assert "train" in captured.out and "decoded" in captured.out
    assert str(corrupt) in captured.out and str(empty) in captured.out
    assert captured.err.startswith("ftclip: error: data check failed")


def test_data_check_of_good_data_passes(tiny_reid_root, capsys):
    assert main(["data", "check", RECIPE, f"data.root={tiny_reid_root}", "data.synthetic=false"]) == 0
    out = capsys.readouterr().out
    assert "data check: ok" in out and "query" in out and "gallery" in out


def test_data_check_flags_train_test_leakage(reid_copy, capsys):
    train = sorted((reid_copy / "bounding_box_train").glob("*.jpg"))[0]
    shutil.copy(train, reid_copy / "bounding_box_test" / "0999_c1s1_000001_01.jpg")
    assert main(["data", "check", RECIPE, f"data.root={reid_copy}", "data.synthetic=false"]) == 2
    assert "training and an evaluation split" in capsys.readouterr().out


def test_identity_with_one_image_works_in_pk_sampler():
    from ftclip.data.samplers import PKBatchSampler

    pids = [0] + [1] * 4 + [2] * 4 + [3] * 4  # identity 0 has one image
    sampler = PKBatchSampler(pids, batch_size=8, num_instances=2, seed=0)
    seen = [index for epoch in range(5) for batch in (sampler.set_epoch(epoch) or list(sampler))
            for b in batch for index in [b[0]]]
    assert 0 in seen  # sampled (with replacement), no crash
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in sampler:
            assert len(batch) == 8


def test_query_gallery_without_common_identity(tmp_path, tiny_reid_root, capsys):
    rows = ["path,pid,camid,split"]
    train = sorted((tiny_reid_root / "bounding_box_train").glob("*.jpg"))
    for i, path in enumerate(train[:16]):
        rows.append(f"{path},{i // 4},{i % 2},train")
    test = sorted((tiny_reid_root / "bounding_box_test").glob("0*.jpg"))
    rows.append(f"{test[0]},100,0,query")
    rows.append(f"{test[1]},200,1,gallery")
    csv = tmp_path / "reid.csv"
    csv.write_text("\n".join(rows) + "\n")
    err = fit_error(capsys, RECIPE, *overrides(tmp_path, tmp_path, **{"data.format": "csv", "data.csv": str(csv)}))
    assert "share no identity" in err


def test_batch_size_not_divisible_by_k(tiny_reid_root, tmp_path, capsys):
    err = fit_error(capsys, RECIPE, *overrides(tiny_reid_root, tmp_path, **{"data.batch_size": 9}))
    assert "data.batch_size=9" in err and "data.num_instances=2" in err


# --------------------------------------------------------------------------- recipe
def test_unknown_recipe_key(tiny_reid_root, tmp_path, capsys):
    err = fit_error(capsys, RECIPE, *overrides(tiny_reid_root, tmp_path, **{"trainer.max_epohcs": 3}))
    assert "unknown key" in err and "trainer.max_epohcs" in err


def test_wrong_type(tiny_reid_root, tmp_path, capsys):
    err = fit_error(capsys, RECIPE, *overrides(tiny_reid_root, tmp_path, **{"data.batch_size": "lots"}))
    assert "data.batch_size" in err and "wrong type" in err


# --------------------------------------------------------------------------- model
def test_unknown_model_name(tiny_reid_root, tmp_path, capsys):
    err = fit_error(capsys, RECIPE, *overrides(tiny_reid_root, tmp_path, **{"model.name": "ViT-Q-99"}))
    assert "model.name 'ViT-Q-99'" in err


def test_pretrained_tag_not_available_offline_fails_fast(tiny_reid_root, tmp_path, capsys, monkeypatch):
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    start = time.time()
    err = fit_error(capsys, RECIPE, *overrides(tiny_reid_root, tmp_path, **{
        "model.name": "ViT-B-16", "model.pretrained": "openai", "model.image_size": "[224,224]",
        "model.cache_dir": str(tmp_path / "hf")}))
    assert "ViT-B-16" in err and "openai" in err and "not in the local cache" in err
    assert time.time() - start < 60  # no download attempt


def test_checkpoint_of_another_architecture(tiny_reid_root, tmp_path, capsys):
    import open_clip

    import ftclip.backbone  # noqa: F401  (registers the tiny model configs)

    other = open_clip.create_model("ftclip-tiny-rn")
    weights = tmp_path / "rn.pt"
    torch.save(other.state_dict(), weights)
    err = fit_error(capsys, RECIPE, *overrides(tiny_reid_root, tmp_path, **{"model.pretrained": str(weights)}))
    assert str(weights) in err and "does not fit this model architecture" in err


def test_image_size_the_backbone_cannot_take(tiny_reid_root, tmp_path, capsys):
    err = fit_error(capsys, RECIPE, *overrides(tiny_reid_root, tmp_path, **{"model.image_size": "[100,60]"}))
    assert "model.image_size [100, 60]" in err and "patch size" in err


def test_lora_target_that_does_not_exist(tiny_reid_root, tmp_path, capsys):
    err = fit_error(capsys, RECIPE, *overrides(tiny_reid_root, tmp_path, **{
        "strategies.lora.enabled": "true", "strategies.lora.targets": "[foo]"}))
    assert "foo" in err and "strategies.lora.targets" in err


# --------------------------------------------------------------------------- IQA CSV
def test_iqa_csv_missing_column_and_non_numeric_mos(tmp_path):
    from ftclip.tasks.iqa.formats import load_iqa_dataset
    from ftclip.errors import DataError

    img = tmp_path / "a.jpg"
    img.write_bytes(b"not read here")
    missing = tmp_path / "missing" / "scores.csv"
    missing.parent.mkdir()
    missing.write_text("path,score\na.jpg,3.0\n")
    with pytest.raises(DataError, match="mos") as info:
        load_iqa_dataset("csv", missing.parent, csv_path=missing)
    assert str(missing) in str(info.value)
    bad = tmp_path / "bad.csv"
    bad.write_text(f"path,mos\n{img},3.5\n{img},good\n")
    with pytest.raises(DataError, match="good") as info:
        load_iqa_dataset("csv", tmp_path, csv_path=bad)
    assert str(bad) in str(info.value)


# --------------------------------------------------------------------------- training
def test_non_finite_loss_stops_names_the_step_keeps_last_good_checkpoint(tiny_reid_root, tmp_path, capsys):
    run = tmp_path / "run"
    err = fit_error(capsys, RECIPE, *overrides(tiny_reid_root, tmp_path, **{
        "stages.prompts.epochs": 1, "stages.image.optimizer.lr": "1e30", "trainer.ckpt_every_n_steps": 1}))
    assert "stage 'image'" in err and "step" in err and "--resume" in err
    # the last good checkpoint of the failing stage (if one was written) and the finished stage stay
    assert (run / "checkpoints" / "prompts" / "last.ckpt").is_file()
    state = json.loads((run / "state.json").read_text())
    assert state["completed"] == ["prompts"] and state["stages"]["image"]["status"] == "failed"
    image_ckpt = run / "checkpoints" / "image" / "last.ckpt"
    if image_ckpt.exists():
        assert f"The last finite checkpoint {image_ckpt} was kept" in err
        saved = torch.load(image_ckpt, map_location="cpu", weights_only=False)
        assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    else:
        assert "No checkpoint of stage 'image' was written yet" in err


def test_non_finite_loss_in_the_first_step_says_no_checkpoint_exists(tiny_reid_root, tmp_path, capsys):
    err = fit_error(capsys, RECIPE, *overrides(tiny_reid_root, tmp_path, **{
        "stages.prompts.epochs": 1, "stages.image.optimizer.lr": "1e30", "data.batch_size": 4}))
    assert "stage 'image'" in err and "epoch 0" in err and "No checkpoint of stage 'image' was written yet" in err


def test_output_dir_not_writable(tiny_reid_root, tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through permissions: use a path below a regular file instead
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        target = blocker / "run"
        err = fit_error(capsys, RECIPE, *tiny_reid_overrides(tiny_reid_root, target))
        assert str(target) in err and "not writable" in err
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        err = fit_error(capsys, RECIPE, *tiny_reid_overrides(tiny_reid_root, locked / "run"))
        assert str(locked / "run") in err and "not writable" in err
    finally:
        locked.chmod(0o700)


# --------------------------------------------------------------------------- issue 15: checked before any work
def test_yaml_syntax_error_names_file_line_and_problem(tmp_path, capsys):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("task: reid\nname: x\nmodel:\n  name: ftclip-tiny-vit\n image_size: [64, 32]\n")
    err = fit_error(capsys, str(recipe))
    assert f"{recipe}, line 5, column 2: not valid YAML: " in err


@pytest.mark.parametrize("override, message", [
    ("trainer.accelerator=gpu", "trainer.accelerator=gpu but this machine has no CUDA GPU"),
    ("trainer.accelerator=cuda", "trainer.accelerator=cuda but this machine has no CUDA GPU"),
    ("trainer.devices=3", "trainer.devices=3 with trainer.accelerator=auto, but this machine has no GPU"),
    ("trainer.strategy=ddp_turbo", "trainer.strategy='ddp_turbo' is not a Lightning strategy"),
])
def test_trainer_settings_this_machine_cannot_run(tiny_reid_root, tmp_path, capsys, monkeypatch, override, message):
    """Before any data is read (data.root points nowhere), and the run directory it made is removed again."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = tmp_path / "deep" / "runs" / "run"
    args = [RECIPE, *overrides(tmp_path / "nowhere", tmp_path), f"run.dir={run}", "trainer.accelerator=auto", override]
    err = fit_error(capsys, *args)
    assert message in err
    assert not run.exists() and not (tmp_path / "deep").exists()  # nothing half-made, not even the folders above


def test_failed_start_keeps_a_run_directory_that_existed_empty(tmp_path, capsys):
    run = tmp_path / "mine"
    run.mkdir()
    err = fit_error(capsys, RECIPE, *overrides(tmp_path / "nowhere", tmp_path), f"run.dir={run}")
    assert "does not exist" in err
    assert run.is_dir() and not any(run.iterdir())


def _reid_csv(root: Path, tmp_path: Path, repeat: bool) -> Path:
    rows = ["path,pid,camid,split"]
    for split, folder in (("train", "bounding_box_train"), ("gallery", "bounding_box_test"), ("query", "query")):
        for path in sorted((root / folder).glob("*.jpg")):
            pid = int(path.name.split("_")[0])
            if pid > 0:
                rows.append(f"{path},{pid},{int(path.name.split('_')[1][1]) - 1},{split}")
    if repeat:
        rows.append(rows[1])  # the first training image, listed twice
    csv = tmp_path / "reid.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def test_a_repeated_csv_row_is_refused_by_fit_and_reported_by_data_check(tiny_reid_root, tmp_path, capsys):
    csv = _reid_csv(tiny_reid_root, tmp_path, repeat=True)
    first = csv.read_text().splitlines()[1].split(",")[0]
    data = ["data.format=csv", f"data.csv={csv}", f"data.root={tmp_path}"]
    err = fit_error(capsys, RECIPE, *overrides(tiny_reid_root, tmp_path), *data)
    assert f"lists 1 image(s) more than once: {first} (2 times)" in err and "data.on_duplicate=first" in err
    assert main(["data", "check", RECIPE, "data.synthetic=false", *data]) == 2
    assert "more than once" in capsys.readouterr().out
    assert main(["data", "check", RECIPE, "data.synthetic=false", *data, "data.on_duplicate=first"]) == 0
    out = capsys.readouterr().out
    assert "warning: the train split" in out and "dropped 1 repeated row(s)" in out and "data check: ok" in out


def test_a_repeated_iqa_row_is_refused_or_dropped(tmp_path):
    from ftclip.errors import DataError
    from ftclip.recipe import load_recipe
    from ftclip.tasks.iqa.synthetic import write_synthetic_iqa
    from ftclip.tasks import get_task

    synth = write_synthetic_iqa(tmp_path / "iqa", num_pristine=2, num_eval=1, size=(64, 64), levels=2,
                                kinds=("blur",), seed=0)
    listing = synth / "eval.csv"
    lines = listing.read_text().splitlines()
    listing.write_text("\n".join(lines + [lines[1], lines[1]]) + "\n")
    base = ["data.synthetic=false", f"data.images={synth / 'pristine'}", "data.levels=2", "data.check_images=false",
            "eval.sets=[csv]", f"eval.csv.root={listing}"]
    with pytest.raises(DataError, match=r"eval set 'csv' .* lists 1 image\(s\) more than once: .* \(3 times\)"):
        get_task("iqa").build_datamodule(load_recipe("recipes/demo/iqa_synthetic.yaml", base))
    dm = get_task("iqa").build_datamodule(load_recipe("recipes/demo/iqa_synthetic.yaml", [*base, "data.on_duplicate=first"]))
    assert len(dm.eval_sets[0].samples) == len(lines) - 1 and "dropped 2 repeated row(s)" in dm.notes[0]
