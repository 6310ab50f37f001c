"""Stages: frozen groups stay bit-identical, trainable ones move (schedules: tests/test_reid_schedules.py)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from conftest import tiny_reid_overrides
from ftclip.recipe import load_recipe
from ftclip.engine import fit, prepare
from ftclip.runs import RunDir

DEMO = "recipes/demo/reid_synthetic.yaml"


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_each_stage_trains_only_its_groups(tiny_reid_root, tmp_path):
    cfg = load_recipe(DEMO, tiny_reid_overrides(tiny_reid_root, tmp_path / "run", **{"eval.before": "false"}))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    initial = {k: v.clone() for k, v in prepare(cfg)[0].state_dict().items()}
    run = RunDir.create(cfg)
    metrics = fit(cfg, run)
    assert set(metrics) == {"prompts", "image"} and "mAP" in metrics["image"]
    after_prompts = _state(run.last_checkpoint("prompts"))
    after_image = _state(run.last_checkpoint("image"))
    assert set(after_prompts) == set(initial)

    # stage 1: only the prompt vectors change
    changed = {k for k in initial if not torch.equal(initial[k], after_prompts[k])}
    assert changed == {"prompts.ctx"}

    # stage 2: image tower and head change; text tower, prompts, logit scale are bit-identical
    for key, value in after_image.items():
        if key.startswith("backbone.model.visual.") or key.startswith("head."):
            continue
        assert torch.equal(value, after_prompts[key]), f"{key} changed in the image stage"
    moved = [k for k in after_image if k.startswith("backbone.model.visual.")
             and not torch.equal(after_image[k], after_prompts[k])]
    assert moved, "the image tower did not train in the image stage"
    assert torch.equal(after_image["head.neck.bn.bias"], torch.zeros_like(after_image["head.neck.bn.bias"]))
    assert (run.path / "plots" / "image_loss.png").is_file()
    assert (run.path / "config.yaml").is_file() and run.completed_stages() == ["prompts", "image"]


def test_unknown_group_is_a_config_error(tiny_reid_root, tmp_path):
    from ftclip.errors import ConfigError

    cfg = load_recipe(DEMO, tiny_reid_overrides(tiny_reid_root, tmp_path / "run", **{"stages.image.train": "[image.lora,head]"}))
    with pytest.raises(ConfigError, match=r"stages\.image\.train.*image\.lora.*lora\.enabled"):
        prepare(cfg)


@pytest.mark.parametrize("override, pattern", [
    ("stages.image.losses.tripplet=1.0", r"stages\.image\.losses\.tripplet is not a setting.*triplet"),
    ("stages.prompts.losses.supcon=2.0", r"stages\.prompts\.losses\.supcon.*takes no loss settings"),
    ("stages.image.losses={id: 0, triplet: 0, i2t: 0}", r"no positive weight"),
])
def test_loss_settings_are_checked_before_training(tiny_reid_root, tmp_path, override, pattern):
    from ftclip.errors import ConfigError

    cfg = load_recipe(DEMO, tiny_reid_overrides(tiny_reid_root, tmp_path / "run") + [override])
    with pytest.raises(ConfigError, match=pattern):
        prepare(cfg)


def test_dropout_inside_frozen_lora_adapters_is_off_and_on_when_they_train(tiny_reid_root, tmp_path):
    """A frozen adapter acts deterministically: its dropout (a parameter-free module) follows the frozen
    layer it sits in; when a stage trains the adapters, their dropout is active again."""
    from export_helpers import INFO
    from ftclip.tasks import get_task

    cfg = load_recipe("recipes/demo/reid_synthetic.yaml", tiny_reid_overrides(
        tiny_reid_root, tmp_path / "run", **{"strategies.lora.enabled": "true", "strategies.lora.dropout": "0.5",
                                             "stages.image.train": "[image.lora,head]"}))
    module = get_task("reid").build_module(cfg, INFO)
    dropouts = [m for n, m in module.named_modules() if n.endswith("lora_dropout.default")]
    assert dropouts
    head_only = cfg.stages.image.copy()
    head_only.train = ["head"]
    module.set_stage("head_only", head_only)
    module.train()
    assert not any(d.training for d in dropouts)
    module.set_stage("image", cfg.stages.image)
    module.train()
    assert all(d.training for d in dropouts)
