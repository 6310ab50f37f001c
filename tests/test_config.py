"""Recipes: includes, overrides, and one clear error per mistake, before any work."""

from __future__ import annotations

import pytest

from ftclip.recipe import load_recipe, parse_overrides
from ftclip.errors import ConfigError

DEMO = "recipes/demo/reid_synthetic.yaml"


def test_demo_recipe_composes_includes_and_overrides():
    cfg = load_recipe(DEMO, ["trainer.devices=2", "stages.image.optimizer.lr=0.01", "model.image_size=[64,32]"])
    assert cfg.model.name == "ftclip-tiny-vit"  # from configs/model/tiny_vit_reid.yaml
    assert cfg.trainer.accelerator == "cpu"  # from configs/trainer/cpu_demo.yaml
    assert cfg.trainer.devices == 2
    assert cfg.stages.image.optimizer.lr == 0.01
    assert list(cfg.model.image_size) == [64, 32]
    assert list(cfg.stages) == ["prompts", "image"]  # stage order is the recipe's


def test_bundled_recipe_by_name():
    cfg = load_recipe("demo/reid_synthetic")
    assert cfg.task == "reid"


def test_main_recipe_needs_data_root():
    with pytest.raises(ConfigError, match=r"data\.root"):
        load_recipe("recipes/reid_two_stage.yaml")
    cfg = load_recipe("recipes/reid_two_stage.yaml", ["data.root=/data/market"])
    assert cfg.stages.prompts.optimizer.lr == pytest.approx(3.5e-4)
    assert cfg.stages.image.schedule.milestones == [30, 50]


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("model.nmae=x", r"unknown key 'model\.nmae'"),
        ("stages.image.epochs=many", r"stages\.image\.epochs.*wrong type"),
        ("trainer.num_nodes=two", r"trainer\.num_nodes"),
        ("stages.image.optimizer.name=lamb", r"optimizer\.name='lamb' is not allowed: it must be one of: adam"),
        ("model.image_size=[256]", r"model\.image_size"),
        ("stages.prompts.train=[]", r"stages\.prompts\.train=\[\] is not allowed: it must be a non-empty list"),
        ("model.interpolation=area", r"model\.interpolation='area' is not allowed: it must be one of: bicubic"),
    ],
)
def test_bad_overrides_name_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_recipe(DEMO, [override])


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["trainer.devices"])


def test_unknown_recipe_lists_bundled():
    with pytest.raises(ConfigError, match="reid_two_stage"):
        load_recipe("no_such_recipe")


def test_missing_include(tmp_path):
    (tmp_path / "configs").mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text("defaults: [model/nope]\ntask: reid\nname: x\n")
    with pytest.raises(ConfigError, match="model/nope"):
        load_recipe(recipe)


def test_unknown_task(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: segmentation\nname: x\n")
    with pytest.raises(ConfigError, match="segmentation"):
        load_recipe(recipe)


def test_a_run_saved_with_a_retired_key_still_loads_but_a_recipe_setting_it_is_refused(tmp_path):
    from ftclip.recipe import RETIRED_KEYS, config_from_text, load_saved_config, to_yaml

    cfg = load_recipe("recipes/demo/reid_synthetic.yaml")
    text = to_yaml(cfg).replace("trainer:\n", "trainer:\n  num_sanity_val_steps: 0\n", 1)
    assert "num_sanity_val_steps" in text and "trainer.num_sanity_val_steps" in RETIRED_KEYS
    (tmp_path / "config.yaml").write_text(text)  # what an earlier ftclip wrote into a run directory
    assert load_saved_config(tmp_path / "config.yaml") == cfg
    assert config_from_text(text, "manifest") == cfg  # an export's recorded recipe
    with pytest.raises(ConfigError, match="unknown key 'trainer.num_sanity_val_steps'"):
        load_recipe("recipes/demo/reid_synthetic.yaml", ["trainer.num_sanity_val_steps=2"])
