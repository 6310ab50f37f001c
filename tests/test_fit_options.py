"""Before work starts: --print-config and --dry-run create nothing; monitor / early-stopping settings that
cannot work and schedules that never reach their lr are said up front; `ftclip recipes` shows whole
descriptions; the package metadata builds without deprecation warnings."""

from __future__ import annotations

import warnings
from pathlib import Path

import yaml

from conftest import tiny_reid_overrides
from ftclip.cli import main
from ftclip.recipe import load_recipe, to_yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes/demo/reid_synthetic.yaml")


def test_print_config_prints_the_resolved_recipe_and_creates_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default run directory would appear under ./runs
    args = [RECIPE, "stages.image.epochs=7", "data.root=/nowhere"]
    assert main(["fit", *args, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert out == to_yaml(load_recipe(args[0], args[1:]))
    assert yaml.safe_load(out)["stages"]["image"]["epochs"] == 7
    assert list(tmp_path.iterdir()) == []


def test_dry_run_parses_data_builds_the_model_and_trains_nothing(tiny_reid_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["fit", RECIPE, *tiny_reid_overrides(tiny_reid_root, run_dir), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "market1501 at" in captured.out and "model ftclip-tiny-vit (random init), input 128x64" in captured.out
    assert "stage 'prompts': training 2.05K / 3.43M parameters (0.06%): groups prompts" in captured.out
    assert "stage 'image': training" in captured.out and "dry run:" in captured.out
    # the tiny overrides give stage prompts 2 epochs and the recipe a 2-epoch warm-up (epoch numbers from 1)
    assert "warning: stages.prompts.schedule.warmup_epochs=2 >= stages.prompts.epochs=2: the warm-up fills the " \
           "stage; only its last epoch runs after it (at lr 1e-05)" in captured.out
    assert captured.err == ""
    assert not run_dir.exists()


def test_monitor_settings_that_cannot_work_fail_before_any_data(tmp_path, capsys):
    missing = [f"data.root={tmp_path / 'missing'}", "data.synthetic=false", f"run.dir={tmp_path / 'run'}"]
    cases = [
        (["stages.image.monitor=mAP"], "needs evaluations during the stage"),
        (["stages.image.early_stopping.patience=3"], "early_stopping needs stages.image.monitor"),
        (["stages.image.monitor=mAP", "stages.image.eval_every=1", "stages.image.monitor_mode=up"],
         "stages.image.monitor_mode='up' is not allowed"),
        (["stages.image.monitor=mAP", "stages.image.eval_every=1", "stages.image.early_stopping.patience=0"],
         "stages.image.early_stopping.patience=0 is not allowed"),
    ]
    for extra, message in cases:
        assert main(["fit", RECIPE, *missing, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "does not exist" not in err, err  # refused before the data is looked at
    assert not (tmp_path / "run").exists()


def test_an_unknown_monitor_is_named_with_what_the_task_logs():
    import pytest

    from ftclip.engine import resolve_monitor
    from ftclip.errors import ConfigError

    known = ["koniq/srcc", "koniq/plcc"]
    assert resolve_monitor("s", "srcc", known) == "koniq/srcc"
    assert resolve_monitor("s", "mAP", []) == "mAP"  # nothing evaluated yet: checked at the first validation
    with pytest.raises(ConfigError, match="monitor=accuracy is not a metric this task logs; it logs: koniq/srcc"):
        resolve_monitor("s", "accuracy", known)
    with pytest.raises(ConfigError, match="unambiguously"):
        resolve_monitor("s", "srcc", ["a/srcc", "b/srcc"])


def test_recipes_shows_whole_descriptions(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "demo/reid_synthetic" in out
    assert "A random-init model trains from scratch" in out  # the second line of its description


def test_package_metadata_builds_without_deprecation_warnings(monkeypatch):
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(REPO)  # the readme is found relative to the project
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # setuptools warns (deprecation) about a `project.license` table
        dist = apply_configuration(Distribution(), "pyproject.toml")
    assert dist.metadata.license_expression == "MIT"
