"""The NaN guard reads losses on the host only every few steps, yet keeps its promise.

``StagedModule.check_finite`` no longer syncs every step (a host sync per step stalls a GPU): it
keeps the detached losses and reads them every ``finite_check_every`` steps, at epoch end, before
validation and before every checkpoint is written. A non-finite loss at step k must still be
reported as step k, and no checkpoint written after step k may exist.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import tiny_reid_overrides
from ftclip.cli import main
from ftclip.recipe import load_recipe
from ftclip.errors import FtclipError
from ftclip.tasks.reid.module import ReidModule

RECIPE = "recipes/demo/reid_synthetic.yaml"
BAD_STEP = 4  # stage 'image': 3 batches of 8 per epoch on the tiny set, so epoch 1, its second batch


@pytest.fixture()
def nan_at_step(monkeypatch):
    """Stage 'image' returns a NaN loss at global step BAD_STEP (the optimizer step then poisons the weights)."""
    original = ReidModule._image_step

    def poisoned(self, batch):
        loss, parts = original(self, batch)
        if self.global_step == BAD_STEP:
            loss = loss * float("nan")
        return loss, parts

    monkeypatch.setattr(ReidModule, "_image_step", poisoned)


def _fit_error(capsys, run_dir, root, **extra) -> str:
    values = {"data.check_images": "false", "eval.before": "false", "stages.prompts.epochs": "1",
              "stages.image.epochs": "4"}
    values.update(extra)
    capsys.readouterr()
    assert main(["fit", RECIPE, *tiny_reid_overrides(root, run_dir, **values)]) == 2
    return capsys.readouterr().err.strip()


def _assert_finite(ckpt) -> dict:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    return state


def test_step_checkpoints_stop_at_the_bad_step(nan_at_step, tiny_reid_root, tmp_path, capsys):
    run = tmp_path / "run"
    err = _fit_error(capsys, run, tiny_reid_root, **{"trainer.ckpt_every_n_steps": "1"})
    assert f"stage 'image': the loss became nan at epoch 1, step {BAD_STEP};" in err
    ckpt = run / "checkpoints" / "image" / "last.ckpt"
    assert f"The last finite checkpoint {ckpt} was kept" in err
    state = _assert_finite(ckpt)
    assert state["global_step"] == BAD_STEP  # written after steps 0..BAD_STEP-1; the one after the bad step was not


def test_epoch_checkpoints_keep_the_epoch_before_the_bad_step(nan_at_step, tiny_reid_root, tmp_path, capsys):
    run = tmp_path / "run"
    err = _fit_error(capsys, run, tiny_reid_root)  # the read happens at the end of epoch 1, not at the bad step
    assert f"stage 'image': the loss became nan at epoch 1, step {BAD_STEP};" in err
    ckpt = run / "checkpoints" / "image" / "last.ckpt"
    assert f"The last finite checkpoint {ckpt} was kept" in err
    state = _assert_finite(ckpt)
    assert state["epoch"] == 0 and 0 < state["global_step"] < BAD_STEP  # the end of epoch 0, before the bad step
    state = json.loads((run / "state.json").read_text())
    assert state["completed"] == ["prompts"] and state["stages"]["image"]["status"] == "failed"


def test_losses_are_read_every_n_steps_not_every_step(tiny_reid_root, tmp_path):
    cfg = load_recipe(RECIPE, tiny_reid_overrides(tiny_reid_root, tmp_path / "run"))
    module = ReidModule(cfg, num_ids=8, num_cameras=2)
    module.set_stage("image", cfg.stages.image)
    every = module.finite_check_every
    assert every > 1
    module.check_finite(torch.tensor(2.0))
    module.check_finite(torch.tensor(float("inf")))  # kept, not read yet
    for _ in range(every - 3):
        module.check_finite(torch.tensor(float("nan")))
    with pytest.raises(FtclipError, match=r"the loss became inf at epoch 0, step 0") as info:
        module.check_finite(torch.tensor(1.0))  # the every-th loss: all are read, the first bad one reported
    assert "No checkpoint of stage 'image' was written yet" in str(info.value)
    for _ in range(every - 1):  # read losses are dropped; finite ones pass
        module.check_finite(torch.tensor(1.0))
    module.raise_if_not_finite()
    module.check_finite(torch.tensor(math.nan))
    with pytest.raises(FtclipError, match="the loss became nan"):
        module.on_save_checkpoint({})  # a checkpoint is never written over an unread bad loss
